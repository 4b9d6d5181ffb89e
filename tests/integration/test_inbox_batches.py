"""`apply_many`: consecutive messages of a route with a batch handler go to it in one call."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from smarttasks.core.messaging import Envelope, Outcome
from smarttasks.core.messaging.inbox import apply_many
from smarttasks.core.messaging.routing import Consumer
from tests.fixtures.amqp import EventSchema

pytestmark = pytest.mark.integration


def envelope(routing_key: str, event_id: uuid.UUID | None = None) -> Envelope[Any]:
    event_id = event_id or uuid.uuid4()
    payload = {"id": str(event_id)}
    return Envelope(
        id=event_id, routing_key=routing_key, exchange="x", event=payload, payload=payload
    )


async def test_runs_of_a_batchable_route_are_handled_in_one_call_in_order(
    engine: AsyncEngine, event_schema: EventSchema
) -> None:
    calls: list[tuple[str, list[str]]] = []

    async def one(_session: AsyncSession, message: Envelope[Any]) -> None:
        calls.append(("one", [message.routing_key]))

    async def many(_session: AsyncSession, messages: Sequence[Envelope[Any]]) -> None:
        calls.append(("many", [m.routing_key for m in messages]))

    consumer = Consumer("batches", exchange="x", inbox=event_schema.inbox)
    consumer.add("task.*", one, batch=many)
    consumer.add("other.*", one)
    [tasks, other] = consumer.routes
    repeated = uuid.uuid4()
    items = [
        (tasks, envelope("task.a", repeated)),
        (tasks, envelope("task.b")),
        (tasks, envelope("task.a", repeated)),  # redelivered within the batch
        (other, envelope("other.c")),
        (other, envelope("other.d")),
        (tasks, envelope("task.e")),
    ]
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    outcomes = await apply_many(sessions, consumer, items)
    assert outcomes == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.APPLIED,
    ]
    # The duplicate is left out; a route without a batch handler and a run of one go
    # message by message.
    assert calls == [
        ("many", ["task.a", "task.b"]),
        ("one", ["other.c"]),
        ("one", ["other.d"]),
        ("one", ["task.e"]),
    ]
    async with engine.connect() as conn:
        recorded = await conn.scalar(select(func.count()).select_from(event_schema.inbox))
    assert recorded == 5
    # An event applied by an earlier batch is a duplicate in a later one.
    again = await apply_many(sessions, consumer, [(tasks, envelope("task.a", repeated)),
                                                  (tasks, envelope("task.f"))])  # fmt: skip
    assert again == [Outcome.DUPLICATE, Outcome.APPLIED]
    assert calls[-1] == ("one", ["task.f"])


async def test_a_failing_batch_handler_rolls_back_every_inbox_row(
    engine: AsyncEngine, event_schema: EventSchema
) -> None:
    async def one(_session: AsyncSession, _message: Envelope[Any]) -> None:
        return None

    async def many(_session: AsyncSession, _messages: Sequence[Envelope[Any]]) -> None:
        raise RuntimeError("boom")

    consumer = Consumer("batches", exchange="x", inbox=event_schema.inbox)
    consumer.add("task.*", one, batch=many)
    [route] = consumer.routes
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    with pytest.raises(RuntimeError, match="boom"):
        await apply_many(sessions, consumer, [(route, envelope("task.a")) for _ in range(3)])
    async with engine.connect() as conn:
        recorded = await conn.scalar(select(func.count()).select_from(event_schema.inbox))
    assert recorded == 0
