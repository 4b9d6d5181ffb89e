"""The outbox relay: claims unsent rows in order, hands them to a sink, marks them sent.

One loop per outbox table. A batch is one transaction: claim rows with
`FOR UPDATE SKIP LOCKED` (several relays share the work), hand them to the sink
(RabbitMQ with publisher confirms, or in-process subscribers), mark the delivered ones
sent, commit. A crash anywhere before the commit leaves the rows unsent and they are
handed over again: delivery is at least once, and consumers deduplicate on the event id.

Per-aggregate order: rows are claimed in `seq` order, and a row is held back while an
earlier unsent row of the same aggregate is outside this batch (another relay holds it,
or it is waiting for a retry). So with any number of relays, events of one task reach
the broker in the order they were committed.

Relays sleep until a producer's NOTIFY, sent after its commit (see `wakeup`), or, as a
safety net, `idle_seconds`; a relay in the producer's own process is woken directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import aio_pika
import psycopg
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractRobustChannel,
    AbstractRobustConnection,
    FieldValue,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from smarttasks.core.db import create_engine, libpq_conninfo
from smarttasks.core.messaging import metrics
from smarttasks.core.messaging.connection import connect, redact
from smarttasks.core.messaging.envelope import (
    HEADER_AGGREGATE,
    HEADER_OUTBOX,
    HEADER_OUTBOX_SEQ,
    HEADER_RECORDED_AT,
    describe_error,
)
from smarttasks.core.messaging.retry import Backoff, is_connection_error
from smarttasks.core.messaging.settings import MessagingSettings
from smarttasks.core.messaging.topology import declare_exchange
from smarttasks.core.metrics import serve_metrics
from smarttasks.core.outbox import OUTBOX_CHANNEL

log = structlog.get_logger()

_QUALIFIED = re.compile(r"^([a-z_][a-z0-9_]{0,62})\.([a-z_][a-z0-9_]{0,62})$")
_PRUNE_CHUNK = 5000
# How often the backlog gauges are refreshed, in seconds.
_GAUGE_INTERVAL = 10.0
# Pause when every claimed row waits for an earlier row another relay is publishing.
_CONTENDED_PAUSE = 0.05
# Grace period for the current batches after SIGTERM before the relay is cancelled.
_STOP_GRACE_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One claimed outbox row; `body` is the payload as stored (JSON text)."""

    seq: int
    event_id: uuid.UUID
    exchange: str
    routing_key: str
    aggregate_id: uuid.UUID | None
    body: bytes
    created_at: datetime
    attempts: int


@dataclass
class Delivery:
    """What a sink did with a batch."""

    delivered: list[int] = field(default_factory=list)
    """Sequence numbers handed over for good: they are marked sent."""
    failed: list[int] = field(default_factory=list)
    """Rows a subscriber failed on; they stay unsent and their attempts are counted."""
    error: BaseException | None = None
    """A transport failure (broker or database down): the relay backs off."""


@dataclass(frozen=True)
class BatchResult:
    """Counts of one relay transaction."""

    claimed: int
    blocked: int
    delivered: int
    failed: int
    error: BaseException | None = None


class Sink(Protocol):
    """Where relayed rows go: RabbitMQ in cluster mode, in-process subscribers when embedded."""

    mode: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def deliver(self, outbox: str, rows: Sequence[OutboxRow]) -> Delivery: ...

    async def wait_ready(self) -> None:
        """Return when a delivery may succeed again after a transport error."""
        ...

    def held(self, outbox: str) -> list[int]:
        """Rows not to claim now (waiting for a retry)."""
        ...

    def next_due(self) -> float | None:
        """Event-loop time when a held row becomes due, if any."""
        ...


class OutboxTable:
    """The relay's SQL for one outbox table, named `schema.table`."""

    def __init__(self, qualified: str) -> None:
        match = _QUALIFIED.match(qualified)
        if match is None:
            raise ValueError(f"outbox must be schema.table in lower case: {qualified!r}")
        self.name = qualified
        table = f'"{match.group(1)}"."{match.group(2)}"'
        # Candidates are locked (others skip them); a candidate is blocked when an earlier
        # unsent row of its aggregate is not among them. Blocked rows stay unsent.
        self.claim = text(
            f"""
            WITH candidates AS (
                SELECT seq, event_id, exchange, routing_key, aggregate_id,
                       payload::text AS body, created_at, attempts
                FROM {table}
                WHERE sent_at IS NULL AND NOT (seq = ANY(CAST(:held AS bigint[])))
                ORDER BY seq
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            )
            SELECT c.*,
                   (c.aggregate_id IS NOT NULL AND EXISTS (
                        SELECT 1 FROM {table} o
                        WHERE o.aggregate_id = c.aggregate_id
                          AND o.sent_at IS NULL
                          AND o.seq < c.seq
                          AND o.seq NOT IN (SELECT seq FROM candidates)
                   )) AS blocked
            FROM candidates c
            ORDER BY c.seq
            """
        )
        self.mark_sent = text(
            f"UPDATE {table} SET sent_at = now() WHERE seq = ANY(CAST(:seqs AS bigint[]))"
        )
        self.count_attempt = text(
            f"UPDATE {table} SET attempts = attempts + 1 WHERE seq = ANY(CAST(:seqs AS bigint[]))"
        )
        self.backlog = text(
            f"SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at)) "
            f"FROM {table} WHERE sent_at IS NULL"
        )
        self.prune = text(
            f"DELETE FROM {table} WHERE seq IN ("
            f"SELECT seq FROM {table} "
            f"WHERE sent_at < now() - make_interval(secs => :age) LIMIT {_PRUNE_CHUNK})"
        )


class OutboxRelay:
    """Moves outbox rows to a sink, in order, at least once, waking on NOTIFY.

    `run()` until `stop()` (the current batches finish) or cancellation (the current
    batches roll back and are handed over again later).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        sink: Sink,
        *,
        outboxes: Sequence[str],
        batch_size: int = 500,
        idle_seconds: float = 30.0,
        prune_after_seconds: float = 24 * 3600,
        prune_interval_seconds: float = 300.0,
    ) -> None:
        if not outboxes:
            raise ValueError("the relay needs at least one outbox table")
        self._engine = engine
        self._sink = sink
        self._tables = {name: OutboxTable(name) for name in outboxes}
        self._batch_size = batch_size
        self._idle_seconds = idle_seconds
        self._prune_after = prune_after_seconds
        self._prune_interval = prune_interval_seconds
        self._wakes = {name: asyncio.Event() for name in self._tables}
        self._stopping = False
        self.listening = asyncio.Event()
        """Set while the LISTEN connection is up (tests and health checks wait on it)."""

    @property
    def outboxes(self) -> tuple[str, ...]:
        return tuple(self._tables)

    def stop(self) -> None:
        """Finish the current batches and return from `run()`."""
        self._stopping = True
        self._wake_all()

    def wake(self, outbox: str | None = None) -> None:
        """Relay now instead of waiting for a notification."""
        if outbox is None:
            self._wake_all()
        elif (wake := self._wakes.get(outbox)) is not None:
            wake.set()

    async def run(self) -> None:
        await self._sink.start()
        helpers = [asyncio.create_task(self._listen(), name="outbox-listen")]
        helpers += [
            asyncio.create_task(self._housekeeping(name), name=f"outbox-housekeeping-{name}")
            for name in self._tables
        ]
        log.info("relay_started", outboxes=list(self._tables), mode=self._sink.mode)
        try:
            async with asyncio.TaskGroup() as group:
                for name in self._tables:
                    group.create_task(self._relay_loop(name), name=f"outbox-relay-{name}")
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._sink.close()
            self.listening.clear()
            log.info("relay_stopped", outboxes=list(self._tables))

    async def relay_once(self, outbox: str) -> BatchResult:
        """One transaction: claim a batch, hand it to the sink, mark what it took."""
        table = self._tables[outbox]
        async with self._engine.connect() as conn, conn.begin():
            rows = (
                await conn.execute(
                    table.claim, {"limit": self._batch_size, "held": self._sink.held(outbox)}
                )
            ).all()
            batch = [
                OutboxRow(
                    seq=row.seq,
                    event_id=row.event_id,
                    exchange=row.exchange,
                    routing_key=row.routing_key,
                    aggregate_id=row.aggregate_id,
                    body=row.body.encode(),
                    created_at=row.created_at,
                    attempts=row.attempts,
                )
                for row in rows
                if not row.blocked
            ]
            blocked = len(rows) - len(batch)
            if not batch:
                return BatchResult(claimed=len(rows), blocked=blocked, delivered=0, failed=0)
            delivery = await self._sink.deliver(outbox, batch)
            if delivery.delivered:
                await conn.execute(table.mark_sent, {"seqs": delivery.delivered})
            if delivery.failed:
                await conn.execute(table.count_attempt, {"seqs": delivery.failed})
        metrics.RELAY_BATCH_SIZE.labels(outbox).observe(len(batch))
        metrics.RELAY_DELIVERED.labels(outbox, self._sink.mode).inc(len(delivery.delivered))
        return BatchResult(
            claimed=len(rows),
            blocked=blocked,
            delivered=len(delivery.delivered),
            failed=len(delivery.failed),
            error=delivery.error,
        )

    async def _relay_loop(self, outbox: str) -> None:
        wake = self._wakes[outbox]
        backoff = Backoff()
        bound = log.bind(outbox=outbox)
        while not self._stopping:
            wake.clear()
            try:
                result = await self.relay_once(outbox)
            except Exception as exc:
                outage = is_connection_error(exc)
                metrics.RELAY_FAILURES.labels(outbox, "database" if outage else "error").inc()
                bound.warning("relay_batch_failed", error=describe_error(exc), exc_info=not outage)
                await backoff.sleep()
                continue
            if result.error is not None:
                metrics.RELAY_FAILURES.labels(outbox, "sink").inc()
                bound.warning(
                    "relay_delivery_failed",
                    error=describe_error(result.error),
                    delivered=result.delivered,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_seconds):
                        await self._sink.wait_ready()
                await backoff.sleep()
                continue
            backoff.reset()
            if result.delivered and result.claimed >= self._batch_size:
                continue  # more rows are waiting
            timeout = self._idle_timeout()
            if result.blocked and not result.delivered:
                timeout = min(timeout, _CONTENDED_PAUSE)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()

    def _idle_timeout(self) -> float:
        due = self._sink.next_due()
        if due is None:
            return self._idle_seconds
        return max(0.0, min(self._idle_seconds, due - asyncio.get_running_loop().time()))

    def _wake_all(self) -> None:
        for wake in self._wakes.values():
            wake.set()

    async def _listen(self) -> None:
        conninfo = libpq_conninfo(self._engine)
        backoff = Backoff(maximum=5.0)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                    backoff.reset()
                    self.listening.set()
                    # Rows committed while nobody listened are found by the next batch.
                    self._wake_all()
                    while True:
                        async for notify in conn.notifies(timeout=self._idle_seconds):
                            wake = self._wakes.get(notify.payload)
                            if wake is not None:
                                wake.set()
                        # Quiet for a while: make sure the connection is still alive.
                        await conn.execute("SELECT 1")
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("relay_listen_failed", error=describe_error(exc))
                self._wake_all()
                await backoff.sleep()

    async def _housekeeping(self, outbox: str) -> None:
        table = self._tables[outbox]
        last_prune = time.monotonic()
        while True:
            try:
                async with self._engine.connect() as conn:
                    backlog, oldest = (await conn.execute(table.backlog)).one()
                metrics.OUTBOX_BACKLOG.labels(outbox).set(backlog)
                metrics.OUTBOX_OLDEST_AGE.labels(outbox).set(float(oldest or 0.0))
                if time.monotonic() - last_prune >= self._prune_interval:
                    last_prune = time.monotonic()
                    pruned = await self.prune(outbox)
                    if pruned:
                        log.info("outbox_pruned", outbox=outbox, rows=pruned)
            except Exception as exc:
                log.warning("outbox_housekeeping_failed", outbox=outbox, error=describe_error(exc))
            await asyncio.sleep(min(_GAUGE_INTERVAL, self._prune_interval))

    async def prune(self, outbox: str) -> int:
        """Delete rows sent longer ago than the retention, in chunks; returns rows deleted."""
        table = self._tables[outbox]
        total = 0
        while True:
            async with self._engine.begin() as conn:
                result = await conn.execute(table.prune, {"age": self._prune_after})
            total += result.rowcount
            metrics.OUTBOX_PRUNED.labels(outbox).inc(result.rowcount)
            if result.rowcount < _PRUNE_CHUNK:
                return total


class AmqpPublisher:
    """Sink publishing to RabbitMQ: persistent messages, publisher confirms, pipelined per batch."""

    mode = "amqp"

    def __init__(
        self, url: str, *, confirm_timeout: float = 30.0, reconnect_seconds: float = 2.0
    ) -> None:
        self._url = url
        self._confirm_timeout = confirm_timeout
        self._reconnect_seconds = reconnect_seconds
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}

    async def start(self) -> None:
        self._connection = await connect(self._url, reconnect_seconds=self._reconnect_seconds)
        channel = await self._connection.channel(publisher_confirms=True)
        assert isinstance(channel, AbstractRobustChannel)
        self._channel = channel
        log.info("relay_connected", url=redact(self._url))

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = None
        self._channel = None
        self._exchanges.clear()

    async def wait_ready(self) -> None:
        if self._connection is not None:
            await self._connection.connected.wait()
        if self._channel is not None:
            await self._channel.ready()

    def held(self, outbox: str) -> list[int]:
        return []

    def next_due(self) -> float | None:
        return None

    async def _exchange(self, name: str) -> AbstractExchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            if self._channel is None:
                raise RuntimeError("the publisher is not started")
            exchange = await declare_exchange(self._channel, name)
            self._exchanges[name] = exchange
        return exchange

    async def deliver(self, outbox: str, rows: Sequence[OutboxRow]) -> Delivery:
        try:
            exchanges = {name: await self._exchange(name) for name in {r.exchange for r in rows}}
        except Exception as exc:
            return Delivery(error=exc)
        started = time.perf_counter()
        # One coroutine per row: frames go out in order on one channel and the confirms
        # come back pipelined, so a batch costs about one round trip, not one per row.
        results = await asyncio.gather(
            *(
                exchanges[row.exchange].publish(
                    _message(outbox, row),
                    routing_key=row.routing_key,
                    mandatory=False,
                    timeout=self._confirm_timeout,
                )
                for row in rows
            ),
            return_exceptions=True,
        )
        metrics.RELAY_CONFIRM_SECONDS.labels(outbox).observe(time.perf_counter() - started)
        delivery = Delivery()
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                delivery.error = delivery.error or result
            else:
                delivery.delivered.append(row.seq)
        return delivery


def _message(outbox: str, row: OutboxRow) -> aio_pika.Message:
    headers: dict[str, FieldValue] = {
        HEADER_OUTBOX: outbox,
        HEADER_OUTBOX_SEQ: row.seq,
        HEADER_RECORDED_AT: row.created_at.timestamp(),
    }
    if row.aggregate_id is not None:
        headers[HEADER_AGGREGATE] = str(row.aggregate_id)
    return aio_pika.Message(
        row.body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(row.event_id),
        timestamp=row.created_at,
        type=row.routing_key,
        app_id="smarttasks",
        headers=headers,
    )


async def run_relay(settings: MessagingSettings) -> None:
    """The cluster-mode relay process (`smarttasks run relay`): outboxes to RabbitMQ.

    Serves every table in `relay_outboxes` until SIGTERM or SIGINT, then lets the
    current batches finish (cancelling them after a grace period).
    """
    serve_metrics(settings.metrics_port)
    engine = create_engine(settings.database_url, pool_size=2 * len(settings.relay_outboxes) + 1)
    relay = OutboxRelay(
        engine,
        AmqpPublisher(
            settings.amqp_url,
            confirm_timeout=settings.relay_confirm_timeout_seconds,
            reconnect_seconds=settings.amqp_reconnect_seconds,
        ),
        outboxes=settings.relay_outboxes,
        batch_size=settings.relay_batch_size,
        idle_seconds=settings.relay_idle_seconds,
        prune_after_seconds=settings.relay_prune_after_seconds,
        prune_interval_seconds=settings.relay_prune_interval_seconds,
    )
    task = asyncio.create_task(relay.run())
    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        log.info("relay_stopping")
        relay.stop()
        loop.call_later(_STOP_GRACE_SECONDS, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await engine.dispose()
