"""Support for testing code that uses the engine: schema set-up, task events, outbox reads.

Task events here are built the way the tasks service builds them (one event per change,
of the most specific type, with `changes` and the full snapshot after the change).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine.consumer import TaskEventConsumer
from smarttasks.automation.engine.schedule import libpq_url
from smarttasks.automation.engine.tables import SCHEMA
from smarttasks.automation.rules.compiler import CompiledRule, compile_rule
from smarttasks.automation.rules.index import RuleIndex
from smarttasks.core import migrations
from smarttasks.core.db import unit_of_work
from smarttasks.core.events import NotificationRequested, TaskEvent, TaskEventType, TaskSnapshot
from smarttasks.core.messaging.wakeup import notifying_relays
from smarttasks.core.outbox import OUTBOX_CHANNEL

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
ENGINE_TABLES = (
    "tasks",
    "schedule",
    "schedule_kinds",
    "cron_entries",
    "firings",
    "rule_stats",
    "outbox",
    "inbox",
    "dead_letters",
)


def migrate(url: str) -> None:
    """Bring schema `automation` to its latest revision."""
    migrations.upgrade(url=url, script_location=MIGRATIONS, schema=SCHEMA)


async def reset(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Empty every engine table (tests that commit cannot roll back)."""
    tables = ", ".join(f"{SCHEMA}.{name}" for name in ENGINE_TABLES)
    async with sessions() as session:
        await session.execute(text(f"TRUNCATE {tables}"))
        await session.commit()


def now() -> datetime:
    return datetime.now(UTC)


def rule(
    spec: Mapping[str, Any],
    *,
    name: str | None = None,
    namespace: str = "team-a",
    created_at: datetime | None = None,
    labels: Mapping[str, str] | None = None,
) -> CompiledRule:
    """Compile `spec` as a new AutomationRule with a fresh uid."""
    return compile_rule(
        spec,
        namespace=namespace,
        name=name or f"rule-{uuid.uuid4().hex[:8]}",
        uid=str(uuid.uuid4()),
        generation=1,
        labels=labels,
        created_at=created_at or datetime(2000, 1, 1, tzinfo=UTC),
    )


def index(*rules: CompiledRule) -> RuleIndex:
    """A rule index holding `rules`."""
    idx = RuleIndex()
    for compiled in rules:
        idx.put(compiled)
    return idx


async def deliver(
    sessions: async_sessionmaker[AsyncSession], consumer: TaskEventConsumer, *events: TaskEvent
) -> None:
    """Hand each event to the consumer in its own committed transaction, as the runner does."""
    for event in events:
        async with unit_of_work(sessions) as session:
            await consumer.handle(session, event)


class Tasks:
    """Builds task events like the tasks service: versions, changes, most specific type."""

    def __init__(self, owner_id: uuid.UUID | None = None) -> None:
        self.owner_id = owner_id or uuid.uuid4()
        self.current: dict[uuid.UUID, TaskSnapshot] = {}

    def created(self, **fields: Any) -> TaskEvent:
        at = fields.pop("at", None) or now()
        data: dict[str, Any] = {
            "id": uuid.uuid4(),
            "title": "A task",
            "status": "todo",
            "priority": "normal",
            "owner_id": self.owner_id,
            "created_at": at,
            "updated_at": at,
            "version": 1,
            **fields,
        }
        task = TaskSnapshot.model_validate(data)
        self.current[task.id] = task
        return TaskEvent(type=TaskEventType.CREATED, occurred_at=at, data=task)

    def updated(self, task_id: uuid.UUID, **fields: Any) -> TaskEvent:
        at = fields.pop("at", None) or now()
        before = self.current[task_id]
        old = before.model_dump(mode="json")
        after = before.model_copy(
            update={**fields, "version": before.version + 1, "updated_at": at}
        )
        after = TaskSnapshot.model_validate(after.model_dump())
        new = after.model_dump(mode="json")
        changes = {name: [old[name], new[name]] for name in fields if old[name] != new[name]}
        kind = TaskEventType.UPDATED
        if "status" in changes and after.status == "done":
            kind = TaskEventType.COMPLETED
        elif "assignee_id" in changes:
            kind = TaskEventType.ASSIGNED
        self.current[task_id] = after
        return TaskEvent(type=kind, occurred_at=at, data=after, changes=changes)

    def deleted(self, task_id: uuid.UUID) -> TaskEvent:
        task = self.current.pop(task_id)
        return TaskEvent(type=TaskEventType.DELETED, data=task)


async def outbox_messages(
    sessions: async_sessionmaker[AsyncSession],
) -> list[NotificationRequested]:
    """Every `notification.requested` in the engine's outbox, oldest first."""
    async with sessions() as session:
        rows = await session.execute(text(f"SELECT payload FROM {SCHEMA}.outbox ORDER BY seq"))
        return [NotificationRequested.model_validate(row.payload) for row in rows]


async def firing_rows(sessions: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    """Every firing row (key, throttled, due and fired times), oldest first."""
    async with sessions() as session:
        rows = await session.execute(text(f"SELECT * FROM {SCHEMA}.firings ORDER BY id"))
        return [dict(row._mapping) for row in rows]


class OutboxWatcher:
    """Awaits outbox rows via the relays' NOTIFY channel instead of polling.

    Commits through `sessions` notify after they add outbox rows, as the engine's do in
    the operator process (`notifying_relays`), so this also checks that wake-up path.
    """

    def __init__(self, url: str, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._url = url
        self._sessions = sessions
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> OutboxWatcher:
        conn = await psycopg.AsyncConnection.connect(libpq_url(self._url), autocommit=True)
        self._conn = await self._stack.enter_async_context(conn)
        await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
        await self._stack.enter_async_context(notifying_relays(self._sessions.kw["bind"]))
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._stack.aclose()

    async def count(self) -> int:
        async with self._sessions() as session:
            value = (await session.execute(text(f"SELECT count(*) FROM {SCHEMA}.outbox"))).scalar()
            return int(value or 0)

    async def wait_for(self, condition: Callable[[int], bool], *, timeout: float = 30.0) -> int:
        """Wait until `condition(number of outbox rows)` holds; TimeoutError otherwise."""
        assert self._conn is not None, "use `async with`"
        async with asyncio.timeout(timeout):
            while True:
                n = await self.count()
                if condition(n):
                    return n
                # The next commit that adds outbox rows notifies; check again then.
                async for _ in self._conn.notifies(stop_after=1):
                    break


__all__ = [
    "ENGINE_TABLES",
    "MIGRATIONS",
    "OutboxWatcher",
    "Tasks",
    "deliver",
    "firing_rows",
    "index",
    "migrate",
    "now",
    "outbox_messages",
    "reset",
    "rule",
]
