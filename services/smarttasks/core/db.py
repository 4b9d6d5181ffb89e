"""SQLAlchemy 2 async engine on psycopg 3, and one unit of work per request or message."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.pool import ConnectionPoolEntry

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


PING_AFTER_IDLE_SECONDS = 2.0
"""A pooled connection idle for longer is pinged before it is handed out."""


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    ping_after_idle: float = PING_AFTER_IDLE_SECONDS,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine whose pool survives database restarts (pings, recycling).

    At most `pool_size` connections, each kept once opened: an overflow beyond the pool
    would be closed on its return and opened again by the next burst, and a new
    PostgreSQL connection (a forked backend, authentication, cold caches, statements not
    yet prepared) costs many times the statement it serves.

    A connection idle in the pool for over `ping_after_idle` seconds is pinged when
    checked out, and replaced if the ping fails: that is when a restart, a failover or
    an idle timeout has closed it unseen. One back in use within that time is not, which
    saves a round trip per unit of work under load; if the server went away meanwhile,
    its statement fails, which invalidates the whole pool, and the next ones reconnect.
    """
    engine = create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
        **kwargs,
    )
    _ping_when_idle(engine.sync_engine, ping_after_idle)
    return engine


_CHECKED_IN = "smarttasks.checked_in"


def _ping_when_idle(engine: Engine, after: float) -> None:
    # SQLAlchemy's pool_pre_ping, limited to connections that were idle (its documented
    # "custom pessimistic ping" pattern): a checkout runs in the greenlet that awaits the
    # driver, so the dialect's ping can be called here.
    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        since = record.info.pop(_CHECKED_IN, None)
        if since is None or time.monotonic() - since <= after:
            return  # new, or back in use soon after its last use
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool invalidates the connection and checks out another (or a new one).
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


class SecondStatementError(RuntimeError):
    """A one-statement unit of work tried to run a second statement (a programming error:
    the two would not be atomic)."""


_STATEMENTS_RUN = "smarttasks.statements_run"


class _OneStatementSession(Session):
    """The session of a one-statement unit of work. Its guards are events of this class
    only: an engine-level statement hook would slow every statement of every session
    (SQLAlchemy then takes its event-dispatching path, about 8% of a statement's cost)."""


@event.listens_for(_OneStatementSession, "do_orm_execute")
def _count_statement(state: ORMExecuteState) -> None:
    info = state.session.info
    if info.get(_STATEMENTS_RUN):
        raise SecondStatementError(
            "a one-statement unit of work must not run a second statement; "
            "use a transactional unit of work"
        )
    info[_STATEMENTS_RUN] = 1


@event.listens_for(_OneStatementSession, "before_flush")
def _refuse_flush(session: Session, flush_context: Any, instances: Any) -> None:
    raise SecondStatementError(
        "a one-statement unit of work must not flush ORM changes; use a transactional unit of work"
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def unit_of_work(
    sessions: async_sessionmaker[AsyncSession], **session_options: Any
) -> AsyncIterator[AsyncSession]:
    """Commit when the block succeeds, roll back when it raises."""
    async with sessions(**session_options) as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


@asynccontextmanager
async def one_statement(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A unit of work that is exactly one statement, run without BEGIN and COMMIT.

    PostgreSQL runs a single statement atomically on its own (all its rows and
    data-modifying CTEs, or none), so the explicit transaction around it would only add
    two round trips to the server. A second statement, or a flush of ORM changes, raises
    `SecondStatementError` before it runs. Commit hooks (the outbox's relay wake-up) still
    fire on success.
    """
    async with unit_of_work(sessions, sync_session_class=_OneStatementSession) as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


async def ping(engine: AsyncEngine) -> None:
    """Raise if the database does not answer; used by `/readyz`."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with unit_of_work(request.app.state.sessions) as session:
        yield session


async def _one_statement_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with one_statement(request.app.state.sessions) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a 2xx means committed.
SessionDep = Annotated[AsyncSession, Depends(_request_session, scope="function")]
OneStatementSessionDep = Annotated[AsyncSession, Depends(_one_statement_session, scope="function")]
"""For endpoints whose work is one statement (see `one_statement`)."""
