"""Transactional outbox: an event is written in the same transaction as the change it reports."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    MetaData,
    String,
    Table,
    Uuid,
    func,
    insert,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession


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
) -> None:
    """Queue `message` for publication; it is published only if the transaction commits."""
    payload: dict[str, Any] = message.model_dump(mode="json")
    await session.execute(
        insert(table).values(
            event_id=event_id,
            exchange=exchange,
            routing_key=routing_key,
            aggregate_id=aggregate_id,
            payload=payload,
        )
    )
