"""Where the rules API keeps rules: the ``RuleStore`` protocol and what it hands back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.rules.model import RuleSpec


class RuleStoreError(Exception):
    """Base of the rule stores' errors."""


class RuleNotFound(RuleStoreError):
    """No rule by that name."""


class RuleExists(RuleStoreError):
    """A rule by that name exists already."""


class RuleConflict(RuleStoreError):
    """The rule changed since the version the caller based its change on."""


class RuleRejected(RuleStoreError):
    """The backend refused the rule as invalid (its message says why)."""


class StoreUnavailable(RuleStoreError):
    """The backend (API server, database) cannot be reached."""


@dataclass(frozen=True)
class StoredRule:
    """An AutomationRule as stored: a custom resource, or its document in embedded mode."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: dict[str, Any]
    """The spec as written in the resource (camelCase)."""
    labels: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None

    @property
    def owner(self) -> uuid.UUID | None:
        """The owner label as a user id (None for rules applied with kubectl, or malformed)."""
        value = self.labels.get(OWNER_LABEL)
        try:
            return uuid.UUID(value) if value else None
        except ValueError:
            return None

    def resource(self) -> dict[str, Any]:
        """The rule as a custom resource body (for compiling it)."""
        return {
            "metadata": {
                "namespace": self.namespace,
                "name": self.name,
                "uid": self.uid,
                "generation": self.generation,
                "labels": dict(self.labels),
                "creationTimestamp": self.created_at.isoformat() if self.created_at else None,
            },
            "spec": self.spec,
            "status": self.status,
        }


class RuleStore(Protocol):
    """CRUD of rules in one namespace; implementations map their backend's errors to ours."""

    async def list(self, namespace: str, *, owner: uuid.UUID | None = None) -> list[StoredRule]:
        """Rules in ``namespace`` (only ``owner``'s when given), ordered by name."""
        ...

    async def get(self, namespace: str, name: str) -> StoredRule:
        """One rule; raises RuleNotFound."""
        ...

    async def create(
        self, namespace: str, name: str, spec: RuleSpec, *, labels: dict[str, str]
    ) -> StoredRule:
        """A new rule; raises RuleExists, RuleRejected."""
        ...

    async def replace(
        self, namespace: str, name: str, spec: RuleSpec, *, resource_version: str | None
    ) -> StoredRule:
        """Replace the spec (a new generation); raises RuleNotFound, RuleConflict, RuleRejected.

        With ``resource_version``, only if the rule is still at that version.
        """
        ...

    async def delete(self, namespace: str, name: str) -> None:
        """Delete a rule; raises RuleNotFound."""
        ...


__all__ = [
    "RuleConflict",
    "RuleExists",
    "RuleNotFound",
    "RuleRejected",
    "RuleStore",
    "RuleStoreError",
    "StoreUnavailable",
    "StoredRule",
]
