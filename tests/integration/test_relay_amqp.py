"""The outbox relay against the real RabbitMQ and PostgreSQL: order, exactly-once, outages."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from smarttasks.core.auth import Principal
from smarttasks.core.db import unit_of_work
from smarttasks.core.events import TaskEvent, TaskEventType
from smarttasks.core.messaging import (
    AmqpPublisher,
    ConsumerRunner,
    Envelope,
    OutboxRelay,
    Outcome,
)
from smarttasks.core.messaging.wakeup import notifying_relays
from smarttasks.tasks import service as tasks_service
from smarttasks.tasks.models import outbox as tasks_outbox
from smarttasks.tasks.schemas import TaskCreate, TaskPatch, TaskStatus
from tests.fixtures.amqp import (
    EventSchema,
    RabbitNode,
    SettlementLog,
    consuming,
    insert_events,
    messaging_settings,
    recording_handler,
    relaying,
    spawn_relay,
    stop_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def applied_in_order(
    engine: AsyncEngine, schema: EventSchema, consumer: str
) -> dict[uuid.UUID, list[int]]:
    """Per aggregate, the `n` of each applied event in the order the consumer applied them."""
    per_aggregate: dict[uuid.UUID, list[int]] = defaultdict(list)
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(schema.applied.c.aggregate_id, schema.applied.c.n)
            .where(schema.applied.c.consumer == consumer)
            .order_by(schema.applied.c.id)
        )
        for aggregate_id, n in rows:
            per_aggregate[aggregate_id].append(n)
    return per_aggregate


async def count_rows(engine: AsyncEngine, schema: EventSchema, consumer: str) -> tuple[int, int]:
    """(applied rows, distinct applied event ids) of a consumer."""
    async with engine.connect() as conn:
        total, distinct = (
            await conn.execute(
                select(func.count(), func.count(schema.applied.c.event_id.distinct())).where(
                    schema.applied.c.consumer == consumer
                )
            )
        ).one()
    return int(total), int(distinct)


async def test_task_changes_reach_a_consumer_once_each_in_order(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    database_url: str,
    amqp_url: str,
    event_schema: EventSchema,
) -> None:
    name = unique("tasks-feed")
    consumer = event_schema.consumer(name)

    @consumer.on("task.*", TaskEvent)
    async def record(session: AsyncSession, message: Envelope[TaskEvent]) -> None:
        await session.execute(
            event_schema.applied.insert().values(
                consumer=name,
                event_id=message.id,
                aggregate_id=message.event.data.id,
                n=message.event.data.version,
                routing_key=message.routing_key,
            )
        )

    log = SettlementLog()
    settings = messaging_settings(database_url, amqp_url)
    # An idle relay sleeps an hour: only the producer's NOTIFY, sent after each commit as
    # the tasks service does, can wake it in time.
    relay = OutboxRelay(
        engine, AmqpPublisher(amqp_url), outboxes=["tasks.outbox"], idle_seconds=3600
    )
    owner = Principal(user_id=uuid.uuid4(), email="owner@example.com")
    assignee = uuid.uuid4()

    runner = ConsumerRunner(consumer, engine=engine, settings=settings, on_settled=log)
    async with notifying_relays(engine), consuming(runner), relaying(relay):
        async with asyncio.timeout(30):
            await relay.listening.wait()
        task_ids = []
        for title in ("alpha", "beta", "gamma"):
            async with unit_of_work(sessions) as session:
                created = await tasks_service.create_task(
                    session, data=TaskCreate(title=title), principal=owner
                )
                task_ids.append(created.id)
        patches = [
            TaskPatch(title="renamed"),
            TaskPatch(assignee_id=assignee),
            TaskPatch(status=TaskStatus.DONE),
        ]
        for patch in patches:
            for task_id in task_ids:
                async with unit_of_work(sessions) as session:
                    await tasks_service.update_task(
                        session, task_id=task_id, patch=patch, principal=owner, if_match=None
                    )
        async with engine.connect() as conn:
            expected = set(
                await conn.scalars(
                    select(tasks_outbox.c.event_id).where(tasks_outbox.c.aggregate_id.in_(task_ids))
                )
            )
        assert len(expected) == 12
        await log.wait_until(lambda: expected <= log.applied, timeout=30)

    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    event_schema.applied.c.aggregate_id,
                    event_schema.applied.c.n,
                    event_schema.applied.c.routing_key,
                )
                .where(event_schema.applied.c.aggregate_id.in_(task_ids))
                .order_by(event_schema.applied.c.id)
            )
        ).all()
    assert len(rows) == 12  # exactly one application per change
    for task_id in task_ids:
        mine = [(row.n, row.routing_key) for row in rows if row.aggregate_id == task_id]
        assert mine == [
            (1, TaskEventType.CREATED.value),
            (2, TaskEventType.UPDATED.value),
            (3, TaskEventType.ASSIGNED.value),
            (4, TaskEventType.COMPLETED.value),
        ]
    assert log.counts[Outcome.DUPLICATE] == 0


async def test_several_relays_keep_the_order_of_each_aggregate(
    engine: AsyncEngine, database_url: str, amqp_url: str, event_schema: EventSchema
) -> None:
    name = unique("ordered")
    consumer = event_schema.consumer(name)
    consumer.add("ordered.#", recording_handler(event_schema, name))
    aggregates = [uuid.uuid4() for _ in range(20)]
    events = [(aggregate, n) for n in range(40) for aggregate in aggregates]
    log = SettlementLog()
    settings = messaging_settings(database_url, amqp_url, consumer_prefetch=200)
    relays = [
        OutboxRelay(
            engine, AmqpPublisher(amqp_url), outboxes=[event_schema.outbox_name], batch_size=50
        )
        for _ in range(3)
    ]

    runner = ConsumerRunner(consumer, engine=engine, settings=settings, on_settled=log)
    async with consuming(runner), relaying(relays[0]), relaying(relays[1]), relaying(relays[2]):
        ids = await insert_events(
            engine, event_schema, events, routing_key="ordered.changed", per_transaction=40
        )
        await log.wait_until(lambda: len(log.applied) == len(ids), timeout=120)

    order = await applied_in_order(engine, event_schema, name)
    assert {aggregate: order[aggregate] for aggregate in aggregates} == {
        aggregate: list(range(40)) for aggregate in aggregates
    }
    assert await count_rows(engine, event_schema, name) == (len(ids), len(ids))


async def test_relay_killed_mid_batch_loses_nothing_and_duplicates_are_absorbed(
    engine: AsyncEngine,
    database_url: str,
    amqp_url: str,
    event_schema: EventSchema,
    tmp_path: Path,
) -> None:
    name = unique("kill9")
    consumer = event_schema.consumer(name)
    record = recording_handler(event_schema, name)
    published_but_unmarked = asyncio.Event()
    outbox = event_schema.outbox

    async def record_and_watch(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
        await record(session, message)
        # Only events of the second wave: the first one was delivered and marked completely.
        if not published_but_unmarked.is_set() and message.event["n"] >= 10:
            sent_at = await session.scalar(
                select(outbox.c.sent_at).where(outbox.c.event_id == message.id)
            )
            if sent_at is None:  # the relay's batch is in flight: published, not yet marked
                published_but_unmarked.set()

    consumer.add("kill9.#", record_and_watch)
    aggregates = [uuid.uuid4() for _ in range(25)]
    events = [(aggregate, n) for n in range(80) for aggregate in aggregates]
    log = SettlementLog()
    # One message per transaction: the test must see a message while the relay's batch is
    # published but not yet marked, a window a consumer applying batches reaches too late.
    settings = messaging_settings(
        database_url, amqp_url, consumer_prefetch=200, consumer_batch_size=1
    )

    def start_relay() -> subprocess.Popen[bytes]:
        return spawn_relay(
            database_url=database_url,
            amqp_url=amqp_url,
            outboxes=[event_schema.outbox_name],
            log_file=tmp_path / "relay.log",
            batch_size=500,
        )

    runner = ConsumerRunner(consumer, engine=engine, settings=settings, on_settled=log)
    async with consuming(runner):
        first = start_relay()
        try:
            first_wave = await insert_events(
                engine, event_schema, events[:250], routing_key="kill9.changed"
            )
            await log.wait_until(lambda: len(log.applied) == len(first_wave), timeout=60)
            # One commit: the relay then takes full batches of 500, and publishing one takes
            # long enough for the consumer to see its first messages before they are marked.
            second_wave = await insert_events(
                engine,
                event_schema,
                events[250:],
                routing_key="kill9.changed",
                per_transaction=len(events),
            )
            async with asyncio.timeout(60):
                await published_but_unmarked.wait()
            os.kill(first.pid, signal.SIGKILL)
            assert await asyncio.to_thread(first.wait, 30) == -signal.SIGKILL
        finally:
            stop_process(first)
        ids = first_wave + second_wave
        async with engine.connect() as conn:
            left = await conn.scalar(
                select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
            )
        assert 0 < (left or 0) <= len(second_wave)

        second = start_relay()
        try:
            await log.wait_until(lambda: len(log.applied) == len(ids), timeout=180)
        finally:
            exit_status = await asyncio.to_thread(stop_process, second)
        assert exit_status == 0, (tmp_path / "relay.log").read_text()[-3000:]

    # Whether the killed batch reached the broker before the kill is a race; either way every
    # event is applied exactly once, and any second copy was absorbed by the inbox.
    assert await count_rows(engine, event_schema, name) == (len(ids), len(ids))
    assert log.applied == set(ids)
    order = await applied_in_order(engine, event_schema, name)
    assert all(order[aggregate] == list(range(80)) for aggregate in aggregates)


@pytest.mark.slow
async def test_broker_restart_in_a_stream_of_10000_events_loses_nothing(
    engine: AsyncEngine,
    database_url: str,
    amqp_url: str,
    rabbitmq: RabbitNode,
    event_schema: EventSchema,
    tmp_path: Path,
) -> None:
    name = unique("restart")
    consumer = event_schema.consumer(name)
    consumer.add("restart.#", recording_handler(event_schema, name))
    aggregates = [uuid.uuid4() for _ in range(100)]
    events = [(aggregate, n) for n in range(100) for aggregate in aggregates]
    log = SettlementLog()
    settings = messaging_settings(database_url, amqp_url, consumer_prefetch=200)

    runner = ConsumerRunner(consumer, engine=engine, settings=settings, on_settled=log)
    async with consuming(runner):
        relay = spawn_relay(
            database_url=database_url,
            amqp_url=amqp_url,
            outboxes=[event_schema.outbox_name],
            log_file=tmp_path / "relay.log",
        )
        producer = asyncio.create_task(
            insert_events(
                engine, event_schema, events, routing_key="restart.changed", per_transaction=50
            )
        )
        try:
            await log.wait_until(lambda: len(log.applied) >= 2500, timeout=120)
            await asyncio.to_thread(rabbitmq.stop)
            applied_while_down = len(log.applied)
            await asyncio.to_thread(rabbitmq.start)
            ids = await asyncio.wait_for(producer, timeout=120)
            await log.wait_until(lambda: len(log.applied) == len(ids), timeout=240)
        finally:
            producer.cancel()
            if not rabbitmq.running:
                await asyncio.to_thread(rabbitmq.start)
            exit_status = await asyncio.to_thread(stop_process, relay)
        assert exit_status == 0, (tmp_path / "relay.log").read_text()[-3000:]

    assert applied_while_down < len(ids)  # the restart really was in the middle of the stream
    assert await count_rows(engine, event_schema, name) == (len(ids), len(ids))
    async with engine.connect() as conn:
        inbox = await conn.scalar(
            select(func.count())
            .select_from(event_schema.inbox)
            .where(event_schema.inbox.c.consumer == name)
        )
    assert inbox == len(ids)
