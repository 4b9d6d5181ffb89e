"""Response bodies of the delivery log API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from smarttasks.notifications.models import Attempt, Delivery, DeliveryStatus


class StatusFilter(StrEnum):
    PENDING = DeliveryStatus.PENDING.value
    SENDING = DeliveryStatus.SENDING.value
    SENT = DeliveryStatus.SENT.value
    SKIPPED = DeliveryStatus.SKIPPED.value
    FAILED = DeliveryStatus.FAILED.value
    DEAD = DeliveryStatus.DEAD.value


class RuleOut(BaseModel):
    namespace: str
    name: str


class AttemptOut(BaseModel):
    """One try at sending."""

    model_config = ConfigDict(from_attributes=True)

    number: int = Field(description="1 for the first attempt.")
    started_at: datetime
    duration_ms: float
    outcome: str = Field(description="sent, temporary, permanent or skipped.")
    status_code: int | None = Field(
        default=None, description="SMTP reply code or HTTP status, when there was one."
    )
    error: str | None = None


EXAMPLE: dict[str, Any] = {
    "id": "5b0c3a43-5a1f-5a0e-9f0a-0d6f2a1b8c11",
    "notification_id": "0f8e2d5c-7f1b-4c39-9a3e-3d1c2b4a5e6f",
    "channel": "email",
    "recipient": "user:7a8b9c0d-1e2f-4a5b-8c7d-9e0f1a2b3c4d",
    "recipient_user_id": "7a8b9c0d-1e2f-4a5b-8c7d-9e0f1a2b3c4d",
    "address": "ada@example.com",
    "status": "sent",
    "attempt_count": 2,
    "next_attempt_at": None,
    "last_error": None,
    "detail": "accepted by smtp.example.com: 250 OK",
    "rule": {"namespace": "team-a", "name": "overdue-high-priority"},
    "task_id": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
    "created_at": "2026-11-27T09:00:00Z",
    "updated_at": "2026-11-27T09:00:31Z",
    "sent_at": "2026-11-27T09:00:31Z",
}


class DeliveryOut(BaseModel):
    """One notification to one recipient, and where it stands."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

    id: uuid.UUID
    notification_id: uuid.UUID = Field(
        description="Id of the request; also the email Message-ID and the webhook-id."
    )
    channel: str
    recipient: str = Field(description="`user:<id>`, `email:<address>` or `webhook`.")
    recipient_user_id: uuid.UUID | None
    address: str | None = Field(description="Email address or webhook URL, once known.")
    status: StatusFilter
    attempt_count: int
    next_attempt_at: datetime | None = Field(
        description="When the next attempt is due; null once the delivery is final."
    )
    last_error: str | None
    detail: str | None = Field(description="What happened, e.g. where an email was written.")
    rule: RuleOut
    task_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
        return cls(**_fields(delivery))


class DeliveryDetail(DeliveryOut):
    """A delivery with every attempt, oldest first."""

    attempts: list[AttemptOut]

    @classmethod
    def with_attempts(cls, delivery: Delivery, attempts: list[Attempt]) -> DeliveryDetail:
        return cls(**_fields(delivery), attempts=[AttemptOut.model_validate(a) for a in attempts])


def _fields(d: Delivery) -> dict[str, object]:
    active = d.status in (DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value)
    return {
        "id": d.id,
        "notification_id": d.notification_id,
        "channel": d.channel,
        "recipient": d.recipient,
        "recipient_user_id": d.recipient_user_id,
        "address": d.address,
        "status": d.status,
        "attempt_count": d.attempts,
        "next_attempt_at": d.next_attempt_at if active else None,
        "last_error": d.last_error,
        "detail": d.detail,
        "rule": RuleOut(namespace=d.rule_namespace, name=d.rule_name),
        "task_id": d.task_id,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "sent_at": d.sent_at,
    }


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )
