"""Tables of the notification service, in schema `notifications`."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from smarttasks.core.db import schema_metadata

SCHEMA = "notifications"
# Channel of PostgreSQL NOTIFY that wakes delivery workers when something becomes due.
WAKE_CHANNEL = "smarttasks_notifications_due"


class DeliveryStatus(StrEnum):
    """Life of one delivery; `failed`, `dead`, `sent` and `skipped` are final."""

    PENDING = "pending"  # due at `next_attempt_at`
    SENDING = "sending"  # claimed by a worker until `next_attempt_at` (its lease)
    SENT = "sent"
    SKIPPED = "skipped"  # nothing to send: the recipient opted out or does not exist
    FAILED = "failed"  # a permanent error; retrying would not help
    DEAD = "dead"  # every allowed attempt failed


ACTIVE_STATUSES = (DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value)
RETRYABLE_STATUSES = (DeliveryStatus.FAILED.value, DeliveryStatus.DEAD.value)


class Base(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class Delivery(Base):
    """One notification to one recipient (an email address, a user, or a webhook URL)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        # A redelivered `notification.requested` finds its deliveries already there.
        UniqueConstraint("notification_id", "recipient", name="uq_deliveries_notification"),
        CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'skipped', 'failed', 'dead')",
            name="status",
        ),
        Index(
            "ix_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'sending')"),
        ),
        Index("ix_deliveries_user_created", "recipient_user_id", "created_at", "id"),
        Index("ix_deliveries_created", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    notification_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    # `user:<id>`, `email:<address>` or `webhook`: unique per notification.
    recipient: Mapped[str] = mapped_column(String(400))
    recipient_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    address: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    channel: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts made before an administrator's last retry: the budget counts from here.
    attempts_offset: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    rule_namespace: Mapped[str] = mapped_column(String(253))
    rule_name: Mapped[str] = mapped_column(String(253))
    task_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    dedup_key: Mapped[str] = mapped_column(String(500))
    # The request as received (secretRef is a name, never a key).
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Attempt(Base):
    """One try at sending a delivery: when, how long, and what came of it."""

    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_delivery", "delivery_id", "number"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("deliveries.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float] = mapped_column()
    outcome: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
