"""RuleStore over documents in the database (embedded mode: no API server, no operator).

What the operator does in a cluster happens here on write: each rule is compiled, its
Ready condition and observedGeneration are stored in its status, and the RuleIndex the
engine reads is updated once the change is committed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation import API_GROUP, API_VERSION, KIND, OWNER_LABEL
from smarttasks.automation.api.store import (
    RuleConflict,
    RuleExists,
    RuleNotFound,
    StoredRule,
    StoreUnavailable,
)
from smarttasks.automation.api.tables import rule_documents as t
from smarttasks.automation.rules.compiler import (
    CompiledRule,
    RuleCompileError,
    compile_resource,
    validation_error,
)
from smarttasks.automation.rules.index import RuleIndex
from smarttasks.automation.rules.model import RuleSpec
from smarttasks.automation.rules.readiness import status_patch
from smarttasks.core.db import unit_of_work

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class DatabaseRuleStore:
    """Rules as rows of ``automation.rule_documents``; keeps ``index`` in step when given."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        index: RuleIndex | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self.index = index
        self._on_change = on_change
        self._clock = clock

    async def list(self, namespace: str, *, owner: uuid.UUID | None = None) -> list[StoredRule]:
        query = select(t).where(t.c.namespace == namespace).order_by(t.c.name)
        if owner is not None:
            query = query.where(t.c.owner_id == owner)
        async with self._session() as session:
            return [_stored(row) for row in (await session.execute(query)).all()]

    async def get(self, namespace: str, name: str) -> StoredRule:
        async with self._session() as session:
            row = (
                await session.execute(select(t).where(t.c.namespace == namespace, t.c.name == name))
            ).one_or_none()
        if row is None:
            raise RuleNotFound("no such rule")
        return _stored(row)

    async def create(
        self, namespace: str, name: str, spec: RuleSpec, *, labels: dict[str, str]
    ) -> StoredRule:
        now = self._clock()
        rule = StoredRule(
            namespace=namespace,
            name=name,
            uid=str(uuid.uuid4()),
            generation=1,
            resource_version="1",
            spec=spec.to_manifest(),
            labels=dict(labels),
            created_at=now,
        )
        rule, compiled = _with_status(rule, now)
        try:
            async with self._session() as session:
                await session.execute(insert(t).values(**_row(rule), updated_at=now))
        except IntegrityError:
            raise RuleExists("a rule by that name exists already") from None
        self._changed(rule, compiled)
        return rule

    async def replace(
        self, namespace: str, name: str, spec: RuleSpec, *, resource_version: str | None
    ) -> StoredRule:
        now = self._clock()
        async with self._session() as session:
            row = (
                await session.execute(
                    select(t).where(t.c.namespace == namespace, t.c.name == name).with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise RuleNotFound("no such rule")
            current = _stored(row)
            if resource_version is not None and resource_version != current.resource_version:
                raise RuleConflict(
                    f"the rule is at version {current.resource_version}, not {resource_version}"
                )
            manifest = spec.to_manifest()
            changed = manifest != current.spec
            rule = StoredRule(
                namespace=namespace,
                name=name,
                uid=current.uid,
                generation=current.generation + (1 if changed else 0),
                resource_version=str(int(current.resource_version) + 1),
                spec=manifest,
                labels=current.labels,
                status=current.status,
                created_at=current.created_at,
            )
            rule, compiled = _with_status(rule, now)
            await session.execute(
                update(t)
                .where(t.c.uid == uuid.UUID(rule.uid))
                .values(
                    spec=rule.spec,
                    status=rule.status,
                    generation=rule.generation,
                    resource_version=int(rule.resource_version),
                    updated_at=now,
                )
            )
        self._changed(rule, compiled)
        return rule

    async def delete(self, namespace: str, name: str) -> None:
        async with self._session() as session:
            result = await session.execute(
                delete(t).where(t.c.namespace == namespace, t.c.name == name).returning(t.c.uid)
            )
            if result.one_or_none() is None:
                raise RuleNotFound("no such rule")
        if self.index is not None:
            self.index.discard(f"{namespace}/{name}")
        if self._on_change is not None:
            self._on_change()

    async def apply(self, manifest: Mapping[str, Any], *, namespace: str) -> StoredRule:
        """Create or update a rule from an AutomationRule manifest (``rules apply -f``).

        ``metadata.namespace`` wins over ``namespace``. Raises ``RuleCompileError``
        naming the field when the manifest is not a valid AutomationRule; a rule whose
        condition or templates do not compile is stored with Ready=False, as in a cluster.
        """
        if manifest.get("apiVersion") != f"{API_GROUP}/{API_VERSION}" or (
            manifest.get("kind") != KIND
        ):
            raise RuleCompileError("kind", f"expected {API_GROUP}/{API_VERSION} {KIND}")
        meta = manifest.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RuleCompileError("metadata.name", "must be a lower-case DNS name")
        namespace = str(meta.get("namespace") or namespace)
        try:
            spec = RuleSpec.model_validate(manifest.get("spec"))
        except ValidationError as exc:
            raise validation_error(exc) from None
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        try:
            return await self.replace(namespace, name, spec, resource_version=None)
        except RuleNotFound:
            return await self.create(namespace, name, spec, labels=labels)

    async def load_index(self) -> RuleIndex:
        """Fill ``index`` (a new one if unset) with every stored rule that compiles."""
        index = self.index if self.index is not None else RuleIndex()
        async with self._session() as session:
            rows = (await session.execute(select(t))).all()
        for row in rows:
            outcome = _compile(_stored(row))
            if isinstance(outcome, CompiledRule):
                index.put(outcome)
        self.index = index
        return index

    def _session(self) -> Any:
        return _translated(unit_of_work(self._sessions))

    def _changed(self, rule: StoredRule, compiled: CompiledRule | None) -> None:
        if self.index is not None:
            if compiled is not None:
                self.index.put(compiled)
            else:
                self.index.discard(f"{rule.namespace}/{rule.name}")
        if self._on_change is not None:
            self._on_change()


class _translated:
    """A unit of work whose connection failures surface as StoreUnavailable."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aenter__(self) -> AsyncSession:
        try:
            session: AsyncSession = await self._inner.__aenter__()
        except (DBAPIError, OSError) as exc:
            raise StoreUnavailable(f"the database cannot be reached: {exc}") from exc
        return session

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        try:
            result: bool | None = await self._inner.__aexit__(*exc_info)
        except IntegrityError:
            raise
        except (DBAPIError, OSError) as exc:
            raise StoreUnavailable(f"the database cannot be reached: {exc}") from exc
        return result


def _compile(rule: StoredRule) -> CompiledRule | RuleCompileError:
    try:
        return compile_resource(rule.resource())
    except RuleCompileError as exc:
        return exc


def _with_status(rule: StoredRule, now: datetime) -> tuple[StoredRule, CompiledRule | None]:
    """The rule with the status the operator would report, and its compiled form."""
    outcome = _compile(rule)
    patch = status_patch(rule.status, outcome, generation=rule.generation, now=now)
    status = {**rule.status, **(patch or {})}
    compiled = outcome if isinstance(outcome, CompiledRule) else None
    return (
        StoredRule(
            namespace=rule.namespace,
            name=rule.name,
            uid=rule.uid,
            generation=rule.generation,
            resource_version=rule.resource_version,
            spec=rule.spec,
            labels=rule.labels,
            status=status,
            created_at=rule.created_at,
        ),
        compiled,
    )


def _row(rule: StoredRule) -> dict[str, Any]:
    return {
        "uid": uuid.UUID(rule.uid),
        "namespace": rule.namespace,
        "name": rule.name,
        "owner_id": rule.owner,
        "labels": rule.labels,
        "spec": rule.spec,
        "status": rule.status,
        "generation": rule.generation,
        "resource_version": int(rule.resource_version),
        "created_at": rule.created_at,
    }


def _stored(row: Row[Any]) -> StoredRule:
    m = row._mapping
    labels = dict(m["labels"] or {})
    if m["owner_id"] is not None:
        labels.setdefault(OWNER_LABEL, str(m["owner_id"]))
    return StoredRule(
        namespace=m["namespace"],
        name=m["name"],
        uid=str(m["uid"]),
        generation=int(m["generation"]),
        resource_version=str(m["resource_version"]),
        spec=dict(m["spec"]),
        labels=labels,
        status=dict(m["status"] or {}),
        created_at=m["created_at"],
    )


__all__ = ["DatabaseRuleStore"]
