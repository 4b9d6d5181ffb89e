"""Event triggers and match clauses, through the engine's task-event handler on real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine import testing
from smarttasks.automation.engine.consumer import TaskEventConsumer, task_event_consumer
from smarttasks.automation.engine.status import (
    DatabaseStatusSink,
    MemoryStatusSink,
    StatusFlusher,
    StatusTracker,
)
from smarttasks.automation.engine.testing import Tasks, deliver, index, outbox_messages, rule
from smarttasks.automation.rules.compiler import CompiledRule
from smarttasks.core.db import unit_of_work
from smarttasks.core.events import NotificationRequested
from smarttasks.core.messaging.envelope import Envelope

pytestmark = pytest.mark.integration

EMAIL = {"notify": {"channel": "email", "to": ["assignee", "owner", "lead@example.com"]}}
# Transactions open at once in the totals test: fewer than the test pool's connections, and
# enough that random shards (16) would very likely put two of them on the same row.
OPEN_AT_ONCE = 9


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


class Harness:
    """One engine consumer over a fixed set of rules, and what it requested."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *rules: CompiledRule) -> None:
        self.sessions = sessions
        self.tracker = StatusTracker()
        self.consumer = TaskEventConsumer(index(*rules), tracker=self.tracker)
        self.tasks = Tasks()

    async def send(self, *events: Any) -> list[NotificationRequested]:
        await deliver(self.sessions, self.consumer, *events)
        return await outbox_messages(self.sessions)


def spec(event: str, **extra: Any) -> dict[str, Any]:
    trigger = {"event": event, **extra.pop("trigger", {})}
    return {"trigger": trigger, "actions": [EMAIL], **extra}


async def test_task_created_fires_once_even_when_the_event_is_redelivered(
    db: async_sessionmaker[AsyncSession],
) -> None:
    created = rule(spec("TaskCreated"))
    h = Harness(db, created)
    event = h.tasks.created(title="Write the report")
    first = await h.send(event)
    again = await h.send(event)
    assert len(first) == 1
    assert again == first
    message = first[0]
    assert message.rule.uid == created.uid
    assert message.task is not None and message.task.title == "Write the report"
    assert message.dedup_key == f"{created.uid}/{event.data.id}/TaskCreated/{event.id}/0"


async def test_recipients_keep_roles_as_user_ids_and_addresses_as_written(
    db: async_sessionmaker[AsyncSession],
) -> None:
    h = Harness(db, rule(spec("TaskCreated")))
    assignee = uuid.uuid4()
    [message] = await h.send(h.tasks.created(assignee_id=assignee))
    assert message.channel == "email"
    owner = f"user:{h.tasks.owner_id}"
    assert message.recipients == [f"user:{assignee}", owner, "lead@example.com"]
    [unassigned] = (await h.send(h.tasks.created()))[1:]
    assert unassigned.recipients == [owner, "lead@example.com"]


async def test_webhook_actions_carry_url_and_secret_reference(
    db: async_sessionmaker[AsyncSession],
) -> None:
    hook = {
        "notify": {
            "channel": "webhook",
            "url": "https://hooks.example.com/smarttasks",
            "secretRef": {"name": "hook-secret", "key": "signing-key"},
        }
    }
    h = Harness(db, rule({"trigger": {"event": "TaskCreated"}, "actions": [EMAIL, hook]}))
    email, webhook = await h.send(h.tasks.created())
    assert email.channel == "email"
    assert webhook.channel == "webhook"
    assert webhook.url == "https://hooks.example.com/smarttasks"
    assert webhook.secret_ref == {"name": "hook-secret", "key": "signing-key"}
    assert webhook.id != email.id


async def test_task_updated_fires_for_every_kind_of_update(
    db: async_sessionmaker[AsyncSession],
) -> None:
    h = Harness(db, rule(spec("TaskUpdated")))
    created = h.tasks.created()
    task_id = created.data.id
    messages = await h.send(
        created,
        h.tasks.updated(task_id, title="Renamed"),
        h.tasks.updated(task_id, assignee_id=uuid.uuid4()),
        h.tasks.updated(task_id, status="done"),
    )
    kinds = [m.task.version for m in messages if m.task is not None]
    assert kinds == [2, 3, 4]


async def test_task_updated_with_fields_fires_only_when_one_of_them_changed(
    db: async_sessionmaker[AsyncSession],
) -> None:
    h = Harness(db, rule(spec("TaskUpdated", trigger={"fields": ["status", "priority"]})))
    created = h.tasks.created()
    task_id = created.data.id
    messages = await h.send(
        created,
        h.tasks.updated(task_id, title="Renamed"),
        h.tasks.updated(task_id, priority="high"),
        h.tasks.updated(task_id, description="More words"),
        h.tasks.updated(task_id, status="in_progress"),
    )
    assert [m.task.version for m in messages if m.task] == [3, 5]


async def test_task_assigned_fires_on_assignment_not_on_unassignment(
    db: async_sessionmaker[AsyncSession],
) -> None:
    h = Harness(db, rule(spec("TaskAssigned")))
    created = h.tasks.created()
    task_id = created.data.id
    someone = uuid.uuid4()
    messages = await h.send(
        created,
        h.tasks.updated(task_id, assignee_id=someone),
        h.tasks.updated(task_id, assignee_id=None),
        h.tasks.updated(task_id, title="Renamed"),
    )
    assert len(messages) == 1
    assert f"user:{someone}" in messages[0].recipients


async def test_task_completed_fires_on_completion_only(
    db: async_sessionmaker[AsyncSession],
) -> None:
    h = Harness(db, rule(spec("TaskCompleted")))
    created = h.tasks.created()
    task_id = created.data.id
    messages = await h.send(
        created,
        h.tasks.updated(task_id, status="in_progress"),
        h.tasks.updated(task_id, status="done"),
        h.tasks.updated(task_id, status="cancelled"),
    )
    assert [m.task.status for m in messages if m.task] == ["done"]


async def test_task_deleted_fires_with_the_last_snapshot(
    db: async_sessionmaker[AsyncSession],
) -> None:
    h = Harness(db, rule(spec("TaskDeleted")))
    created = h.tasks.created(title="Old chore")
    messages = await h.send(created, h.tasks.deleted(created.data.id))
    assert len(messages) == 1
    assert messages[0].task is not None and messages[0].task.title == "Old chore"


@pytest.mark.parametrize(
    ("match", "matching", "other"),
    [
        ({"projects": ["apollo"]}, {"project": "apollo"}, {"project": "gemini"}),
        ({"labels": ["customer"]}, {"labels": ["ops", "customer"]}, {"labels": ["ops"]}),
        ({"priorities": ["high", "urgent"]}, {"priority": "urgent"}, {"priority": "normal"}),
        (
            {"condition": 'task.assignee != null && !("muted" in task.labels)'},
            {"assignee_id": uuid.uuid4()},
            {"assignee_id": uuid.uuid4(), "labels": ["muted"]},
        ),
    ],
    ids=["projects", "labels", "priorities", "condition"],
)
async def test_match_clause_selects_tasks(
    db: async_sessionmaker[AsyncSession],
    match: dict[str, Any],
    matching: dict[str, Any],
    other: dict[str, Any],
) -> None:
    h = Harness(db, rule(spec("TaskCreated", match=match)))
    yes = h.tasks.created(title="yes", **matching)
    no = h.tasks.created(title="no", **other)
    messages = await h.send(yes, no)
    assert [m.task.title for m in messages if m.task] == ["yes"]


async def test_match_clauses_are_anded(db: async_sessionmaker[AsyncSession]) -> None:
    match = {"projects": ["apollo"], "priorities": ["high"]}
    h = Harness(db, rule(spec("TaskCreated", match=match)))
    messages = await h.send(
        h.tasks.created(title="both", project="apollo", priority="high"),
        h.tasks.created(title="project only", project="apollo", priority="low"),
        h.tasks.created(title="priority only", project="gemini", priority="high"),
    )
    assert [m.task.title for m in messages if m.task] == ["both"]


async def test_a_rule_does_not_fire_for_events_from_before_it_existed(
    db: async_sessionmaker[AsyncSession],
) -> None:
    tasks = Tasks()
    old_event = tasks.created()
    later = rule(spec("TaskCreated"), created_at=testing.now())
    h = Harness(db, later)
    assert await h.send(old_event) == []
    assert len(await h.send(tasks.created())) == 1


async def test_owned_rules_apply_only_to_their_owners_tasks(
    db: async_sessionmaker[AsyncSession],
) -> None:
    mine = Tasks()
    theirs = Tasks()
    owned = rule(spec("TaskCreated"), labels={"smarttasks.io/owner": str(mine.owner_id)})
    h = Harness(db, owned)
    messages = await h.send(mine.created(title="mine"), theirs.created(title="theirs"))
    assert [m.task.title for m in messages if m.task] == ["mine"]


async def test_throttle_drops_firings_over_max_per_hour_and_counts_them(
    db: async_sessionmaker[AsyncSession],
) -> None:
    throttled = rule(spec("TaskCreated", throttle={"maxPerHour": 2}))
    h = Harness(db, throttled)
    messages = await h.send(*(h.tasks.created() for _ in range(5)))
    assert len(messages) == 2
    sink = MemoryStatusSink()
    await StatusFlusher(db, h.tracker, sink).flush()
    status = sink.statuses[throttled.uid]
    assert (status.fired_count, status.throttled_count) == (2, 3)
    assert status.last_fired_at is not None
    assert status.patch()["throttledCount"] == 3
    rows = await testing.firing_rows(db)
    assert sum(r["throttled"] for r in rows) == 3


async def test_statuses_are_flushed_in_one_batch_for_many_firings(
    db: async_sessionmaker[AsyncSession],
) -> None:
    a, b = rule(spec("TaskCreated")), rule(spec("TaskCreated", match={"projects": ["x"]}))
    h = Harness(db, a, b)
    await h.send(*(h.tasks.created(project="x") for _ in range(10)))
    sink = MemoryStatusSink()
    published = await StatusFlusher(db, h.tracker, sink).flush()
    assert published == 2
    assert sink.batches == [2]
    assert sink.statuses[a.uid].fired_count == 10
    assert sink.statuses[b.uid].fired_count == 10
    assert await StatusFlusher(db, h.tracker, sink).flush() == 0


async def test_a_template_failing_for_a_task_is_reported_as_the_rules_last_error(
    db: async_sessionmaker[AsyncSession],
) -> None:
    fragile = rule(
        {
            "trigger": {"event": "TaskCreated"},
            "actions": [
                {
                    "notify": {
                        "channel": "email",
                        "to": ["owner"],
                        "subject": "Due {{ task.due_at.strftime('%d %B') }}",
                    }
                }
            ],
        }
    )
    h = Harness(db, fragile)
    assert await h.send(h.tasks.created()) == []
    sink = MemoryStatusSink()
    await StatusFlusher(db, h.tracker, sink).flush()
    status = sink.statuses[fragile.uid]
    assert status.fired_count == 0
    assert status.last_error is not None and "subject" in status.last_error
    assert "lastError" in status.patch()


async def test_a_condition_failing_for_a_task_is_reported_as_the_rules_last_error(
    db: async_sessionmaker[AsyncSession],
) -> None:
    # Both compile (they hold for the representative task) and fail for these tasks.
    per_label = rule(spec("TaskCreated", match={"condition": "10 / size(task.labels) > 1"}))
    to_done = rule(spec("TaskUpdated", match={"condition": "changes.status[1] == 'done'"}))
    h = Harness(db, per_label, to_done)
    created = h.tasks.created(labels=[])
    renamed = h.tasks.updated(created.data.id, title="Renamed")

    assert await h.send(created, renamed) == []

    sink = MemoryStatusSink()
    assert await StatusFlusher(db, h.tracker, sink).flush() == 2
    divided, missing = sink.statuses[per_label.uid], sink.statuses[to_done.uid]
    assert divided.fired_count == 0 and missing.fired_count == 0
    assert divided.last_error is not None and "division by zero" in divided.last_error
    assert missing.patch()["lastError"] == "condition failed: no such key 'status'"


async def test_transactions_firing_the_same_rule_do_not_wait_for_each_other(
    db: async_sessionmaker[AsyncSession],
) -> None:
    busy = rule(spec("TaskCreated"))
    h = Harness(db, busy)
    events = [h.tasks.created() for _ in range(OPEN_AT_ONCE)]
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(db()) for _ in events]
        # Each transaction adds to the rule's totals and stays open: none may need a row
        # another one holds (one shared by chance would be waited for until the timeout).
        async with asyncio.timeout(10):
            for session, event in zip(sessions, events, strict=True):
                await h.consumer.handle(session, event)
        for session in sessions:
            await session.commit()
    assert len(await outbox_messages(db)) == OPEN_AT_ONCE
    sink = MemoryStatusSink()
    await StatusFlusher(db, h.tracker, sink).flush()
    assert sink.statuses[busy.uid].fired_count == OPEN_AT_ONCE


async def test_a_batch_of_events_fires_as_the_same_events_one_by_one(
    db: async_sessionmaker[AsyncSession],
) -> None:
    created_rule = rule(spec("TaskCreated"))
    updated_rule = rule(spec("TaskUpdated", trigger={"fields": ["priority"]}))
    h = Harness(db, created_rule, updated_rule)
    a, b = h.tasks.created(), h.tasks.created()
    raised = h.tasks.updated(a.data.id, priority="high")
    renamed = h.tasks.updated(a.data.id, title="Renamed")
    async with unit_of_work(db) as session:
        await h.consumer.handle_batch(session, [a, b, raised, renamed])
    messages = await outbox_messages(db)
    # Redelivered, alone or in a batch: nothing more.
    await h.send(raised)
    async with unit_of_work(db) as session:
        await h.consumer.handle_batch(session, [b, renamed])

    assert await outbox_messages(db) == messages
    assert sorted((m.rule.uid, m.dedup_key.split("/")[3]) for m in messages) == sorted(
        [
            (created_rule.uid, str(a.id)),
            (created_rule.uid, str(b.id)),
            (updated_rule.uid, str(raised.id)),
        ]
    )
    async with db() as session:
        version, title = (
            await session.execute(
                text("SELECT version, snapshot->>'title' FROM automation.tasks WHERE task_id = :t"),
                {"t": a.data.id},
            )
        ).one()
    assert (version, title) == (3, "Renamed")


async def test_the_consumer_definition_takes_task_events_in_envelopes(
    db: async_sessionmaker[AsyncSession],
) -> None:
    h = Harness(db, rule(spec("TaskCreated")))
    definition = task_event_consumer(h.consumer)
    event = h.tasks.created()
    payload = event.model_dump(mode="json")
    route = definition.route("task.created")
    assert route is not None and definition.route("notification.requested") is None
    envelope = Envelope(
        id=event.id,
        routing_key="task.created",
        exchange=definition.exchange,
        event=route.parse(payload),
        payload=payload,
    )
    async with unit_of_work(db) as session:
        await route.handler(session, envelope)
    assert len(await outbox_messages(db)) == 1


async def test_embedded_statuses_are_merged_into_the_rule_documents(
    db: async_sessionmaker[AsyncSession],
) -> None:
    created = rule(spec("TaskCreated"))
    async with unit_of_work(db) as session:
        await session.execute(
            text(
                "INSERT INTO automation.rule_documents (uid, namespace, name, labels, spec, "
                "status, generation, resource_version, created_at, updated_at) VALUES (:uid, "
                "'team-a', :name, '{}', '{}', :status, 1, 1, now(), now())"
            ),
            {
                "uid": created.uid,
                "name": created.name,
                "status": '{"observedGeneration": 1, "conditions": [{"type": "Ready"}]}',
            },
        )
    h = Harness(db, created)
    await h.send(h.tasks.created(), h.tasks.created())
    await StatusFlusher(db, h.tracker, DatabaseStatusSink(db)).flush()
    async with db() as session:
        stored = (
            await session.execute(
                text("SELECT status FROM automation.rule_documents WHERE uid = :uid"),
                {"uid": created.uid},
            )
        ).scalar_one()
    assert stored["firedCount"] == 2
    assert stored["throttledCount"] == 0
    assert "lastFiredAt" in stored
    assert stored["conditions"] == [{"type": "Ready"}]
