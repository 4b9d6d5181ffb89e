"""Waking relays in other processes after a producer's commit.

A producer process attaches one `OutboxNotifier` to its database engine
(`smarttasks.core.outbox.attach_outbox_waker`); every commit that added outbox rows
then calls `wake(outbox)`, which only records the name. A background task sends
`NOTIFY smarttasks_outbox, '<schema.table>'` on a connection of its own, one statement
at a time and at most one per `NOTIFY_INTERVAL_SECONDS`: names recorded meanwhile go out
together in the next. So a busy process sends a bounded number of notifications (each a
transaction on the server, serialised with the other notifying ones), never one per
request, and no producer transaction waits for it.

A notification lost (database restart, notifier reconnecting) costs latency, not
events: relays also look for rows after `relay_idle_seconds` and whenever their LISTEN
connection comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from smarttasks.core.db import libpq_conninfo
from smarttasks.core.messaging.envelope import describe_error
from smarttasks.core.messaging.retry import Backoff
from smarttasks.core.outbox import OUTBOX_CHANNEL, outbox_waker_attached

log = structlog.get_logger()

# Notifications are hints: their transactions need not wait for the WAL flush.
_NOTIFY = "SELECT pg_notify(%s, name) FROM unnest(%s::text[]) AS name"

NOTIFY_INTERVAL_SECONDS = 0.005
"""Least time between two notifications of one process: the first commit after a quiet
spell wakes the relays at once; under load, commits share notifications."""


class OutboxNotifier:
    """Sends coalesced outbox notifications for one process; run it with `running()`."""

    def __init__(self, conninfo: str, *, interval: float = NOTIFY_INTERVAL_SECONDS) -> None:
        self._conninfo = conninfo
        self._interval = interval
        self._pending: set[str] = set()
        self._signal = asyncio.Event()
        self.sent = 0
        """Notification statements sent so far (tests and metrics read it)."""

    def wake(self, outbox: str) -> None:
        self._pending.add(outbox)
        self._signal.set()

    async def run(self) -> None:
        backoff = Backoff(maximum=5.0)
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        try:
            while True:
                await self._signal.wait()
                self._signal.clear()
                names, self._pending = sorted(self._pending), set()
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True
                        )
                        await conn.execute("SET synchronous_commit = off")
                    await conn.execute(_NOTIFY, (OUTBOX_CHANNEL, names))
                    self.sent += 1
                    backoff.reset()
                    # Pacing, not waiting for an event: wakes meanwhile go out together.
                    await asyncio.sleep(self._interval)
                except (psycopg.Error, OSError) as exc:
                    # Relays find these rows on their next look; keep the names for the
                    # next attempt all the same, so the delay stays short.
                    log.warning("outbox_notify_failed", error=describe_error(exc))
                    self._pending.update(names)
                    if conn is not None:
                        await conn.close()
                        conn = None
                    await backoff.sleep()
                    self._signal.set()
        finally:
            if conn is not None:
                await conn.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[OutboxNotifier]:
        """Send notifications in the background for the duration of the block."""
        task = asyncio.create_task(self.run(), name="outbox-notifier")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def notifying_relays(engine: AsyncEngine) -> AsyncIterator[OutboxNotifier]:
    """For the block's duration, commits through `engine` that add outbox rows wake the
    relays of every process (cluster mode: the tasks service, the engine)."""
    notifier = OutboxNotifier(libpq_conninfo(engine))
    with outbox_waker_attached(engine, notifier):
        async with notifier.running():
            yield notifier


__all__ = ["OutboxNotifier", "notifying_relays"]
