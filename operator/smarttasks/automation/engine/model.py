"""What the engine needs from a compiled rule, and the values it passes around (pure)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from smarttasks.automation.rules.documents import TaskDocument
from smarttasks.automation.rules.matcher import MatchSubject
from smarttasks.automation.rules.model import TriggerEvent
from smarttasks.core.events import RuleRef, TaskSnapshot

OPEN_STATUSES = frozenset({"todo", "in_progress"})
"""Task statuses that keep deadline triggers armed; done and cancelled disarm them."""

ROLES = frozenset({"owner", "assignee"})
"""Recipients that name a role of the task rather than an address."""


class NotifyAction(Protocol):
    """One `notify` action of a compiled rule."""

    @property
    def channel(self) -> str: ...

    @property
    def to(self) -> Sequence[str]: ...

    @property
    def url(self) -> str | None: ...

    @property
    def secret_ref(self) -> Mapping[str, str] | None: ...

    def render(self, context: Mapping[str, Any]) -> tuple[str, str]:
        """Subject and body for the rule's `template_context`."""
        ...


class EngineRule(Protocol):
    """A rule that compiled: the engine only ever sees rules that may fire."""

    @property
    def uid(self) -> str: ...

    @property
    def ref(self) -> RuleRef:
        """The rule as named in `notification.requested` (read often: keep it cheap)."""
        ...

    @property
    def enabled(self) -> bool: ...

    @property
    def created_at(self) -> datetime:
        """When the rule came to exist; it never fires for moments before this."""
        ...

    @property
    def trigger(self) -> TriggerEvent: ...

    @property
    def fields(self) -> frozenset[str]:
        """TaskUpdated: fire only when one of these changed; empty means any change."""
        ...

    @property
    def before(self) -> timedelta | None: ...

    @property
    def repeat(self) -> timedelta | None: ...

    @property
    def schedule(self) -> str | None: ...

    @property
    def time_zone(self) -> str: ...

    @property
    def max_per_hour(self) -> int | None: ...

    @property
    def actions(self) -> Sequence[NotifyAction]: ...

    @property
    def projects(self) -> frozenset[str]:
        """`match.projects` (empty: any); lets a digest narrow its scan in SQL."""
        ...

    @property
    def labels(self) -> frozenset[str]: ...

    @property
    def priorities(self) -> frozenset[str]: ...

    @property
    def owner(self) -> uuid.UUID | None:
        """The only user whose tasks the rule applies to (rules made through the REST API)."""
        ...

    def template_context(
        self,
        *,
        task: TaskSnapshot | TaskDocument | None = None,
        tasks: Sequence[TaskSnapshot] = (),
        changes: Mapping[str, Sequence[Any]] | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """What subject and body templates see for a firing."""
        ...

    def matches(
        self,
        task: TaskDocument | MatchSubject,
        changes: Mapping[str, Sequence[Any]] | None = None,
    ) -> bool:
        """The `match` clauses (projects, labels, priorities, CEL condition, owner scope).

        Raises `ConditionError` when the condition cannot be evaluated for this task: the
        rule does not fire, and the engine reports why as its `lastError`. Pass a
        `MatchSubject` when matching one task against many rules (converted once).
        """
        ...


class RuleSource(Protocol):
    """The current set of enabled, compiled rules (kept up to date by the operator)."""

    def rules(self) -> Sequence[EngineRule]: ...

    def for_trigger(self, trigger: TriggerEvent) -> Sequence[EngineRule]: ...

    def candidates(self, event: TriggerEvent, task: TaskDocument) -> Sequence[EngineRule]:
        """A superset of the rules of `event` that `task` can match (an index lookup)."""
        ...

    def get(self, uid: str) -> EngineRule | None: ...


@dataclass(frozen=True, slots=True)
class FiringKey:
    """What makes a firing unique: the same key never fires twice."""

    rule_uid: str
    task_id: uuid.UUID | None
    trigger: TriggerEvent
    occurrence: str

    @property
    def dedup(self) -> str:
        task = str(self.task_id) if self.task_id else "-"
        return f"{self.rule_uid}/{task}/{self.trigger.value}/{self.occurrence}"


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule that should fire now, for one task (or, for Schedule, a digest of tasks)."""

    key: FiringKey
    rule: EngineRule
    task: TaskSnapshot | None
    due_at: datetime | None = None
    """The moment the trigger was due (time triggers); the latency is measured from it."""
    tasks: tuple[TaskSnapshot, ...] = ()
    changes: Mapping[str, Any] = field(default_factory=dict)
    event_id: uuid.UUID | None = None
    document: TaskDocument | None = None
    """`task` as conditions and templates see it, when already computed (saves a conversion)."""


__all__ = [
    "OPEN_STATUSES",
    "ROLES",
    "EngineRule",
    "Firing",
    "FiringKey",
    "NotifyAction",
    "RuleSource",
]
