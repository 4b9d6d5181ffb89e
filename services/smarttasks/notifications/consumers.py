"""Consumer of `notification.requested`: records deliveries; sending is the worker's job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.core.events import (
    NOTIFICATION_REQUESTED,
    NOTIFICATIONS_EXCHANGE,
    NotificationRequested,
)
from smarttasks.core.messaging.envelope import Envelope, UnprocessableMessage
from smarttasks.core.messaging.routing import Consumer
from smarttasks.core.outbox import dead_letter_table, inbox_table
from smarttasks.notifications import service
from smarttasks.notifications.models import Base

log = structlog.get_logger()

CONSUMER_NAME = "notifications"
# Requests already recorded (a redelivery is acknowledged without another look) and, in
# embedded mode, the ones given up on.
inbox = inbox_table(Base.metadata)
dead_letters = dead_letter_table(Base.metadata)

Message = (
    Envelope[NotificationRequested]
    | Envelope[Mapping[str, Any]]
    | NotificationRequested
    | Mapping[str, Any]
    | bytes
    | str
)


class InvalidNotificationRequest(UnprocessableMessage, ValueError):
    """The message is not a valid `notification.requested` envelope (dead-letter it)."""


def parse_request(message: Message) -> NotificationRequested:
    """The request from the consumer runner's envelope (registered with or without the
    schema), a model, a decoded JSON object, or the raw message body."""
    if isinstance(message, Envelope):
        message = message.event
    if isinstance(message, NotificationRequested):
        return message
    try:
        if isinstance(message, bytes | str):
            return NotificationRequested.model_validate_json(message)
        return NotificationRequested.model_validate(dict(message))
    except (ValidationError, ValueError, TypeError) as exc:
        raise InvalidNotificationRequest(f"not a notification.requested message: {exc}") from exc


async def handle(session: AsyncSession, message: Message) -> None:
    """Record the deliveries `message` asks for, in the caller's unit of work.

    Register it with the consumer runner for `notification.requested` on the
    `smarttasks.notifications` exchange (with or without `NotificationRequested` as schema).

    Idempotent: deliveries are unique per notification id and recipient, so a redelivered
    message changes nothing. Nothing is sent here: no network call can hold up the
    consumer, and retries live in the deliveries table rather than in the broker.
    """
    request = parse_request(message)
    if _has_nul(request.model_dump()):
        # PostgreSQL cannot store NUL in text or JSONB: retrying would fail the same way.
        raise InvalidNotificationRequest("message contains NUL characters")
    if request.type != NOTIFICATION_REQUESTED:
        raise InvalidNotificationRequest(f"unexpected message type {request.type!r}")
    with structlog.contextvars.bound_contextvars(notification_id=str(request.id)):
        await service.record_request(session, request)


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def encode(request: NotificationRequested) -> bytes:
    """The message body a publisher sends (the inverse of `parse_request`)."""
    return request.model_dump_json().encode()


def notification_consumer() -> Consumer:
    """The service's consumer definition, for the runner (RabbitMQ) or the in-process relay."""
    consumer = Consumer(
        CONSUMER_NAME, exchange=NOTIFICATIONS_EXCHANGE, inbox=inbox, dead_letters=dead_letters
    )
    consumer.add(NOTIFICATION_REQUESTED, handle, schema=NotificationRequested)
    return consumer
