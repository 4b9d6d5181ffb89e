"""A webhook receiver on 127.0.0.1 that records when each request arrived."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import Receive, Scope, Send
from tests.fixtures import loopback
from tests.fixtures.loopback import read_body


@dataclass(frozen=True)
class Arrival:
    arrived_at: float  # seconds since the epoch
    headers: dict[str, str]
    body: bytes
    verified: bool  # signature and timestamp checked on arrival (Standard Webhooks)


class TimedReceiver:
    """Answers 200 to every POST and keeps it, with its arrival time and whether its
    signature verified with `signing_key`, for the report."""

    def __init__(self) -> None:
        self.arrivals: list[Arrival] = []
        self.port = 0
        self.signing_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/load"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        arrived = time.time()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        verified = False
        if self.signing_key is not None:
            # On arrival: the timestamp must be recent now, not when the report is made.
            try:
                Webhook(self.signing_key).verify(body, headers, json_parse=False)
                verified = True
            except WebhookVerificationError:
                pass
        self.arrivals.append(Arrival(arrived, headers, body, verified))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[TimedReceiver]:
    """A receiver listening on a free loopback port until the block ends."""
    receiver = TimedReceiver()
    async with loopback.serving(receiver, backlog=1024) as port:
        receiver.port = port
        yield receiver
