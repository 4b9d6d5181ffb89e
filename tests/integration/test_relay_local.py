"""Embedded mode: the relay hands outbox rows to in-process consumers, as the broker would."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from smarttasks.core.messaging import (
    Envelope,
    LocalRelay,
    Outcome,
    Settlement,
    SettlementHook,
    UnprocessableMessage,
)
from tests.fixtures.amqp import (
    EventSchema,
    SettlementLog,
    insert_events,
    messaging_settings,
    recording_handler,
)

pytestmark = [pytest.mark.integration]

TIMEOUT = 30.0


def local_relay(
    engine: AsyncEngine,
    database_url: str,
    schema: EventSchema,
    consumers: list[Any],
    log: SettlementHook,
    **overrides: Any,
) -> LocalRelay:
    settings = messaging_settings(database_url, **overrides)
    return LocalRelay(
        engine, consumers, outboxes=[schema.outbox_name], settings=settings, on_settled=log
    )


async def applied_rows(engine: AsyncEngine, schema: EventSchema, consumer: str) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            select(schema.applied.c.event_id, schema.applied.c.aggregate_id, schema.applied.c.n)
            .where(schema.applied.c.consumer == consumer)
            .order_by(schema.applied.c.id)
        )
        return list(result.all())


async def unsent(engine: AsyncEngine, schema: EventSchema) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(schema.outbox).where(schema.outbox.c.sent_at.is_(None))
        )
        return int(count or 0)


async def test_every_consumer_applies_each_event_once_in_order_per_aggregate(
    engine: AsyncEngine, database_url: str, event_schema: EventSchema
) -> None:
    first, second = event_schema.consumer("local-a"), event_schema.consumer("local-b")
    first.add("thing.#", recording_handler(event_schema, "local-a"))
    second.add("thing.changed", recording_handler(event_schema, "local-b"))
    aggregates = [uuid.uuid4() for _ in range(5)]
    events = [(aggregate, n) for n in range(20) for aggregate in aggregates]
    log = SettlementLog()
    relay = local_relay(engine, database_url, event_schema, [first, second], log)

    async with relay.running():
        ids = await insert_events(
            engine, event_schema, events, routing_key="thing.changed", per_transaction=7
        )
        await log.wait_until(lambda: log.counts[Outcome.APPLIED] >= 2 * len(ids), timeout=TIMEOUT)

    for consumer in ("local-a", "local-b"):
        rows = await applied_rows(engine, event_schema, consumer)
        assert sorted(row.event_id for row in rows) == sorted(ids)
        for aggregate in aggregates:
            assert [row.n for row in rows if row.aggregate_id == aggregate] == list(range(20))
    assert await unsent(engine, event_schema) == 0


async def test_a_failing_handler_is_retried_then_dead_lettered_without_blocking_others(
    engine: AsyncEngine, database_url: str, event_schema: EventSchema
) -> None:
    healthy, failing = event_schema.consumer("healthy"), event_schema.consumer("failing")
    healthy.add("thing.*", recording_handler(event_schema, "healthy"))
    calls: list[int] = []

    async def always_fails(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
        calls.append(message.attempt)
        raise RuntimeError("downstream said no")

    failing.add("thing.*", always_fails)
    log = SettlementLog()
    relay = local_relay(engine, database_url, event_schema, [healthy, failing], log)

    async with relay.running():
        [event_id] = await insert_events(
            engine, event_schema, [(uuid.uuid4(), 1)], routing_key="thing.created"
        )
        await log.wait_until(lambda: log.counts[Outcome.DEAD_LETTERED] == 1, timeout=TIMEOUT)

    # Three attempts (max_attempts=3), numbered, while the healthy consumer applied it once.
    assert calls == [1, 2, 3]
    assert [row.event_id for row in await applied_rows(engine, event_schema, "healthy")] == [
        event_id
    ]
    async with engine.connect() as conn:
        dead = (await conn.execute(select(event_schema.dead_letters))).one()
    assert (dead.consumer, dead.event_id, dead.reason, dead.attempts) == (
        "failing",
        event_id,
        "max_attempts",
        3,
    )
    assert "RuntimeError: downstream said no" in dead.error
    assert dead.payload["id"] == str(event_id)
    # Delivered for good (dead-lettered counts as settled), with the failed rounds counted.
    async with engine.connect() as conn:
        row = (await conn.execute(select(event_schema.outbox))).one()
    assert row.sent_at is not None
    assert row.attempts == 2


async def test_later_events_of_an_aggregate_wait_for_a_retried_one(
    engine: AsyncEngine, database_url: str, event_schema: EventSchema
) -> None:
    consumer = event_schema.consumer("ordered")
    record = recording_handler(event_schema, "ordered")
    failures = {"left": 1}

    async def flaky_first(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
        if message.event["n"] == 0 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("try again")
        await record(session, message)

    consumer.add("thing.*", flaky_first)
    aggregate, other = uuid.uuid4(), uuid.uuid4()
    log = SettlementLog()
    relay = local_relay(engine, database_url, event_schema, [consumer], log)

    async with relay.running():
        await insert_events(
            engine,
            event_schema,
            [(aggregate, 0), (other, 0), (aggregate, 1), (aggregate, 2)],
            routing_key="thing.changed",
            per_transaction=4,
        )
        await log.wait_until(lambda: log.counts[Outcome.APPLIED] == 4, timeout=TIMEOUT)

    rows = await applied_rows(engine, event_schema, "ordered")
    assert [row.n for row in rows if row.aggregate_id == aggregate] == [0, 1, 2]
    assert [row.n for row in rows if row.aggregate_id == other] == [0]
    assert [s.attempt for s in log.items if s.outcome is Outcome.RETRIED] == [1]


async def test_invalid_and_refused_events_are_dead_lettered_at_once(
    engine: AsyncEngine, database_url: str, event_schema: EventSchema
) -> None:
    from pydantic import BaseModel

    class Strict(BaseModel):
        id: uuid.UUID
        required_field: str

    consumer = event_schema.consumer("picky")

    async def refuse(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
        raise UnprocessableMessage("this can never work")

    async def accept(session: AsyncSession, message: Envelope[Strict]) -> None:
        raise AssertionError("an invalid event reached the handler")

    consumer.add("thing.refused", refuse)
    consumer.add("thing.strict", accept, schema=Strict)
    log = SettlementLog()
    relay = local_relay(engine, database_url, event_schema, [consumer], log)

    async with relay.running():
        await insert_events(engine, event_schema, [(None, 1)], routing_key="thing.refused")
        await insert_events(engine, event_schema, [(None, 2)], routing_key="thing.strict")
        await log.wait_until(lambda: log.counts[Outcome.DEAD_LETTERED] == 2, timeout=TIMEOUT)

    dead_letters = event_schema.dead_letters
    async with engine.connect() as conn:
        rows = await conn.execute(select(dead_letters.c.routing_key, dead_letters.c.reason))
        reasons = {row.routing_key: row.reason for row in rows}
    assert reasons == {"thing.refused": "rejected", "thing.strict": "invalid"}
    assert log.counts[Outcome.RETRIED] == 0


async def test_a_redelivered_row_is_absorbed_by_the_inbox(
    engine: AsyncEngine, database_url: str, event_schema: EventSchema
) -> None:
    """The relay dies after the consumer committed but before the row was marked sent."""
    consumer = event_schema.consumer("crashy")
    consumer.add("thing.*", recording_handler(event_schema, "crashy"))
    log = SettlementLog()

    def crash_after_commit(settlement: Settlement) -> None:
        log(settlement)
        if settlement.outcome is Outcome.APPLIED:
            task.cancel()  # the relay's claim transaction rolls back: the row stays unsent

    first = local_relay(engine, database_url, event_schema, [consumer], crash_after_commit)
    task = asyncio.create_task(first.run())
    [event_id] = await insert_events(
        engine, event_schema, [(uuid.uuid4(), 1)], routing_key="thing.created"
    )
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(TIMEOUT):
            await task
    assert log.counts[Outcome.APPLIED] == 1
    assert await unsent(engine, event_schema) == 1

    second = local_relay(engine, database_url, event_schema, [consumer], log)
    async with second.running():
        await log.wait_until(lambda: log.counts[Outcome.DUPLICATE] == 1, timeout=TIMEOUT)

    assert [row.event_id for row in await applied_rows(engine, event_schema, "crashy")] == [
        event_id
    ]
    assert log.counts[Outcome.APPLIED] == 1
    assert await unsent(engine, event_schema) == 0


async def test_stopping_is_prompt_and_sent_rows_are_pruned(
    engine: AsyncEngine, database_url: str, event_schema: EventSchema
) -> None:
    consumer = event_schema.consumer("pruned")
    consumer.add("thing.*", recording_handler(event_schema, "pruned"))
    log = SettlementLog()
    relay = local_relay(
        engine, database_url, event_schema, [consumer], log, relay_prune_after_seconds=0
    )
    task = asyncio.create_task(relay.run())
    await insert_events(engine, event_schema, [(None, n) for n in range(10)], routing_key="thing.x")
    await log.wait_until(lambda: log.counts[Outcome.APPLIED] == 10, timeout=TIMEOUT)

    relay.stop()  # the batch in hand is finished (marked sent), then run() returns
    async with asyncio.timeout(5):
        await task
    assert await unsent(engine, event_schema) == 0
    assert await relay.relay.prune(event_schema.outbox_name) == 10
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(event_schema.outbox)) == 0
