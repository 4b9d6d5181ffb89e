"""What a handler receives: an event's validated body and where it came from."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

EventT = TypeVar("EventT")

# Message headers written by the relay and the consumer runner.
HEADER_AGGREGATE = "x-aggregate-id"
HEADER_OUTBOX = "x-outbox"
HEADER_OUTBOX_SEQ = "x-outbox-seq"
HEADER_RECORDED_AT = "x-recorded-at"
HEADER_ATTEMPT = "x-smarttasks-attempt"
HEADER_EXCHANGE = "x-smarttasks-exchange"
HEADER_ROUTING_KEY = "x-smarttasks-routing-key"
HEADER_CONSUMER = "x-smarttasks-consumer"
HEADER_DEAD_REASON = "x-smarttasks-dead-reason"
HEADER_ERROR = "x-smarttasks-error"
HEADER_FAILED_AT = "x-smarttasks-failed-at"

_MAX_ERROR_CHARS = 2000


class MalformedMessage(Exception):
    """The message body is not a JSON object carrying a UUID `id`."""


class UnprocessableMessage(Exception):
    """Raised by a handler when retrying cannot help: the message is dead-lettered at once."""


@dataclass(frozen=True, slots=True)
class Envelope(Generic[EventT]):
    """One event as a handler sees it.

    `event` is the body validated against the schema the handler was registered with
    (the raw JSON object when it was registered without one); `id` is stable across
    redelivery and is what consumers deduplicate on.
    """

    id: uuid.UUID
    routing_key: str
    exchange: str
    event: EventT
    payload: Mapping[str, Any]
    aggregate_id: uuid.UUID | None = None
    attempt: int = 1
    recorded_at: datetime | None = None


def decode_payload(body: bytes) -> tuple[uuid.UUID, dict[str, Any]]:
    """The event id and JSON object of a message body; MalformedMessage when it is neither."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedMessage(f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedMessage(f"body is a JSON {type(payload).__name__}, not an object")
    raw_id = payload.get("id")
    try:
        event_id = uuid.UUID(str(raw_id))
    except ValueError:
        raise MalformedMessage(f"body has no UUID `id` (got {raw_id!r})") from None
    return event_id, payload


def describe_error(exc: BaseException) -> str:
    """`Type: message`, bounded, for a header or a dead-letter row."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def parse_uuid(value: object) -> uuid.UUID | None:
    """A UUID from a header value, or None when it is absent or not a UUID."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
