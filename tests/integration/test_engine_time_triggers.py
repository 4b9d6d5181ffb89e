"""Deadline and schedule triggers on real PostgreSQL, with the schedule driven at chosen times."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine import projection, testing
from smarttasks.automation.engine.consumer import TaskEventConsumer
from smarttasks.automation.engine.schedule import Scheduler
from smarttasks.automation.engine.status import StatusTracker
from smarttasks.automation.engine.testing import Tasks, deliver, index, outbox_messages, rule
from smarttasks.automation.rules.compiler import CompiledRule
from smarttasks.automation.rules.index import RuleIndex
from smarttasks.core.db import unit_of_work
from smarttasks.core.events import NotificationRequested, TaskEvent

pytestmark = pytest.mark.integration

T = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
EMAIL = {"notify": {"channel": "email", "to": ["assignee", "owner"]}}


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


def spec(event: str, **trigger: Any) -> dict[str, Any]:
    match = trigger.pop("match", None)
    actions = trigger.pop("actions", [EMAIL])
    out: dict[str, Any] = {"trigger": {"event": event, **trigger}, "actions": actions}
    if match:
        out["match"] = match
    return out


class Clock:
    """A consumer and a scheduler over the same rules; the schedule runs at given instants."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *rules: CompiledRule) -> None:
        self.sessions = sessions
        self.index: RuleIndex = index(*rules)
        tracker = StatusTracker()
        self.consumer = TaskEventConsumer(self.index, tracker=tracker)
        self.scheduler = Scheduler(sessions, self.index, tracker=tracker)
        self.tasks = Tasks()

    async def start(self) -> Clock:
        await self.scheduler.sync_rules()
        return self

    async def send(self, *events: TaskEvent) -> None:
        await deliver(self.sessions, self.consumer, *events)

    async def at(self, when: datetime) -> list[NotificationRequested]:
        """Run the schedule at `when`; returns every message requested so far."""
        await self.scheduler.run_due(when)
        return await outbox_messages(self.sessions)


def occurrences(messages: list[NotificationRequested]) -> list[str]:
    return [m.dedup_key.split("/")[3] for m in messages]


async def test_task_overdue_fires_once_at_the_deadline(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    await c.send(c.tasks.created(due_at=T, assignee_id=uuid.uuid4()))
    assert await c.at(T - timedelta(seconds=1)) == []
    fired = await c.at(T)
    assert len(fired) == 1
    assert occurrences(fired) == [T.isoformat()]
    assert await c.at(T + timedelta(hours=5)) == fired


async def test_deadline_approaching_fires_before_the_deadline(
    db: async_sessionmaker[AsyncSession],
) -> None:
    approaching = rule(spec("DeadlineApproaching", before="1h"))
    c = await Clock(db, approaching, rule(spec("TaskOverdue"))).start()
    await c.send(c.tasks.created(due_at=T))
    assert await c.at(T - timedelta(hours=1, seconds=1)) == []
    [early] = await c.at(T - timedelta(hours=1))
    assert early.rule.uid == approaching.uid
    assert len(await c.at(T)) == 2


async def test_a_moved_deadline_rearms_the_trigger(db: async_sessionmaker[AsyncSession]) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    created = c.tasks.created(due_at=T)
    task_id = created.data.id
    await c.send(created, c.tasks.updated(task_id, due_at=T + timedelta(hours=2)))
    assert await c.at(T + timedelta(hours=1)) == []
    fired = await c.at(T + timedelta(hours=2))
    assert occurrences(fired) == [(T + timedelta(hours=2)).isoformat()]
    # Moved again after it fired: a new deadline fires again, once.
    await c.send(c.tasks.updated(task_id, due_at=T + timedelta(days=1)))
    assert len(await c.at(T + timedelta(days=1))) == 2
    assert len(await c.at(T + timedelta(days=2))) == 2


async def test_a_batch_of_events_arms_as_the_same_events_one_by_one(
    db: async_sessionmaker[AsyncSession],
) -> None:
    approaching = rule(spec("DeadlineApproaching", before="1h"))
    c = await Clock(db, rule(spec("TaskOverdue")), approaching).start()
    moved = c.tasks.created(due_at=T)
    done = c.tasks.created(due_at=T)
    batch = [
        moved,
        done,
        c.tasks.updated(moved.data.id, due_at=T + timedelta(hours=2)),
        c.tasks.updated(done.data.id, status="done"),
    ]
    async with unit_of_work(db) as session:
        await c.consumer.handle_batch(session, batch)

    assert await c.at(T + timedelta(minutes=30)) == []
    approached = await c.at(T + timedelta(minutes=90))
    fired = await c.at(T + timedelta(days=1))
    assert [m.rule.uid for m in approached] == [approaching.uid]
    assert {m.task.id for m in fired if m.task} == {moved.data.id}
    assert occurrences(fired) == [(T + timedelta(hours=2)).isoformat()] * 2


async def test_a_deadline_moved_into_the_past_fires_at_once(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    created = c.tasks.created(due_at=T + timedelta(days=3))
    await c.send(created, c.tasks.updated(created.data.id, due_at=T - timedelta(hours=1)))
    assert len(await c.at(T)) == 1


@pytest.mark.parametrize("closing", ["done", "cancelled", "deleted"])
async def test_closed_and_deleted_tasks_are_disarmed(
    db: async_sessionmaker[AsyncSession], closing: str
) -> None:
    approaching = rule(spec("DeadlineApproaching", before="1h"))
    c = await Clock(db, rule(spec("TaskOverdue")), approaching).start()
    created = c.tasks.created(due_at=T)
    task_id = created.data.id
    close = (
        c.tasks.deleted(task_id)
        if closing == "deleted"
        else c.tasks.updated(task_id, status=closing)
    )
    await c.send(created, close)
    assert await c.at(T + timedelta(days=1)) == []


async def test_a_reopened_overdue_task_fires_late_but_only_once_per_deadline(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    created = c.tasks.created(due_at=T)
    task_id = created.data.id
    await c.send(created, c.tasks.updated(task_id, status="done"))
    assert await c.at(T + timedelta(hours=1)) == []
    await c.send(c.tasks.updated(task_id, status="todo"))
    assert len(await c.at(T + timedelta(hours=2))) == 1
    await c.send(c.tasks.updated(task_id, status="done"), c.tasks.updated(task_id, status="todo"))
    assert len(await c.at(T + timedelta(hours=3))) == 1


async def test_repeat_reminds_while_overdue_and_stops_when_done(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue", repeat="1h"))).start()
    created = c.tasks.created(due_at=T)
    await c.send(created)
    for hours in (0, 1, 2):
        await c.at(T + timedelta(hours=hours, seconds=1))
    fired = await c.at(T + timedelta(hours=2, minutes=30))
    assert occurrences(fired) == [T.isoformat(), f"{T.isoformat()}#1", f"{T.isoformat()}#2"]
    await c.send(c.tasks.updated(created.data.id, status="done"))
    assert len(await c.at(T + timedelta(hours=10))) == 3


async def test_repeat_after_downtime_fires_once_for_the_latest_slot(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue", repeat="1h"))).start()
    await c.send(c.tasks.created(due_at=T))
    fired = await c.at(T + timedelta(hours=5, minutes=30))
    assert occurrences(fired) == [f"{T.isoformat()}#5"]
    assert len(await c.at(T + timedelta(hours=5, minutes=59))) == 1
    assert occurrences(await c.at(T + timedelta(hours=6)))[-1] == f"{T.isoformat()}#6"


async def test_deadlines_that_passed_while_the_engine_was_down_fire_late(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    await c.send(*(c.tasks.created(due_at=T + timedelta(minutes=i)) for i in range(5)))
    assert len(await c.at(T + timedelta(days=2))) == 5


async def test_a_rule_never_fires_for_deadlines_that_passed_before_it_existed(
    db: async_sessionmaker[AsyncSession],
) -> None:
    newer = rule(spec("TaskOverdue"), created_at=T + timedelta(minutes=1))
    c = await Clock(db, newer).start()
    await c.send(
        c.tasks.created(title="passed before", due_at=T),
        c.tasks.created(title="after", due_at=T + timedelta(minutes=2)),
    )
    fired = await c.at(T + timedelta(hours=1))
    assert [m.task.title for m in fired if m.task] == ["after"]


async def test_a_rule_added_later_arms_the_existing_tasks(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db).start()
    await c.send(c.tasks.created(due_at=T), c.tasks.created(due_at=T - timedelta(days=30)))
    assert await c.at(T - timedelta(days=1)) == []
    c.index.put(rule(spec("TaskOverdue"), created_at=T - timedelta(days=2)))
    c.scheduler.rules_changed()
    await c.scheduler.sync_rules()
    # Only the deadline after the rule's creation fires; the month-old one never does.
    assert len(await c.at(T + timedelta(minutes=1))) == 1


async def test_a_removed_rule_stops_firing(db: async_sessionmaker[AsyncSession]) -> None:
    overdue = rule(spec("TaskOverdue"))
    c = await Clock(db, overdue).start()
    await c.send(c.tasks.created(due_at=T))
    c.index.discard(overdue.key)
    await c.scheduler.sync_rules()
    assert await c.at(T + timedelta(hours=1)) == []


async def test_stale_redelivered_events_do_not_move_the_deadline_back(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    created = c.tasks.created(due_at=T)
    moved = c.tasks.updated(created.data.id, due_at=T + timedelta(days=1))
    await c.send(created, moved, created)
    assert await c.at(T + timedelta(hours=1)) == []
    assert len(await c.at(T + timedelta(days=1))) == 1


async def test_a_deleted_task_is_not_resurrected_by_a_late_update(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    created = c.tasks.created(due_at=T)
    task_id = created.data.id
    update = c.tasks.updated(task_id, title="Renamed")
    await c.send(created, c.tasks.deleted(task_id), update)
    assert await c.at(T + timedelta(days=1)) == []


async def test_the_condition_is_evaluated_against_the_task_at_firing_time(
    db: async_sessionmaker[AsyncSession],
) -> None:
    high = rule(spec("TaskOverdue", match={"condition": 'task.priority == "high"'}))
    c = await Clock(db, high).start()
    raised = c.tasks.created(title="raised", due_at=T)
    lowered = c.tasks.created(title="lowered", due_at=T, priority="high")
    await c.send(
        raised,
        lowered,
        c.tasks.updated(raised.data.id, priority="high"),
        c.tasks.updated(lowered.data.id, priority="low"),
    )
    fired = await c.at(T)
    assert [m.task.title for m in fired if m.task] == ["raised"]
    assert fired[0].task is not None and fired[0].task.version == 2


def digest_spec(schedule: str, time_zone: str, **extra: Any) -> dict[str, Any]:
    return {
        "trigger": {"event": "Schedule", "schedule": schedule, "timeZone": time_zone},
        "actions": [{"notify": {"channel": "email", "to": ["assignee", "lead@example.com"]}}],
        **extra,
    }


async def test_schedule_sends_one_digest_per_recipient(
    db: async_sessionmaker[AsyncSession],
) -> None:
    digest = rule(
        digest_spec("0 9 * * 1-5", "Europe/Berlin", match={"priorities": ["urgent"]}),
        created_at=datetime(2030, 1, 5, tzinfo=UTC),  # a Saturday: no slot until Monday
    )
    c = await Clock(db, digest).start()
    ann, bob = uuid.uuid4(), uuid.uuid4()
    await c.send(
        c.tasks.created(title="a1", priority="urgent", assignee_id=ann),
        c.tasks.created(title="a2", priority="urgent", assignee_id=ann),
        c.tasks.created(title="b1", priority="urgent", assignee_id=bob),
        c.tasks.created(title="low", priority="low", assignee_id=bob),
    )
    c.tasks.current.clear()
    # Monday 2030-01-07 09:00 in Berlin is 08:00 UTC.
    assert await c.at(datetime(2030, 1, 7, 7, 59, tzinfo=UTC)) == []
    fired = await c.at(datetime(2030, 1, 7, 8, 0, tzinfo=UTC))
    by_recipient = {m.recipients[0]: sorted(t.title for t in m.tasks) for m in fired}
    assert by_recipient == {
        f"user:{ann}": ["a1", "a2"],
        f"user:{bob}": ["b1"],
        "lead@example.com": ["a1", "a2", "b1"],
    }
    assert all(m.task is None for m in fired)
    assert "3 tasks" in next(m for m in fired if m.recipients == ["lead@example.com"]).subject
    assert len(await c.at(datetime(2030, 1, 7, 12, 0, tzinfo=UTC))) == 3


async def test_schedule_follows_the_time_zone_across_a_dst_change(
    db: async_sessionmaker[AsyncSession],
) -> None:
    digest = rule(
        digest_spec("0 9 * * *", "Europe/Berlin"), created_at=datetime(2026, 3, 27, tzinfo=UTC)
    )
    c = await Clock(db, digest).start()
    await c.send(c.tasks.created(title="open", assignee_id=uuid.uuid4()))
    # 09:00 Berlin is 08:00 UTC in winter time and 07:00 UTC from 29 March (summer time).
    assert len(await c.at(datetime(2026, 3, 28, 8, 0, tzinfo=UTC))) == 2
    assert len(await c.at(datetime(2026, 3, 29, 6, 59, tzinfo=UTC))) == 2
    fired = await c.at(datetime(2026, 3, 29, 7, 0, tzinfo=UTC))
    assert len(fired) == 4
    assert occurrences(fired)[-1] == "2026-03-29T07:00:00+00:00"
    assert len(await c.at(datetime(2026, 3, 29, 8, 0, tzinfo=UTC))) == 4


async def test_schedule_after_downtime_sends_one_digest_for_the_latest_slot(
    db: async_sessionmaker[AsyncSession],
) -> None:
    digest = rule(digest_spec("0 * * * *", "UTC"), created_at=T - timedelta(days=1))
    c = await Clock(db, digest).start()
    await c.send(c.tasks.created(assignee_id=uuid.uuid4()))
    fired = await c.at(T + timedelta(days=3, minutes=30))
    assert len(fired) == 2  # the assignee and the lead, once
    assert set(occurrences(fired)) == {(T + timedelta(days=3)).isoformat()}


async def test_schedule_sends_nothing_when_no_task_matches(
    db: async_sessionmaker[AsyncSession],
) -> None:
    digest = rule(
        digest_spec("0 9 * * *", "UTC", match={"projects": ["apollo"]}),
        created_at=T - timedelta(days=1),
    )
    c = await Clock(db, digest).start()
    await c.send(c.tasks.created(project="gemini"))
    assert await c.at(T + timedelta(hours=1)) == []


async def test_rebuilding_the_schedule_does_not_fire_anything_twice(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    await c.send(c.tasks.created(due_at=T), c.tasks.created(due_at=T + timedelta(days=1)))
    assert len(await c.at(T + timedelta(hours=1))) == 1
    await c.scheduler.rebuild()
    assert len(await c.at(T + timedelta(hours=2))) == 1
    assert len(await c.at(T + timedelta(days=2))) == 2


async def test_reseeding_the_projection_applies_current_states_and_forgets_missing_tasks(
    db: async_sessionmaker[AsyncSession],
) -> None:
    c = await Clock(db, rule(spec("TaskOverdue"))).start()
    kept = c.tasks.created(title="kept", due_at=T)
    gone = c.tasks.created(title="gone", due_at=T)
    await c.send(kept, gone)
    # The source (say, the tasks API) now has `kept` with a later deadline, and no `gone`.
    moved = c.tasks.updated(kept.data.id, due_at=T + timedelta(hours=3)).data
    async with unit_of_work(db) as session:
        assert await projection.reseed(session, [moved, kept.data], complete=True) == 2
    await c.scheduler.rebuild()
    assert await c.at(T + timedelta(hours=1)) == []
    fired = await c.at(T + timedelta(hours=3))
    assert [m.task.title for m in fired if m.task] == ["kept"]
