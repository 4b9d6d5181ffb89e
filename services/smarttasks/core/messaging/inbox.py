"""Apply an event at most once per consumer: the inbox row commits with the handler's changes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from itertools import groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import Executable, String, Table, Uuid, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from smarttasks.core.messaging.envelope import Envelope
from smarttasks.core.messaging.routing import Consumer, Route

_PRUNE_CHUNK = 5000


class Outcome(StrEnum):
    """How a consumer settled a message."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class Settlement:
    """One message settled by a consumer, as reported to an `on_settled` hook."""

    consumer: str
    event_id: uuid.UUID | None
    routing_key: str
    outcome: Outcome
    attempt: int
    reason: str | None = None


SettlementHook = Callable[[Settlement], None]


async def apply_once(
    sessions: async_sessionmaker[AsyncSession],
    consumer: Consumer,
    route: Route,
    envelope: Envelope[Any],
) -> Outcome:
    """Run the handler and commit, unless the consumer's inbox already has this event.

    One session per message; the inbox row is inserted first, in the same transaction,
    so two deliveries of one event racing each other serialise on its primary key and
    the loser finds it applied. The handler must not commit.
    """
    async with sessions() as session:
        try:
            if not await _claim(session, consumer, [envelope.id]):
                await session.rollback()
                return Outcome.DUPLICATE
            await route.handler(session, envelope)
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
    return Outcome.APPLIED


async def apply_many(
    sessions: async_sessionmaker[AsyncSession],
    consumer: Consumer,
    items: Sequence[tuple[Route, Envelope[Any]]],
) -> list[Outcome]:
    """`apply_once` for several events in one transaction: all commit or none does.

    Each event still gets its inbox row; handlers run in order, the consecutive events of
    a route with a batch handler in one call of it. One commit (one WAL flush, one
    session) serves them all. If any handler raises, everything rolls
    back and the caller applies the events one by one, so one bad event costs the
    others nothing but time.
    """
    outcomes: list[Outcome] = []
    async with sessions() as session:
        try:
            # Every inbox row in one statement; an id claimed twice in the batch (a
            # redelivery next to the original) counts once, for its first message.
            claimed = await _claim(session, consumer, [envelope.id for _, envelope in items])
            applied: list[tuple[Route, Envelope[Any]]] = []
            for route, envelope in items:
                if envelope.id not in claimed:
                    outcomes.append(Outcome.DUPLICATE)
                    continue
                claimed.discard(envelope.id)
                applied.append((route, envelope))
                outcomes.append(Outcome.APPLIED)
            # Consecutive messages of one route, in order.
            for route, run in groupby(applied, key=itemgetter(0)):
                group = [envelope for _, envelope in run]
                if route.batch_handler is not None and len(group) > 1:
                    await route.batch_handler(session, group)
                else:
                    for envelope in group:
                        await route.handler(session, envelope)
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
    return outcomes


async def _claim(
    session: AsyncSession, consumer: Consumer, ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Insert the inbox rows of `ids`; returns those that were not there yet."""
    claimed = await session.execute(
        _claim_statement(consumer.inbox), {"consumer": consumer.name, "event_ids": list(ids)}
    )
    return set(claimed.scalars())


@lru_cache(maxsize=64)
def _claim_statement(inbox: Table) -> Executable:
    # Built once per inbox: SQLAlchemy then reuses its cache key and compiled form. In id
    # order, so two transactions claiming overlapping batches lock rows in the same
    # order and cannot deadlock.
    ids = select(func.unnest(bindparam("event_ids", type_=ARRAY(Uuid))).label("id")).subquery()
    return (
        insert(inbox)
        .from_select(
            ["consumer", "event_id"],
            select(bindparam("consumer", type_=String), ids.c.id).distinct().order_by(ids.c.id),
        )
        .on_conflict_do_nothing()
        .returning(inbox.c.event_id)
    )


async def record_dead_letter(
    sessions: async_sessionmaker[AsyncSession],
    table: Table,
    *,
    consumer: str,
    event_id: uuid.UUID,
    exchange: str,
    routing_key: str,
    payload: Mapping[str, Any],
    reason: str,
    error: str,
    attempts: int,
) -> None:
    """Keep an event the consumer gave up on, with why (embedded mode's dead-letter queue)."""
    async with sessions() as session:
        await session.execute(
            insert(table)
            .values(
                consumer=consumer,
                event_id=event_id,
                exchange=exchange,
                routing_key=routing_key,
                payload=dict(payload),
                reason=reason,
                error=error,
                attempts=attempts,
            )
            .on_conflict_do_nothing()
        )
        await session.commit()


async def prune_inbox(
    engine: AsyncEngine, table: Table, *, consumer: str, older_than_seconds: float
) -> int:
    """Forget applied event ids older than the retention, in chunks; returns rows deleted."""
    total = 0
    cutoff = func.now() - timedelta(seconds=older_than_seconds)
    while True:
        chunk = (
            select(table.c.event_id)
            .where(table.c.consumer == consumer, table.c.processed_at < cutoff)
            .limit(_PRUNE_CHUNK)
            .scalar_subquery()
        )
        async with engine.begin() as conn:
            result = await conn.execute(
                delete(table).where(table.c.consumer == consumer, table.c.event_id.in_(chunk))
            )
        total += result.rowcount
        if result.rowcount < _PRUNE_CHUNK:
            return total
