"""Transactional outbox: an event is written in the same transaction as the change it reports."""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Protocol

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    bindparam,
    event,
    func,
    insert,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert


def outbox_table(metadata: MetaData) -> Table:
    """The `outbox` table of one service, in that service's schema."""
    return Table(
        "outbox",
        metadata,
        # The identity column gives the relay a total order (and so per-task order).
        Column("seq", BigInteger, Identity(always=True), primary_key=True),
        Column("event_id", Uuid, nullable=False, unique=True),
        Column("exchange", String(100), nullable=False),
        Column("routing_key", String(100), nullable=False),
        Column("aggregate_id", Uuid, nullable=True),
        Column("payload", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("sent_at", DateTime(timezone=True), nullable=True),
        Column("attempts", BigInteger, nullable=False, server_default=text("0")),
        Index(
            "ix_outbox_unsent",
            "seq",
            postgresql_where=text("sent_at IS NULL"),
        ),
    )


async def add_to_outbox(
    session: AsyncSession,
    table: Table,
    *,
    event_id: uuid.UUID,
    exchange: str,
    routing_key: str,
    message: BaseModel,
    aggregate_id: uuid.UUID | None = None,
    along_with: tuple[Insert, dict[str, Any]] | None = None,
) -> None:
    """Queue `message` for publication; it is published only if the transaction commits.

    `along_with` is the change the event reports, as a statement and its parameters: both
    are then written by one statement (the change as a data-modifying CTE), which saves a
    round trip and its client-side cost per change. Its parameter names must not start
    with `outbox_`.
    """
    params: dict[str, Any] = {
        "outbox_event_id": event_id,
        "outbox_exchange": exchange,
        "outbox_routing_key": routing_key,
        "outbox_aggregate_id": aggregate_id,
        "outbox_payload": message.model_dump(mode="json"),
    }
    outbox_written(session, qualified_name(table))
    if along_with is None:
        await session.execute(_insert_statement(table), params)
    else:
        change, change_params = along_with
        await session.execute(_insert_along_with(table, change), {**change_params, **params})


@lru_cache(maxsize=64)
def _insert_statement(table: Table) -> Insert:
    # Built once per table: a statement made per call costs more than the insert itself.
    c = table.c
    return insert(table).values({
        c.event_id: bindparam("outbox_event_id", type_=c.event_id.type),
        c.exchange: bindparam("outbox_exchange", type_=c.exchange.type),
        c.routing_key: bindparam("outbox_routing_key", type_=c.routing_key.type),
        c.aggregate_id: bindparam("outbox_aggregate_id", type_=c.aggregate_id.type),
        c.payload: bindparam("outbox_payload", type_=c.payload.type),
    })  # fmt: skip


@lru_cache(maxsize=64)
def _insert_along_with(table: Table, change: Insert) -> Insert:
    # PostgreSQL runs a data-modifying CTE exactly once, whether or not it is referenced,
    # and the whole statement fails if either part does.
    return _insert_statement(table).add_cte(change.cte("change"))


def outbox_written(session: AsyncSession, outbox: str) -> None:
    """Record that this transaction added rows to `outbox` (`schema.table`), so its commit
    wakes the relays; `add_to_outbox` does it, SQL writing outbox rows directly must."""
    session.info.setdefault(_PENDING, set()).add(outbox)


def qualified_name(table: Table) -> str:
    """`schema.table`: how relays, wakers and notifications name an outbox."""
    return f"{table.schema}.{table.name}" if table.schema else table.name


# Relays LISTEN on this channel; the payload is the qualified name of an outbox that has
# new rows. Producers notify after their commit (see `OutboxWaker`), not inside it.
OUTBOX_CHANNEL = "smarttasks_outbox"


class OutboxWaker(Protocol):
    """Told, after a commit, which outboxes just got rows (must not block: it runs in the
    commit's call stack)."""

    def wake(self, outbox: str) -> None: ...


# Outboxes written by the session's current transaction, kept in `Session.info`.
_PENDING = "smarttasks.outbox.pending"
_wakers: weakref.WeakKeyDictionary[Engine, list[OutboxWaker]] = weakref.WeakKeyDictionary()


def attach_outbox_waker(engine: AsyncEngine, waker: OutboxWaker) -> None:
    """Wake `waker` after every commit, through `engine`, of a session that added to an outbox.

    Relays are woken after the commit rather than by a trigger inside the transaction:
    PostgreSQL serialises the commits of notifying transactions, so an in-transaction
    NOTIFY would make every producer wait for the previous one's flush.
    """
    _wakers.setdefault(engine.sync_engine, []).append(waker)


def detach_outbox_waker(engine: AsyncEngine, waker: OutboxWaker) -> None:
    wakers = _wakers.get(engine.sync_engine, [])
    if waker in wakers:
        wakers.remove(waker)


@contextmanager
def outbox_waker_attached(engine: AsyncEngine, waker: OutboxWaker) -> Iterator[None]:
    """`attach_outbox_waker` for the duration of the block."""
    attach_outbox_waker(engine, waker)
    try:
        yield
    finally:
        detach_outbox_waker(engine, waker)


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    pending: set[str] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    bind = session.bind
    if bind is None:
        return
    for waker in _wakers.get(bind.engine, ()):
        for outbox in pending:
            waker.wake(outbox)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _identifier(name: str) -> str:
    """`name` double-quoted, after refusing anything but a plain lower-case identifier."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


def outbox_ordering_index(table: Table) -> Index:
    """Index that lets relays find an earlier unsent event of the same aggregate quickly.

    The relay refuses to publish an event while an earlier one of the same aggregate is
    still unsent (held by another relay), which keeps per-aggregate order with several
    relays running; this index keeps that check cheap.
    """
    return Index(
        f"ix_{table.name}_unsent_aggregate",
        table.c.aggregate_id,
        table.c.seq,
        postgresql_where=text("sent_at IS NULL"),
    )


def outbox_notify_ddl(schema: str, table: str = "outbox") -> list[str]:
    """SQL of the insert trigger that used to wake relays from inside producer transactions.

    Kept for the migrations that created it (and later dropped it); producers now wake
    relays after their commit through `attach_outbox_waker`.
    """
    qualified = f"{_identifier(schema)}.{_identifier(table)}"
    function = f"{_identifier(schema)}.{_identifier(table + '_notify')}"
    trigger = _identifier(table + "_notify")
    return [
        f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{OUTBOX_CHANNEL}', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$$""",
        f"DROP TRIGGER IF EXISTS {trigger} ON {qualified}",
        f"CREATE TRIGGER {trigger} AFTER INSERT ON {qualified} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


def outbox_notify_drop_ddl(schema: str, table: str = "outbox") -> list[str]:
    """SQL undoing `outbox_notify_ddl`."""
    qualified = f"{_identifier(schema)}.{_identifier(table)}"
    function = f"{_identifier(schema)}.{_identifier(table + '_notify')}"
    return [
        f"DROP TRIGGER IF EXISTS {_identifier(table + '_notify')} ON {qualified}",
        f"DROP FUNCTION IF EXISTS {function}()",
    ]


def inbox_table(metadata: MetaData, name: str = "inbox") -> Table:
    """Events a consumer has applied, one row per (consumer, event id), in the consumer's schema.

    Inserted in the same transaction as the handler's changes, so a redelivered event
    finds its row and is acknowledged without being applied again.
    """
    return Table(
        name,
        metadata,
        Column("consumer", String(200), nullable=False),
        Column("event_id", Uuid, nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("consumer", "event_id", name=f"pk_{name}"),
        Index(f"ix_{name}_processed_at", "processed_at"),
    )


def dead_letter_table(metadata: MetaData, name: str = "dead_letters") -> Table:
    """Events a consumer gave up on in embedded mode (the broker keeps its own dead-letter queues).

    One row per (consumer, event id) with why it failed, so nothing is dropped silently
    and an operator can inspect or replay it.
    """
    return Table(
        name,
        metadata,
        Column("id", BigInteger, Identity(always=True), primary_key=True),
        Column("consumer", String(200), nullable=False),
        Column("event_id", Uuid, nullable=False),
        Column("exchange", String(100), nullable=False),
        Column("routing_key", String(100), nullable=False),
        Column("payload", JSONB, nullable=False),
        Column("reason", String(50), nullable=False),
        Column("error", Text, nullable=False, server_default=""),
        Column("attempts", Integer, nullable=False),
        Column("failed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        UniqueConstraint("consumer", "event_id", name=f"uq_{name}_consumer_event_id"),
    )


def create_outbox_table(schema: str) -> None:
    """In a migration: the `outbox` table of a producing service and its unsent-rows index.

    The same table as `outbox_table()` describes.
    """
    import sqlalchemy as sa
    from alembic import op
    from sqlalchemy.dialects import postgresql

    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("exchange", sa.String(100), nullable=False),
        sa.Column("routing_key", sa.String(100), nullable=False),
        sa.Column("aggregate_id", sa.Uuid(), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox"),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
        schema=schema,
    )
    op.create_index(
        "ix_outbox_unsent",
        "outbox",
        ["seq"],
        schema=schema,
        postgresql_where=sa.text("sent_at IS NULL"),
    )


def create_consumer_tables(schema: str) -> None:
    """In a migration: the `inbox` and `dead_letters` tables of a consuming service.

    The same tables as `inbox_table()` and `dead_letter_table()` describe.
    """
    import sqlalchemy as sa
    from alembic import op
    from sqlalchemy.dialects import postgresql

    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column(
            "processed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
        schema=schema,
    )
    op.create_index("ix_inbox_processed_at", "inbox", ["processed_at"], schema=schema)
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("exchange", sa.String(100), nullable=False),
        sa.Column("routing_key", sa.String(100), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("reason", sa.String(50), nullable=False),
        sa.Column("error", sa.Text(), nullable=False, server_default=""),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
        sa.UniqueConstraint("consumer", "event_id", name="uq_dead_letters_consumer_event_id"),
        schema=schema,
    )
