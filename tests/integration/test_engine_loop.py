"""The running engine: the schedule loop fires on time, wakes on events, publishes statuses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine import testing
from smarttasks.automation.engine.firings import Recorded
from smarttasks.automation.engine.model import FiringKey
from smarttasks.automation.engine.runner import AutomationEngine, EngineSettings
from smarttasks.automation.engine.schedule import FiringListener
from smarttasks.automation.engine.status import MemoryStatusSink
from smarttasks.automation.engine.testing import OutboxWatcher, Tasks, deliver, index, rule

pytestmark = pytest.mark.integration

OVERDUE = {
    "trigger": {"event": "TaskOverdue"},
    "actions": [{"notify": {"channel": "email", "to": ["owner"]}}],
}


@pytest.fixture(scope="session")
def automation_db(database_url: str) -> str:
    testing.migrate(database_url)
    return database_url


@pytest.fixture
async def db(
    automation_db: str, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await testing.reset(sessions)
    yield sessions


def settings(database_url: str) -> EngineSettings:
    # An idle loop sleeps up to an hour: anything firing sooner was woken by its due time
    # or by a notification, not by a periodic poll.
    return EngineSettings(
        database_url=database_url,
        engine_max_sleep_seconds=3600,
        engine_status_interval_seconds=0.2,
    )


def recorder() -> tuple[FiringListener, asyncio.Queue[FiringKey]]:
    queue: asyncio.Queue[FiringKey] = asyncio.Queue()

    def listener(recorded: Sequence[Recorded]) -> None:
        for item in recorded:
            queue.put_nowait(item.firing.key)

    return listener, queue


async def test_an_overdue_task_fires_within_a_second_of_its_deadline(
    db: async_sessionmaker[AsyncSession], automation_db: str
) -> None:
    idx = index(rule(OVERDUE))
    sink = MemoryStatusSink()
    engine = AutomationEngine(
        sessions=db,
        database_url=automation_db,
        rules=idx,
        sink=sink,
        settings=settings(automation_db),
    )
    tasks = Tasks()
    async with engine, OutboxWatcher(automation_db, db) as outbox:
        due = testing.now() + timedelta(milliseconds=400)
        await deliver(db, engine.consumer, tasks.created(due_at=due))
        await outbox.wait_for(lambda n: n == 1, timeout=10)
    [row] = await testing.firing_rows(db)
    assert row["due_at"] == due
    assert timedelta(0) <= row["fired_at"] - due < timedelta(seconds=1)


async def test_a_sleeping_loop_wakes_for_an_earlier_deadline(
    db: async_sessionmaker[AsyncSession], automation_db: str
) -> None:
    idx = index(rule(OVERDUE))
    engine = AutomationEngine(
        sessions=db,
        database_url=automation_db,
        rules=idx,
        sink=MemoryStatusSink(),
        settings=settings(automation_db),
    )
    listener, fired = recorder()
    engine.scheduler.listeners.append(listener)
    tasks = Tasks()
    async with engine:
        far = tasks.created(due_at=testing.now() + timedelta(hours=1))
        await deliver(db, engine.consumer, far)
        soon = tasks.created(due_at=testing.now() + timedelta(milliseconds=300))
        await deliver(db, engine.consumer, soon)
        key = await asyncio.wait_for(fired.get(), timeout=5)
    assert key.task_id == soon.data.id


async def test_moving_a_deadline_earlier_wakes_the_loop(
    db: async_sessionmaker[AsyncSession], automation_db: str
) -> None:
    engine = AutomationEngine(
        sessions=db,
        database_url=automation_db,
        rules=index(rule(OVERDUE)),
        sink=MemoryStatusSink(),
        settings=settings(automation_db),
    )
    listener, fired = recorder()
    engine.scheduler.listeners.append(listener)
    tasks = Tasks()
    async with engine:
        created = tasks.created(due_at=testing.now() + timedelta(days=1))
        await deliver(db, engine.consumer, created)
        moved_to = testing.now() + timedelta(milliseconds=300)
        await deliver(db, engine.consumer, tasks.updated(created.data.id, due_at=moved_to))
        key = await asyncio.wait_for(fired.get(), timeout=5)
    assert key.occurrence == moved_to.isoformat()


async def test_a_rule_added_while_running_arms_existing_tasks(
    db: async_sessionmaker[AsyncSession], automation_db: str
) -> None:
    idx = index()
    sink = MemoryStatusSink()
    engine = AutomationEngine(
        sessions=db,
        database_url=automation_db,
        rules=idx,
        sink=sink,
        settings=settings(automation_db),
    )
    tasks = Tasks()
    async with engine:
        await deliver(
            db, engine.consumer, tasks.created(due_at=testing.now() + timedelta(seconds=1))
        )
        added = rule(OVERDUE, created_at=testing.now())
        idx.put(added)
        engine.rules_changed()
        status = await asyncio.wait_for(sink.wait_for(added.uid, fired_count=1), timeout=10)
    assert status.throttled_count == 0
    assert status.last_fired_at is not None


async def test_statuses_reach_the_sink_in_batches(
    db: async_sessionmaker[AsyncSession], automation_db: str
) -> None:
    rules = [rule(OVERDUE, name=f"overdue-{i}") for i in range(3)]
    sink = MemoryStatusSink()
    engine = AutomationEngine(
        sessions=db,
        database_url=automation_db,
        rules=index(*rules),
        sink=sink,
        settings=settings(automation_db),
    )
    tasks = Tasks()
    async with engine:
        due = testing.now() + timedelta(milliseconds=300)
        await deliver(db, engine.consumer, *(tasks.created(due_at=due) for _ in range(20)))
        for r in rules:
            await asyncio.wait_for(sink.wait_for(r.uid, fired_count=20), timeout=10)
    # 60 firings, but far fewer status publications: each carries several rules at once.
    assert sum(sink.batches) < 60
    assert max(sink.batches) > 1


async def test_an_unassigned_task_requests_nothing_for_its_assignee(
    db: async_sessionmaker[AsyncSession], automation_db: str
) -> None:
    spec = {
        "trigger": {"event": "TaskOverdue"},
        "actions": [{"notify": {"channel": "email", "to": ["assignee"]}}],
    }
    only = rule(spec)
    sink = MemoryStatusSink()
    engine = AutomationEngine(
        sessions=db,
        database_url=automation_db,
        rules=index(only),
        sink=sink,
        settings=settings(automation_db),
    )
    tasks = Tasks()
    assignee = uuid.uuid4()
    async with engine, OutboxWatcher(automation_db, db) as outbox:
        due = testing.now() + timedelta(milliseconds=200)
        await deliver(
            db,
            engine.consumer,
            tasks.created(due_at=due, assignee_id=assignee),
            tasks.created(due_at=due),  # unassigned: nobody to tell, nothing requested
        )
        await outbox.wait_for(lambda n: n >= 1, timeout=10)
    [message] = await testing.outbox_messages(db)
    assert message.recipients == [f"user:{assignee}"]
    assert len(await testing.firing_rows(db)) == 2
    status = await asyncio.wait_for(sink.wait_for(only.uid, fired_count=1), timeout=10)
    assert status.fired_count == 1


async def test_a_digest_due_at_start_runs_beside_the_deadline_loop(
    db: async_sessionmaker[AsyncSession], automation_db: str
) -> None:
    # Daily at midnight UTC, created two days ago: today's slot is due (late) at start.
    digest = rule(
        {
            "trigger": {"event": "Schedule", "schedule": "0 0 * * *"},
            "actions": [{"notify": {"channel": "email", "to": ["lead@example.com"]}}],
        },
        created_at=testing.now() - timedelta(days=2),
    )
    sink = MemoryStatusSink()
    rules = index(digest, rule(OVERDUE))
    engine = AutomationEngine(
        sessions=db,
        database_url=automation_db,
        rules=rules,
        sink=sink,
        settings=settings(automation_db),
    )
    tasks = Tasks()
    await deliver(db, engine.consumer, *(tasks.created(title=f"t{i}") for i in range(3)))
    async with engine:
        status = await asyncio.wait_for(sink.wait_for(digest.uid, fired_count=1), timeout=10)
        # As the operator does when the rule is deleted: out of the index, then the hook.
        rules.discard(digest.key)
        await engine.rule_deleted(digest.uid)
    assert status.fired_count == 1
    [message] = await testing.outbox_messages(db)
    assert message.recipients == ["lead@example.com"]
    assert sorted(t.title for t in message.tasks) == ["t0", "t1", "t2"]
    async with db() as session:
        left = await session.execute(text("SELECT count(*) FROM automation.cron_entries"))
        assert left.scalar() == 0
