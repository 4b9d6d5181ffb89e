"""A webhook receiver on 127.0.0.1 that records when each request arrived."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import Receive, Scope, Send


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
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
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


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Ctrl-C belongs to the benchmark, which stops the components first.
        yield


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[TimedReceiver]:
    """A receiver listening on a free loopback port until the block ends."""
    receiver = TimedReceiver()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    receiver.port = sock.getsockname()[1]
    config = uvicorn.Config(
        receiver,
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="none",
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task
        sock.close()
