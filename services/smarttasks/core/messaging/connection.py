"""Connecting to RabbitMQ: a robust connection, retried until the broker answers."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from smarttasks.core.messaging.retry import Backoff

log = structlog.get_logger()


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(url: str, *, reconnect_seconds: float) -> AbstractRobustConnection:
    """A robust connection (it reconnects and restores channels, exchanges, queues, consumers).

    The first connection is retried with back-off too, so a process started before the
    broker waits for it instead of crash-looping.
    """
    backoff = Backoff(initial=min(0.2, reconnect_seconds), maximum=max(reconnect_seconds, 1.0))
    while True:
        try:
            return await aio_pika.connect_robust(
                url, reconnect_interval=reconnect_seconds, timeout=30
            )
        except CONNECTION_EXCEPTIONS as exc:
            log.warning("amqp_connect_failed", url=redact(url), error=str(exc) or repr(exc))
            await backoff.sleep()
