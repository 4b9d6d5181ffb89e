"""A one-statement unit of work: no BEGIN or COMMIT around it, and never a second statement."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from smarttasks.core.db import (
    SecondStatementError,
    create_engine,
    create_sessionmaker,
    one_statement,
    unit_of_work,
)
from smarttasks.core.outbox import outbox_waker_attached, qualified_name
from smarttasks.tasks.models import Task
from tests.fixtures.amqp import EventSchema, WakeRecorder, write_thing_with_change

pytestmark = pytest.mark.integration


async def _numbers(engine: AsyncEngine, schema: EventSchema) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(schema.applied.c.n).order_by("n"))).scalars())


async def test_its_statement_stands_alone_and_its_commit_wakes_the_relays(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], event_schema: EventSchema
) -> None:
    recorder = WakeRecorder()
    with outbox_waker_attached(engine, recorder):
        async with one_statement(sessions) as session:
            await write_thing_with_change(session, event_schema, uuid.uuid4(), 1)
            # No transaction around it: another connection sees the rows at once.
            assert await _numbers(engine, event_schema) == [1]
            assert recorder.woken == []
        assert recorder.woken == [qualified_name(event_schema.outbox)]


async def test_a_failed_statement_leaves_nothing_and_wakes_nobody(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], event_schema: EventSchema
) -> None:
    taken = uuid.uuid4()
    async with one_statement(sessions) as session:
        await write_thing_with_change(session, event_schema, taken, 1)
    recorder = WakeRecorder()
    with outbox_waker_attached(engine, recorder), pytest.raises(IntegrityError):
        async with one_statement(sessions) as session:
            await write_thing_with_change(session, event_schema, taken, 2)  # the event id is taken
    assert await _numbers(engine, event_schema) == [1]
    assert recorder.woken == []


async def test_a_second_statement_is_refused_before_it_runs(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], event_schema: EventSchema
) -> None:
    with pytest.raises(SecondStatementError, match="second statement"):
        async with one_statement(sessions) as session:
            await write_thing_with_change(session, event_schema, uuid.uuid4(), 1)
            await write_thing_with_change(session, event_schema, uuid.uuid4(), 2)
    assert await _numbers(engine, event_schema) == [1]


async def test_its_connection_serves_transactions_again_afterwards(
    database_url: str, event_schema: EventSchema
) -> None:
    # One pooled connection: every unit below runs on the same server session.
    pooled = create_engine(database_url, pool_size=1)
    sessions = create_sessionmaker(pooled)
    try:
        async with one_statement(sessions) as session:
            pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        # A transactional unit on it rolls back again, and may run many statements.
        with pytest.raises(RuntimeError):
            async with unit_of_work(sessions) as session:
                assert (await session.execute(text("SELECT pg_backend_pid()"))).scalar() == pid
                await write_thing_with_change(session, event_schema, uuid.uuid4(), 1)
                await write_thing_with_change(session, event_schema, uuid.uuid4(), 2)
                raise RuntimeError("the change fails")
        assert await _numbers(pooled, event_schema) == []
        # The next one-statement unit on it may run its statement (the count starts over).
        for n in (3, 4):
            async with one_statement(sessions) as session:
                await write_thing_with_change(session, event_schema, uuid.uuid4(), n)
        async with pooled.connect() as conn:
            assert (await conn.execute(select(func.pg_backend_pid()))).scalar() == pid
        assert await _numbers(pooled, event_schema) == [3, 4]
    finally:
        await pooled.dispose()


async def test_a_flush_of_orm_changes_is_refused(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    with pytest.raises(SecondStatementError, match="flush"):
        async with one_statement(sessions) as session:
            session.add(Task(id=uuid.uuid4(), title="never written"))
            await session.flush()
