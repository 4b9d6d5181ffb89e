"""Pooled connections the server closed unseen: pinged when idle, else replaced after a failure."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from smarttasks.core.db import create_engine

pytestmark = pytest.mark.integration


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(engine: AsyncEngine, pid: int) -> None:
    """End a server process as a restart or an idle timeout would, and wait until it has."""
    async with engine.connect() as conn:
        ended = await conn.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
        assert ended.scalar_one() is True


@contextlib.asynccontextmanager
async def _pool_whose_connection_died(
    database_url: str, engine: AsyncEngine, *, ping_after_idle: float
) -> AsyncIterator[tuple[AsyncEngine, int]]:
    """A one-connection pool whose connection the server has closed, and its old pid."""
    pooled = create_engine(database_url, pool_size=1, ping_after_idle=ping_after_idle)
    try:
        first = await _backend_pid(pooled)
        await _terminate(engine, first)
        yield pooled, first
    finally:
        await pooled.dispose()


async def test_an_idle_connection_closed_by_the_server_is_pinged_and_replaced(
    database_url: str, engine: AsyncEngine
) -> None:
    async with _pool_whose_connection_died(database_url, engine, ping_after_idle=0.0) as (
        pooled,
        first,
    ):
        # The dead connection fails its ping at checkout; the caller gets a new one.
        assert await _backend_pid(pooled) != first


async def test_a_connection_back_in_use_at_once_is_not_pinged_and_fails_once(
    database_url: str, engine: AsyncEngine
) -> None:
    async with _pool_whose_connection_died(database_url, engine, ping_after_idle=3600.0) as (
        pooled,
        first,
    ):
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(pooled)
        assert failed.value.connection_invalidated
        # The failure invalidated the pool: the next unit of work reconnects.
        assert await _backend_pid(pooled) != first
