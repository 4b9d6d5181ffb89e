"""Pooled connections the server closed unseen: pinged when idle, else replaced after a failure;
what an HTTP caller sees when the database connection fails or the pool is exhausted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from smarttasks.core.db import create_engine
from smarttasks.core.http import create_app

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


def _app(pooled: AsyncEngine, *, holding: asyncio.Event | None = None,
         release: asyncio.Event | None = None) -> FastAPI:  # fmt: skip
    """One endpoint on `pooled`; with events, it tells when it holds its connection and
    keeps it until released."""
    router = APIRouter()

    @router.get("/pid")
    async def pid() -> dict[str, int]:
        async with pooled.connect() as conn:
            if holding is not None and release is not None:
                holding.set()
                await release.wait()
            return {"pid": int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())}

    return create_app(service="pool", title="pool", routers=[router])


async def test_a_request_on_a_broken_connection_gets_503_and_the_next_one_succeeds(
    database_url: str, engine: AsyncEngine
) -> None:
    died = _pool_whose_connection_died(database_url, engine, ping_after_idle=3600.0)
    async with died as (pooled, _):
        transport = httpx.ASGITransport(app=_app(pooled))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            failed = await client.get("/pid")
            assert failed.status_code == 503, failed.text
            assert failed.headers["retry-after"] == "1"
            assert "try again" in failed.json()["detail"]
            assert (await client.get("/pid")).status_code == 200


async def test_a_request_that_finds_the_pool_exhausted_gets_503(database_url: str) -> None:
    pooled = create_engine(database_url, pool_size=1, pool_timeout=0.2)
    holding, release = asyncio.Event(), asyncio.Event()
    try:
        app = _app(pooled, holding=holding, release=release)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            holder = asyncio.create_task(client.get("/pid"))
            await holding.wait()  # the pool's one connection is taken
            busy = await client.get("/pid")
            assert busy.status_code == 503, busy.text
            assert "busy" in busy.json()["detail"]
            release.set()
            assert (await holder).status_code == 200
    finally:
        await pooled.dispose()
