"""Embedded mode: the relay hands outbox rows to in-process consumers instead of RabbitMQ.

Same relay (claim in order, mark after delivery), same consumers and handlers, same
guarantees: a row is marked delivered only after every matching consumer committed it
(or dead-lettered it); each consumer's inbox absorbs redeliveries; a failing handler is
retried after the configured delays and, out of attempts, its event is written to the
consumer's dead-letter table with the reason. Rows of an aggregate wait behind a row
being retried, so one task's events reach a consumer in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from smarttasks.core.db import create_sessionmaker
from smarttasks.core.messaging import metrics
from smarttasks.core.messaging.envelope import (
    Envelope,
    UnprocessableMessage,
    describe_error,
)
from smarttasks.core.messaging.inbox import (
    Outcome,
    Settlement,
    SettlementHook,
    apply_once,
    prune_inbox,
    record_dead_letter,
)
from smarttasks.core.messaging.relay import Delivery, OutboxRelay, OutboxRow
from smarttasks.core.messaging.retry import RetryPolicy, is_connection_error
from smarttasks.core.messaging.routing import Consumer
from smarttasks.core.messaging.settings import MessagingSettings
from smarttasks.core.outbox import outbox_waker_attached

log = structlog.get_logger()

_STOP_GRACE_SECONDS = 10.0


class _Transient(Exception):
    """Internal: the database went away mid-delivery; the whole batch is retried later."""


class LocalSink:
    """Sink delivering rows to in-process consumers, one database session per message."""

    mode = "local"

    def __init__(
        self,
        engine: AsyncEngine,
        consumers: Sequence[Consumer],
        *,
        retry: RetryPolicy,
        concurrency: int = 8,
        on_settled: SettlementHook | None = None,
    ) -> None:
        names = [consumer.name for consumer in consumers]
        if len(set(names)) != len(names):
            raise ValueError(f"consumer names must be unique: {names}")
        for consumer in consumers:
            if consumer.dead_letters is None:
                raise ValueError(
                    f"consumer {consumer.name} needs a dead_letters table in embedded mode"
                )
        self._sessions = create_sessionmaker(engine)
        self._consumers = tuple(consumers)
        self._retry = retry
        self._concurrency = concurrency
        self._on_settled = on_settled
        # Failed attempts per (event, consumer) and when held rows are due again. Kept in
        # memory; after a restart the row's `attempts` column is the starting point.
        self._attempts: dict[tuple[uuid.UUID, str], int] = {}
        self._held: dict[str, dict[int, float]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def wait_ready(self) -> None:
        return None

    def held(self, outbox: str) -> list[int]:
        rows = self._held.get(outbox)
        if not rows:
            return []
        now = asyncio.get_running_loop().time()
        for seq in [seq for seq, due in rows.items() if due <= now]:
            del rows[seq]
        return list(rows)

    def next_due(self) -> float | None:
        dues = [due for rows in self._held.values() for due in rows.values()]
        return min(dues) if dues else None

    async def deliver(self, outbox: str, rows: Sequence[OutboxRow]) -> Delivery:
        groups: dict[uuid.UUID, list[OutboxRow]] = {}
        for row in rows:
            groups.setdefault(row.aggregate_id or row.event_id, []).append(row)
        delivery = Delivery()
        limit = asyncio.Semaphore(self._concurrency)

        async def deliver_group(group: list[OutboxRow]) -> None:
            async with limit:
                for row in group:
                    due = await self._deliver_row(row)
                    if due is None:
                        delivery.delivered.append(row.seq)
                        continue
                    delivery.failed.append(row.seq)
                    self._held.setdefault(outbox, {})[row.seq] = due
                    break  # later rows of this aggregate wait for it

        try:
            async with asyncio.TaskGroup() as tasks:
                for group in groups.values():
                    tasks.create_task(deliver_group(group))
        except* _Transient as transient:
            delivery.error = transient.exceptions[0].__cause__ or transient.exceptions[0]
        return delivery

    async def _deliver_row(self, row: OutboxRow) -> float | None:
        """Deliver to every matching consumer; None when all are done, else when to retry."""
        payload: dict[str, Any] = json.loads(row.body)
        retry_in: float | None = None
        for consumer in self._consumers:
            if consumer.exchange != row.exchange:
                continue
            route = consumer.route(row.routing_key)
            if route is None:
                continue
            key = (row.event_id, consumer.name)
            attempt = self._attempts.get(key, row.attempts) + 1
            try:
                event = route.parse(payload)
            except ValidationError as exc:
                await self._dead_letter(consumer, row, payload, attempt, "invalid", exc)
                continue
            envelope: Envelope[Any] = Envelope(
                id=row.event_id,
                routing_key=row.routing_key,
                exchange=row.exchange,
                event=event,
                payload=payload,
                aggregate_id=row.aggregate_id,
                attempt=attempt,
                recorded_at=row.created_at,
            )
            try:
                outcome = await apply_once(self._sessions, consumer, route, envelope)
            except UnprocessableMessage as exc:
                await self._dead_letter(consumer, row, payload, attempt, "rejected", exc)
                continue
            except Exception as exc:
                if is_connection_error(exc):
                    raise _Transient() from exc
                delay = self._retry.next_delay(attempt)
                if delay is None:
                    await self._dead_letter(consumer, row, payload, attempt, "max_attempts", exc)
                    continue
                self._attempts[key] = attempt
                retry_in = delay if retry_in is None else min(retry_in, delay)
                log.warning(
                    "subscriber_retry_scheduled",
                    consumer=consumer.name,
                    event_id=str(row.event_id),
                    routing_key=row.routing_key,
                    attempt=attempt,
                    delay=delay,
                    error=describe_error(exc),
                )
                metrics.CONSUMER_RETRIES.labels(consumer.name).inc()
                self._settle(consumer, row, Outcome.RETRIED, attempt)
                continue
            self._attempts.pop(key, None)
            if outcome is Outcome.APPLIED:
                lag = time.time() - row.created_at.timestamp()
                metrics.CONSUMER_LAG.labels(consumer.name).observe(max(lag, 0.0))
            self._settle(consumer, row, outcome, attempt)
        if retry_in is None:
            return None
        return asyncio.get_running_loop().time() + retry_in

    async def _dead_letter(
        self,
        consumer: Consumer,
        row: OutboxRow,
        payload: dict[str, Any],
        attempt: int,
        reason: str,
        exc: BaseException,
    ) -> None:
        assert consumer.dead_letters is not None
        log.error(
            "subscriber_dead_lettered",
            consumer=consumer.name,
            event_id=str(row.event_id),
            routing_key=row.routing_key,
            reason=reason,
            attempts=attempt,
            error=describe_error(exc),
        )
        try:
            await record_dead_letter(
                self._sessions,
                consumer.dead_letters,
                consumer=consumer.name,
                event_id=row.event_id,
                exchange=row.exchange,
                routing_key=row.routing_key,
                payload=payload,
                reason=reason,
                error=describe_error(exc),
                attempts=attempt,
            )
        except Exception as write_error:
            if is_connection_error(write_error):
                raise _Transient() from write_error
            raise
        self._attempts.pop((row.event_id, consumer.name), None)
        metrics.CONSUMER_DEAD_LETTERS.labels(consumer.name, reason).inc()
        self._settle(consumer, row, Outcome.DEAD_LETTERED, attempt, reason)

    def _settle(
        self,
        consumer: Consumer,
        row: OutboxRow,
        outcome: Outcome,
        attempt: int,
        reason: str | None = None,
    ) -> None:
        metrics.CONSUMER_MESSAGES.labels(consumer.name, outcome.value).inc()
        if self._on_settled is not None:
            self._on_settled(
                Settlement(consumer.name, row.event_id, row.routing_key, outcome, attempt, reason)
            )


class LocalRelay:
    """The embedded platform's event delivery: start `run()` as a task in the app's lifespan.

    ```python
    relay = LocalRelay(engine, [automation_consumer, notifications_consumer],
                       outboxes=["tasks.outbox", "automation.outbox"])
    async with relay.running():
        yield
    ```
    """

    def __init__(
        self,
        engine: AsyncEngine,
        consumers: Sequence[Consumer],
        *,
        outboxes: Sequence[str],
        settings: MessagingSettings | None = None,
        on_settled: SettlementHook | None = None,
    ) -> None:
        settings = settings or MessagingSettings()
        self._engine = engine
        self._consumers = tuple(consumers)
        self._settings = settings
        self.sink = LocalSink(
            engine,
            consumers,
            retry=RetryPolicy.of(
                settings.consumer_retry_delays_seconds, settings.consumer_max_attempts
            ),
            concurrency=settings.consumer_concurrency,
            on_settled=on_settled,
        )
        self.relay = OutboxRelay(
            engine,
            self.sink,
            outboxes=outboxes,
            batch_size=settings.relay_batch_size,
            idle_seconds=settings.relay_idle_seconds,
            prune_after_seconds=settings.relay_prune_after_seconds,
            prune_interval_seconds=settings.relay_prune_interval_seconds,
        )

    def stop(self) -> None:
        """Let the current batches finish, then return from `run()`."""
        self.relay.stop()

    def wake(self, outbox: str) -> None:
        """Called after a commit through this relay's engine that added rows to `outbox`."""
        self.relay.wake(outbox)

    async def run(self) -> None:
        """Deliver until `stop()` or cancellation (a cancelled batch is delivered again later).

        Commits through the same engine (the app's requests, the engine's firings) wake
        the relay directly; other processes reach it with NOTIFY.
        """
        pruning = asyncio.create_task(self._prune_inboxes())
        try:
            with outbox_waker_attached(self._engine, self):
                await self.relay.run()
        finally:
            pruning.cancel()
            await asyncio.gather(pruning, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LocalRelay]:
        """Run in the background for the duration of the block; stop cleanly at its end."""
        task = asyncio.create_task(self.run(), name="local-relay")
        try:
            yield self
        finally:
            self.stop()
            try:
                async with asyncio.timeout(_STOP_GRACE_SECONDS):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _prune_inboxes(self) -> None:
        while True:
            await asyncio.sleep(self._settings.relay_prune_interval_seconds)
            for consumer in self._consumers:
                try:
                    await prune_inbox(
                        self._engine,
                        consumer.inbox,
                        consumer=consumer.name,
                        older_than_seconds=self._settings.inbox_retention_seconds,
                    )
                except Exception as exc:
                    log.warning(
                        "inbox_prune_failed", consumer=consumer.name, error=describe_error(exc)
                    )
