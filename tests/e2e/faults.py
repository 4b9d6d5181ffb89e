"""Helpers of the fault drill: many tasks created fast, a light SMTP sink, a few figures.

The sink keeps only what the drill checks (arrival time, Message-ID, subject, recipients)
and parses headers only: ten thousand messages arrive on the test's own event loop, which
also serves the SMTP sessions.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from sqlalchemy import Table, insert

from smarttasks.core.db import create_engine, create_sessionmaker, unit_of_work
from smarttasks.core.events import EVENTS_EXCHANGE, Actor, TaskEvent, TaskEventType
from smarttasks.core.messaging.wakeup import notifying_relays
from smarttasks.core.outbox import outbox_written, qualified_name
from smarttasks.tasks.models import Task, outbox
from smarttasks.tasks.publishers import snapshot
from smarttasks.tasks.schemas import Priority, TaskStatus
from tests.e2e.platforms import Account, TimedSink

_HEADERS = BytesHeaderParser(policy=compat32)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One message the SMTP server accepted, and when (seconds since the epoch)."""

    arrived_at: float
    message_id: str
    subject: str
    recipients: tuple[str, ...]


class CountingSink(TimedSink):
    """An SMTP sink for many messages: headers only, and a count to await.

    It keeps `received` (`Arrival`s), not the parsed `Email`s of `arrivals`: the
    scenarios' helpers that look at whole messages are not for it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Arrival] = []
        self.message_ids: set[str] = set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        arrived = time.time()
        headers = _HEADERS.parsebytes(envelope.original_content or b"")
        self.received.append(
            Arrival(
                arrived_at=arrived,
                message_id=str(headers.get("Message-ID", "")).strip(),
                subject=str(headers.get("Subject", "")).strip(),
                recipients=tuple(envelope.rcpt_tos),
            )
        )
        self.message_ids.add(self.received[-1].message_id)
        self.changed.set()
        return "250 2.0.0 Accepted"

    async def wait_distinct(self, count: int, *, timeout: float, what: str) -> None:
        """Return once messages with at least `count` distinct Message-IDs arrived."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.message_ids) < count:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{what}: {len(self.message_ids)} of {count} Message-IDs within {timeout:.0f}s"
            ) from None


@dataclass(frozen=True, slots=True)
class Created:
    """A task that was created: its id, its owner's address and its deadline (seconds since
    the epoch)."""

    id: uuid.UUID
    owner: str
    due_at: float


async def create_in_bulk(
    database_url: str,
    owners: Sequence[Account],
    deadlines: Sequence[datetime],
    *,
    project: str,
    per_transaction: int,
) -> list[Created]:
    """One task per deadline, written as the tasks service writes a created task, in batches.

    Each task is what `POST /api/v1/tasks` commits (`tasks.service.create_task`): the task
    row and its `task.created` event (the `TaskEvent` envelope with the task's snapshot) in
    `tasks.outbox`, in one transaction, the relays woken after the commit; only here a
    transaction holds `per_transaction` of them. Through the API, ten thousand tasks take
    minutes on two shared cores (HTTP, token checks and one transaction per task). The
    earliest deadlines are committed first; owners take turns.
    """
    table: Table = Task.__table__  # type: ignore[assignment]
    columns = [column.key for column in table.columns]
    insert_tasks, insert_events = insert(table), insert(outbox)
    database = create_engine(database_url, pool_size=1)
    sessions = create_sessionmaker(database)
    created: list[Created] = []
    try:
        async with notifying_relays(database):
            for start in range(0, len(deadlines), per_transaction):
                tasks: list[dict[str, Any]] = []
                events: list[dict[str, Any]] = []
                made: list[Created] = []
                now = datetime.now(UTC)
                for n in range(start, min(start + per_transaction, len(deadlines))):
                    owner = owners[n % len(owners)]
                    task = Task(
                        id=uuid.uuid4(),
                        title=f"Fault drill task {n}",
                        description="",
                        status=TaskStatus.TODO.value,
                        priority=Priority.HIGH.value,
                        labels=[],
                        project=project,
                        owner_id=owner.id,
                        assignee_id=None,
                        due_at=deadlines[n],
                        completed_at=None,
                        created_at=now,
                        updated_at=now,
                        version=1,
                    )
                    event = TaskEvent(
                        type=TaskEventType.CREATED,
                        actor=Actor(user_id=owner.id, email=owner.email),
                        data=snapshot(task),
                    )
                    tasks.append({column: getattr(task, column) for column in columns})
                    events.append(
                        {
                            "event_id": event.id,
                            "exchange": EVENTS_EXCHANGE,
                            "routing_key": TaskEventType.CREATED.value,
                            "aggregate_id": task.id,
                            "payload": event.model_dump(mode="json"),
                        }
                    )
                    made.append(Created(task.id, owner.email, deadlines[n].timestamp()))
                async with unit_of_work(sessions) as session:
                    await session.execute(insert_tasks, tasks)
                    await session.execute(insert_events, events)
                    outbox_written(session, qualified_name(outbox))
                created.extend(made)
    finally:
        await database.dispose()
    return created


__all__ = ["Arrival", "CountingSink", "Created", "create_in_bulk"]
