"""Wakes delivery workers on PostgreSQL NOTIFY, so new deliveries go out without polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import structlog
from sqlalchemy.engine import make_url

from smarttasks.notifications.models import WAKE_CHANNEL

log = structlog.get_logger()

RECONNECT_MAX_SECONDS = 30.0


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as a plain libpq connection string."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class NotifyListener:
    """One LISTEN connection per process; calls `on_wake` for every notification.

    After (re)connecting it also calls `on_wake`, since notifications sent while it was
    not listening are lost; the workers then look for due rows themselves.
    """

    def __init__(self, database_url: str, on_wake: Callable[[], None]) -> None:
        self._conninfo = libpq_url(database_url)
        self._on_wake = on_wake
        self.listening = asyncio.Event()

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    self.listening.set()
                    delay = 0.5
                    self._on_wake()
                    async for _notify in conn.notifies():
                        self._on_wake()
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("notify_listener_disconnected", error=str(exc), retry_in=delay)
            # Reconnect backoff: there is no event to wait for while the database is away.
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
