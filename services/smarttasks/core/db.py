"""SQLAlchemy 2 async engine on psycopg 3, and one unit of work per request or message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# Constraint names that Alembic can diff and that read well in error messages.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def schema_metadata(schema: str) -> MetaData:
    """Metadata for one service's tables, all living in that service's own PostgreSQL schema."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def async_url(url: str) -> str:
    """Normalise any PostgreSQL URL to the psycopg 3 driver SQLAlchemy should use."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_conninfo(engine: AsyncEngine) -> str:
    """libpq connection string of the engine's database, for a dedicated psycopg connection
    (LISTEN, NOTIFY)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    """An async engine whose pool survives database restarts (pre-ping, recycling).

    At most `pool_size` connections, each kept once opened: an overflow beyond the pool
    would be closed on its return and opened again by the next burst, and a new
    PostgreSQL connection (a forked backend, authentication, cold caches, statements not
    yet prepared) costs many times the statement it serves.
    """
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=1800,
        **kwargs,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def unit_of_work(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Commit when the block succeeds, roll back when it raises."""
    async with sessions() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


async def ping(engine: AsyncEngine) -> None:
    """Raise if the database does not answer; used by `/readyz`."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with unit_of_work(request.app.state.sessions) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a 2xx means committed.
SessionDep = Annotated[AsyncSession, Depends(_request_session, scope="function")]
