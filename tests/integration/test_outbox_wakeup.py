"""Relays are woken after a producer's commit, never by an uncommitted or rolled-back write."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from smarttasks.core.db import libpq_conninfo, unit_of_work
from smarttasks.core.messaging.wakeup import OutboxNotifier, notifying_relays
from smarttasks.core.outbox import (
    OUTBOX_CHANNEL,
    add_to_outbox,
    outbox_waker_attached,
    qualified_name,
)
from tests.fixtures.amqp import EventSchema, Thing, WakeRecorder, write_thing_with_change

pytestmark = pytest.mark.integration


async def _add(session: AsyncSession, schema: EventSchema, n: int) -> None:
    thing = Thing(id=uuid.uuid4(), n=n)
    await add_to_outbox(
        session,
        schema.outbox,
        event_id=thing.id,
        exchange="smarttasks.events",
        routing_key="thing.changed",
        message=thing,
        aggregate_id=thing.id,
    )


async def test_a_commit_wakes_once_per_outbox_and_a_rollback_does_not(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], event_schema: EventSchema
) -> None:
    recorder = WakeRecorder()
    name = qualified_name(event_schema.outbox)
    with outbox_waker_attached(engine, recorder):
        async with sessions() as session:
            await _add(session, event_schema, 1)
            await _add(session, event_schema, 2)
            assert recorder.woken == []  # not before the commit
            await session.commit()
        assert recorder.woken == [name]

        with pytest.raises(RuntimeError):
            async with unit_of_work(sessions) as session:
                await _add(session, event_schema, 3)
                raise RuntimeError("the change fails")
        # The rolled-back write is forgotten: neither this nor a later commit reports it.
        async with unit_of_work(sessions) as session:
            await session.execute(event_schema.applied.select())
        assert recorder.woken == [name]
    # Detached: commits no longer reach it.
    async with unit_of_work(sessions) as session:
        await _add(session, event_schema, 4)
    assert recorder.woken == [name]


async def test_the_notifier_sends_the_outbox_name_after_commit(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], event_schema: EventSchema
) -> None:
    name = qualified_name(event_schema.outbox)
    async with await psycopg.AsyncConnection.connect(
        libpq_conninfo(engine), autocommit=True
    ) as listener:
        await listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        async with notifying_relays(engine) as notifier:
            # Many commits at once: they coalesce into fewer notifications, never none.
            async def commit(n: int) -> None:
                async with unit_of_work(sessions) as session:
                    await _add(session, event_schema, n)

            await asyncio.gather(*(commit(n) for n in range(20)))
            async with asyncio.timeout(10):
                async for notify in listener.notifies(stop_after=1):
                    assert notify.payload == name
            assert 1 <= notifier.sent <= 20


async def test_a_busy_process_sends_at_most_one_notification_per_interval(
    engine: AsyncEngine,
) -> None:
    interval = 0.05
    async with await psycopg.AsyncConnection.connect(
        libpq_conninfo(engine), autocommit=True
    ) as listener:
        await listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        notifier = OutboxNotifier(libpq_conninfo(engine), interval=interval)
        async with notifier.running():
            started = time.monotonic()
            for n in range(150):
                notifier.wake("busy.outbox" if n < 149 else "busy.last")
                await asyncio.sleep(0.002)  # a producer committing about 500 times a second
            # The last wake is never lost, only sent with the next notification.
            async with asyncio.timeout(10):
                async for notify in listener.notifies():
                    if notify.payload == "busy.last":
                        break
            elapsed = time.monotonic() - started
        assert 2 <= notifier.sent <= elapsed / interval + 2, (notifier.sent, elapsed)


async def test_a_change_written_along_with_its_event_stands_or_falls_with_it(
    sessions: async_sessionmaker[AsyncSession], event_schema: EventSchema
) -> None:
    applied = event_schema.applied

    async def write(event_id: uuid.UUID, n: int) -> None:
        async with unit_of_work(sessions) as session:
            await write_thing_with_change(session, event_schema, event_id, n)

    first = uuid.uuid4()
    await write(first, 1)
    # The outbox row fails (its event id is taken): the change it reports is not made.
    with pytest.raises(IntegrityError):
        await write(first, 2)
    async with unit_of_work(sessions) as session:
        changes = (await session.execute(select(applied.c.n))).scalars().all()
        events = (await session.execute(select(event_schema.outbox.c.payload))).scalars().all()
    assert changes == [1]
    assert events == [{"id": str(first), "n": 1}]
