"""What every channel receives and returns, and the one-method protocol channels implement."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from smarttasks.notifications.secretrefs import SecretRef


class Outcome(StrEnum):
    """What came of one attempt."""

    SENT = "sent"
    TEMPORARY = "temporary"  # may work later: retried with backoff
    PERMANENT = "permanent"  # will never work as it is: not retried
    SKIPPED = "skipped"  # nothing to send (recipient opted out or gone)


@dataclass(frozen=True, slots=True)
class Result:
    """A channel's answer: the outcome, a sentence for the delivery log, and hints for retries."""

    outcome: Outcome
    detail: str = ""
    status_code: int | None = None
    retry_after: float | None = None

    @classmethod
    def sent(cls, detail: str, *, status_code: int | None = None) -> Result:
        return cls(Outcome.SENT, detail, status_code)

    @classmethod
    def temporary(
        cls, detail: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> Result:
        return cls(Outcome.TEMPORARY, detail, status_code, retry_after)

    @classmethod
    def permanent(cls, detail: str, *, status_code: int | None = None) -> Result:
        return cls(Outcome.PERMANENT, detail, status_code)

    @classmethod
    def skipped(cls, detail: str) -> Result:
        return cls(Outcome.SKIPPED, detail)


class OutcomeReceipt:
    """When the outcome of sending one message has been recorded.

    The worker settles it once the outcome is committed (or the write failed). A channel
    that must bound what a crash sends twice waits on the receipt of its last message
    before it sends the next; waiting asks the recorder to write now.
    """

    __slots__ = ("_done", "_hurry")

    def __init__(self, hurry: Callable[[], None]) -> None:
        self._hurry = hurry
        self._done = asyncio.get_running_loop().create_future()

    def settle(self, _: object = None) -> None:
        """Mark the outcome recorded (usable as a future's done callback)."""
        if not self._done.done():
            self._done.set_result(None)

    @property
    def settled(self) -> bool:
        return self._done.done()

    async def recorded(self) -> None:
        """Return once the outcome is recorded."""
        if not self._done.done():
            self._hurry()
            await asyncio.shield(self._done)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One rendered notification for one recipient; each channel reads the fields it needs.

    `notification_id` is the same on every attempt and for every recipient of a notification:
    it becomes the email `Message-ID` and the `webhook-id`, so receivers can de-duplicate.
    """

    notification_id: uuid.UUID
    delivery_id: uuid.UUID
    subject: str = ""
    text: str = ""
    html: str | None = None
    to_address: str | None = None
    to_name: str | None = None
    url: str | None = None
    secret_ref: SecretRef | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    receipt: OutcomeReceipt | None = None


class Channel(Protocol):
    """Sends one message. Never raises for a delivery problem: it returns a Result saying so."""

    async def send(self, message: OutboundMessage) -> Result: ...
