"""Queries of the notification service; flushes, never commits."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, cast, func, or_, select, text, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from smarttasks.core.auth import Principal
from smarttasks.notifications.models import (
    ACTIVE_STATUSES,
    SCHEMA,
    WAKE_CHANNEL,
    Attempt,
    Delivery,
    DeliveryStatus,
)
from smarttasks.notifications.pagination import Cursor

_FINISH_COLUMNS = (
    ("id", "uuid"),
    ("status", "text"),
    ("address", "text"),
    ("next_attempt_at", "timestamptz"),
    ("last_error", "text"),
    ("detail", "text"),
    ("sent_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
_ATTEMPT_COLUMNS = (  # the attempt's delivery_id is the delivery's id
    ("number", "integer"),
    ("started_at", "timestamptz"),
    ("duration_ms", "double precision"),
    ("outcome", "text"),
    ("status_code", "integer"),
    ("error", "text"),
)
_RECORD_OUTCOMES = text(
    # set_config(..., true) lasts for this statement's own transaction: its commit does
    # not wait for the WAL flush, and the connection's setting is left as it was.
    "WITH no_flush_wait AS (SELECT set_config('synchronous_commit', 'off', true)), "
    "v AS (SELECT * FROM json_to_recordset(CAST(:outcomes AS json)) AS v("
    + ", ".join(f"{name} {kind}" for name, kind in _FINISH_COLUMNS + _ATTEMPT_COLUMNS)
    + ")), "
    f"finished AS (UPDATE {SCHEMA}.deliveries AS d SET "
    + ", ".join(f"{name} = v.{name}" for name, _ in _FINISH_COLUMNS[1:])
    + " FROM v WHERE d.id = v.id) "
    f"INSERT INTO {SCHEMA}.attempts (delivery_id, "
    + ", ".join(name for name, _ in _ATTEMPT_COLUMNS)
    + ") SELECT v.id, "
    + ", ".join(f"v.{name}" for name, _ in _ATTEMPT_COLUMNS)
    + " FROM no_flush_wait, v"
)


async def record_outcomes(
    connection: AsyncConnection,
    updates: Sequence[dict[str, Any]],
    attempts: Sequence[dict[str, Any]],
) -> None:
    """Record the outcome of sends: the deliveries' new state and their attempts.

    One statement whatever the number of outcomes, the rows travelling as one JSON
    parameter (a fraction of the cost of binding a column of each), so on an autocommit
    connection one round trip. Its commit does not wait for the WAL flush: the sooner an
    accepted message is recorded, the fewer a killed worker sends twice, and the worst a
    server crash can do is lose the last fraction of a second of outcomes, whose messages
    are then sent again (never lost). Text must not contain NUL characters (PostgreSQL
    refuses them).
    """
    rows = [
        {name: update[name] for name, _ in _FINISH_COLUMNS}
        | {name: attempt[name] for name, _ in _ATTEMPT_COLUMNS}
        for update, attempt in zip(updates, attempts, strict=True)
    ]
    await connection.execute(_RECORD_OUTCOMES, {"outcomes": json.dumps(rows, default=str)})


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a worker has leased: what sending it and recording the outcome need."""

    id: uuid.UUID
    notification_id: uuid.UUID
    recipient_user_id: uuid.UUID | None
    address: str | None
    channel: str
    attempts: int
    attempts_offset: int
    created_at: datetime
    request: str  # the `notification.requested` message as JSON


_CLAIMED_COLUMNS = (
    Delivery.id,
    Delivery.notification_id,
    Delivery.recipient_user_id,
    Delivery.address,
    Delivery.channel,
    Delivery.attempts,
    Delivery.attempts_offset,
    Delivery.created_at,
    cast(Delivery.request, Text),
)


def visible_to(principal: Principal) -> ColumnElement[bool]:
    """A user sees the deliveries addressed to them; administrators see all."""
    if principal.is_admin:
        return true()
    return Delivery.recipient_user_id == principal.user_id


class DeliveryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_new(self, rows: Sequence[dict[str, Any]]) -> list[uuid.UUID]:
        """Insert the deliveries not recorded yet; returns the ids actually inserted."""
        if not rows:
            return []
        # One cached statement, executed for many rows (psycopg pipelines them).
        stmt = (
            insert(Delivery)
            .on_conflict_do_nothing(constraint="uq_deliveries_notification")
            .returning(Delivery.id)
        )
        result = await self.session.execute(stmt, list(rows))
        return list(result.scalars())

    async def wake_workers(self) -> None:
        """NOTIFY delivery workers; PostgreSQL delivers it when (and only if) we commit."""
        await self.session.execute(select(func.pg_notify(WAKE_CHANNEL, "")))

    async def claim_due(self, *, limit: int, lease: timedelta) -> list[Claimed]:
        """Take up to `limit` due deliveries for this worker, skipping rows others hold.

        Claimed rows become `sending` with a lease: if this worker dies, they are due again
        when the lease ends. Each claim counts as an attempt. Only what sending needs comes
        back, the request as JSON text (parsed once, by its model).
        """
        due = (
            select(Delivery.id)
            .where(Delivery.status.in_(ACTIVE_STATUSES), Delivery.next_attempt_at <= func.now())
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(Delivery)
            .where(Delivery.id.in_(due.scalar_subquery()))
            .values(
                status=DeliveryStatus.SENDING.value,
                attempts=Delivery.attempts + 1,
                next_attempt_at=func.now() + lease,
                updated_at=func.now(),
            )
            .returning(*_CLAIMED_COLUMNS)
            .execution_options(synchronize_session=False)
        )
        return [Claimed(*row) for row in await self.session.execute(stmt)]

    async def next_due_at(self) -> datetime | None:
        query = select(func.min(Delivery.next_attempt_at)).where(
            Delivery.status.in_(ACTIVE_STATUSES)
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def get_visible(
        self, delivery_id: uuid.UUID, principal: Principal, *, for_update: bool = False
    ) -> Delivery | None:
        query = select(Delivery).where(Delivery.id == delivery_id, visible_to(principal))
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def attempts_of(self, delivery_id: uuid.UUID) -> list[Attempt]:
        query = select(Attempt).where(Attempt.delivery_id == delivery_id).order_by(Attempt.number)
        return list((await self.session.execute(query)).scalars())

    async def page(
        self,
        principal: Principal,
        *,
        statuses: Sequence[str],
        cursor: Cursor | None,
        limit: int,
    ) -> Sequence[Delivery]:
        query = select(Delivery).where(visible_to(principal))
        if statuses:
            query = query.where(Delivery.status.in_(statuses))
        if cursor is not None:
            query = query.where(
                or_(
                    Delivery.created_at < cursor.created_at,
                    and_(Delivery.created_at == cursor.created_at, Delivery.id < cursor.last_id),
                )
            )
        query = query.order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit)
        return (await self.session.execute(query)).scalars().all()

    async def requeue(self, delivery: Delivery) -> None:
        """Due now, with a fresh attempt budget; the attempt numbers go on counting."""
        delivery.status = DeliveryStatus.PENDING.value
        delivery.attempts_offset = delivery.attempts
        delivery.next_attempt_at = await self._now()
        delivery.updated_at = delivery.next_attempt_at
        await self.session.flush()
        await self.wake_workers()

    async def _now(self) -> datetime:
        return (await self.session.execute(select(func.now()))).scalar_one()
