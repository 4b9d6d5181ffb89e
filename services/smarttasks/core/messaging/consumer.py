"""Consuming from RabbitMQ: one session per message, inbox dedupe, ack after commit, retries.

Every message ends in exactly one of these ways, and is acknowledged only afterwards:

- applied: the handler ran and its transaction (with the inbox row) committed;
- duplicate: the inbox already had the event id, nothing runs again;
- retried: the handler failed; a copy goes to the retry queue of the next delay with
  its attempt count and last error in headers, and comes back after the TTL;
- dead-lettered: unparseable, not matching the handler's schema, no handler, refused
  by the handler (`UnprocessableMessage`) or out of attempts; a copy goes to the
  consumer's dead-letter queue with the reason and error in headers.

While the database is unreachable a message is not failed: its lane waits and tries
again, so an outage uses up no attempts. A message that kills the process each time is
dead-lettered by the broker after `consumer_delivery_limit` deliveries.

Messages are processed in `consumer_concurrency` lanes; all messages of one aggregate
share a lane, so one task's events are applied in the order they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
import zlib
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from smarttasks.core.db import create_engine, create_sessionmaker
from smarttasks.core.messaging import metrics
from smarttasks.core.messaging.connection import connect, redact
from smarttasks.core.messaging.envelope import (
    HEADER_AGGREGATE,
    HEADER_ATTEMPT,
    HEADER_CONSUMER,
    HEADER_DEAD_REASON,
    HEADER_ERROR,
    HEADER_EXCHANGE,
    HEADER_FAILED_AT,
    HEADER_RECORDED_AT,
    HEADER_ROUTING_KEY,
    Envelope,
    MalformedMessage,
    UnprocessableMessage,
    decode_payload,
    describe_error,
    parse_uuid,
)
from smarttasks.core.messaging.inbox import (
    Outcome,
    Settlement,
    SettlementHook,
    apply_many,
    apply_once,
    prune_inbox,
)
from smarttasks.core.messaging.retry import (
    Backoff,
    RetryPolicy,
    database_available,
    is_connection_error,
)
from smarttasks.core.messaging.routing import Consumer, Route
from smarttasks.core.messaging.settings import MessagingSettings
from smarttasks.core.messaging.topology import consumer_queues, declare_consumer_queues

log = structlog.get_logger()

_DRAIN_SECONDS = 30.0


class ConsumerRunner:
    """Runs one `Consumer` against RabbitMQ until `stop()` or cancellation."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        engine: AsyncEngine,
        settings: MessagingSettings,
        on_settled: SettlementHook | None = None,
    ) -> None:
        if not consumer.routes:
            raise ValueError(f"consumer {consumer.name} has no handlers")
        self.consumer = consumer
        self._engine = engine
        self._sessions = create_sessionmaker(engine)
        self._settings = settings
        self._policy = RetryPolicy.of(
            settings.consumer_retry_delays_seconds, settings.consumer_max_attempts
        )
        self._queues = consumer_queues(consumer.name, self._policy.used_delays())
        self._on_settled = on_settled
        self._lanes: list[asyncio.Queue[AbstractIncomingMessage]] = [
            asyncio.Queue() for _ in range(settings.consumer_concurrency)
        ]
        self._stop = asyncio.Event()
        self._publish_channel: AbstractChannel | None = None
        self._log = log.bind(consumer=consumer.name)
        self.ready = asyncio.Event()
        """Set once the queues are declared and messages are being consumed."""

    def stop(self) -> None:
        """Stop taking messages, finish the ones in hand, close."""
        self._stop.set()

    async def run(self) -> None:
        connecting = asyncio.create_task(
            connect(
                self._settings.amqp_url, reconnect_seconds=self._settings.amqp_reconnect_seconds
            )
        )
        stopping = asyncio.create_task(self._stop.wait())
        try:
            # A consumer asked to stop while the broker is still unreachable stops at once.
            await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
        if connecting.cancelled() or self._stop.is_set():
            if not connecting.cancelled():
                await connecting.result().close()
            return
        connection = connecting.result()
        lanes: list[asyncio.Task[None]] = []
        try:
            consume_channel = await connection.channel()
            await consume_channel.set_qos(prefetch_count=self._settings.consumer_prefetch)
            # A separate confirmed channel for retries and dead letters; `on_return_raises`
            # turns a missing retry or dead-letter queue into an error, not a lost message.
            publish_channel = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._publish_channel = publish_channel
            queue = await declare_consumer_queues(
                consume_channel,
                consumer=self.consumer.name,
                exchange=self.consumer.exchange,
                patterns=self.consumer.patterns,
                retry_delays=self._policy.used_delays(),
                delivery_limit=self._settings.consumer_delivery_limit,
            )
            lanes = [
                asyncio.create_task(self._lane(lane), name=f"{self.consumer.name}-lane-{i}")
                for i, lane in enumerate(self._lanes)
            ]
            tag = await queue.consume(self._dispatch)
            self._log.info(
                "consumer_started", url=redact(self._settings.amqp_url), queue=queue.name
            )
            self.ready.set()
            pruning = asyncio.create_task(self._prune_inbox_periodically())
            try:
                await self._stop.wait()
                await self._drain(queue, tag)
            finally:
                pruning.cancel()
                await asyncio.gather(pruning, return_exceptions=True)
        finally:
            self.ready.clear()
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            await connection.close()
            self._log.info("consumer_stopped")

    async def _drain(self, queue: AbstractQueue, tag: str) -> None:
        with contextlib.suppress(AMQPError, ChannelInvalidStateError, OSError):
            await queue.cancel(tag)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN_SECONDS):
                await asyncio.gather(*(lane.join() for lane in self._lanes))

    async def _dispatch(self, message: AbstractIncomingMessage) -> None:
        # Runs in delivery order, before any await: one aggregate's messages stay in order.
        key = message.headers.get(HEADER_AGGREGATE) or message.message_id or ""
        lane = zlib.crc32(str(key).encode()) % len(self._lanes)
        self._lanes[lane].put_nowait(message)

    async def _lane(self, lane: asyncio.Queue[AbstractIncomingMessage]) -> None:
        while True:
            batch = [await lane.get()]
            # Messages already waiting behind it share its transaction (same lane: in order).
            while len(batch) < self._settings.consumer_batch_size and not lane.empty():
                batch.append(lane.get_nowait())
            try:
                if len(batch) == 1:
                    await self._guarded(batch[0], self._process(batch[0]))
                else:
                    await self._process_batch(batch)
            finally:
                for _ in batch:
                    lane.task_done()

    async def _guarded(
        self, message: AbstractIncomingMessage, work: Coroutine[Any, Any, None]
    ) -> None:
        try:
            await work
        except Exception:
            await self._crashed(message)

    async def _crashed(self, message: AbstractIncomingMessage) -> None:
        # A bug here must not stall the lane or drop the message: return it to the queue
        # (the delivery limit ends a loop).
        self._log.exception("consumer_message_crashed", message_id=message.message_id)
        with contextlib.suppress(AMQPError, ChannelInvalidStateError, OSError):
            await message.nack(requeue=True)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        prepared = await self._prepare(message)
        if prepared is not None:
            await self._apply(prepared)

    async def _process_batch(self, messages: list[AbstractIncomingMessage]) -> None:
        """Apply waiting messages in one transaction; one by one if any of them fails."""
        prepared: list[_Prepared] = []
        for message in messages:
            try:
                item = await self._prepare(message)
            except Exception:
                await self._crashed(message)
                continue
            if item is not None:
                prepared.append(item)
        if len(prepared) > 1:
            started = time.perf_counter()
            try:
                outcomes = await apply_many(
                    self._sessions,
                    self.consumer,
                    [(item.route, item.envelope) for item in prepared],
                )
            except Exception as exc:
                self._log.info(
                    "consumer_batch_rolled_back", size=len(prepared), error=describe_error(exc)
                )
            else:
                share = (time.perf_counter() - started) / len(prepared)
                for item, outcome in zip(prepared, outcomes, strict=True):
                    metrics.CONSUMER_HANDLE_SECONDS.labels(self.consumer.name).observe(share)
                    await self._guarded(item.message, self._settled(item, outcome))
                return
        for item in prepared:
            await self._guarded(item.message, self._apply(item))

    async def _prepare(self, message: AbstractIncomingMessage) -> _Prepared | None:
        """The message decoded and routed; None when it was dead-lettered instead."""
        headers = dict(message.headers)
        routing_key = _text(headers.get(HEADER_ROUTING_KEY)) or message.routing_key or ""
        exchange = _text(headers.get(HEADER_EXCHANGE)) or message.exchange or ""
        attempt = _attempt(headers.get(HEADER_ATTEMPT))
        try:
            event_id, payload = decode_payload(message.body)
        except MalformedMessage as exc:
            await self._dead_letter(message, None, routing_key, exchange, attempt, "malformed", exc)
            return None
        route = self.consumer.route(routing_key)
        if route is None:
            error = LookupError(f"no handler for routing key {routing_key!r}")
            await self._dead_letter(
                message, event_id, routing_key, exchange, attempt, "no_handler", error
            )
            return None
        try:
            event = route.parse(payload)
        except ValidationError as exc:
            await self._dead_letter(
                message, event_id, routing_key, exchange, attempt, "invalid", exc
            )
            return None
        envelope: Envelope[Any] = Envelope(
            id=event_id,
            routing_key=routing_key,
            exchange=exchange,
            event=event,
            payload=payload,
            aggregate_id=parse_uuid(headers.get(HEADER_AGGREGATE)),
            attempt=attempt,
            recorded_at=_recorded_at(headers.get(HEADER_RECORDED_AT)),
        )
        return _Prepared(message, headers, route, envelope)

    async def _apply(self, item: _Prepared) -> None:
        """Apply one message in its own transaction, with retries and dead letters."""
        message, envelope = item.message, item.envelope
        outage = Backoff(initial=0.2, maximum=10.0)
        while True:
            started = time.perf_counter()
            try:
                outcome = await apply_once(self._sessions, self.consumer, item.route, envelope)
            except UnprocessableMessage as exc:
                await self._dead_letter(
                    message,
                    envelope.id,
                    envelope.routing_key,
                    envelope.exchange,
                    envelope.attempt,
                    "rejected",
                    exc,
                )
                return
            except Exception as exc:
                if is_connection_error(exc) and not await database_available(self._engine):
                    self._log.warning("consumer_database_unavailable", error=describe_error(exc))
                    await outage.sleep()
                    continue
                await self._failed(message, envelope, item.headers, exc)
                return
            break
        metrics.CONSUMER_HANDLE_SECONDS.labels(self.consumer.name).observe(
            time.perf_counter() - started
        )
        await self._settled(item, outcome)

    async def _settled(self, item: _Prepared, outcome: Outcome) -> None:
        """After the commit: lag, acknowledgement, settlement."""
        envelope = item.envelope
        if outcome is Outcome.APPLIED and envelope.recorded_at is not None:
            lag = time.time() - envelope.recorded_at.timestamp()
            metrics.CONSUMER_LAG.labels(self.consumer.name).observe(max(lag, 0.0))
        await self._ack(item.message)
        self._settle(envelope.id, envelope.routing_key, outcome, envelope.attempt)

    async def _failed(
        self,
        message: AbstractIncomingMessage,
        envelope: Envelope[Any],
        headers: Mapping[str, Any],
        exc: Exception,
    ) -> None:
        delay = self._policy.next_delay(envelope.attempt)
        if delay is None:
            await self._dead_letter(
                message,
                envelope.id,
                envelope.routing_key,
                envelope.exchange,
                envelope.attempt,
                "max_attempts",
                exc,
            )
            return
        self._log.warning(
            "consumer_retry_scheduled",
            event_id=str(envelope.id),
            routing_key=envelope.routing_key,
            attempt=envelope.attempt,
            delay=delay,
            error=describe_error(exc),
        )
        retry_headers = {
            **headers,
            HEADER_ATTEMPT: envelope.attempt + 1,
            HEADER_ROUTING_KEY: envelope.routing_key,
            HEADER_EXCHANGE: envelope.exchange,
            HEADER_ERROR: describe_error(exc),
        }
        if await self._republish(message, self._queues.retry_queue(delay), retry_headers):
            metrics.CONSUMER_RETRIES.labels(self.consumer.name).inc()
            await self._ack(message)
            self._settle(envelope.id, envelope.routing_key, Outcome.RETRIED, envelope.attempt)

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        event_id: uuid.UUID | None,
        routing_key: str,
        exchange: str,
        attempt: int,
        reason: str,
        exc: BaseException,
    ) -> None:
        self._log.error(
            "consumer_dead_lettered",
            event_id=str(event_id) if event_id else None,
            message_id=message.message_id,
            routing_key=routing_key,
            reason=reason,
            attempts=attempt,
            error=describe_error(exc),
        )
        dead_headers = {
            **message.headers,
            HEADER_CONSUMER: self.consumer.name,
            HEADER_DEAD_REASON: reason,
            HEADER_ERROR: describe_error(exc),
            HEADER_ATTEMPT: attempt,
            HEADER_ROUTING_KEY: routing_key,
            HEADER_EXCHANGE: exchange,
            HEADER_FAILED_AT: datetime.now(UTC).isoformat(),
        }
        if await self._republish(message, self._queues.dead, dead_headers):
            metrics.CONSUMER_DEAD_LETTERS.labels(self.consumer.name, reason).inc()
            await self._ack(message)
            self._settle(event_id, routing_key, Outcome.DEAD_LETTERED, attempt, reason)

    async def _republish(
        self, message: AbstractIncomingMessage, queue: str, headers: Mapping[str, Any]
    ) -> bool:
        """Publish a copy to one of the consumer's queues and wait for the confirm."""
        copy = aio_pika.Message(
            message.body,
            headers=dict(headers),
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            correlation_id=message.correlation_id,
        )
        if self._publish_channel is None:
            return False
        try:
            await self._publish_channel.default_exchange.publish(
                copy, routing_key=queue, timeout=self._settings.relay_confirm_timeout_seconds
            )
        except (AMQPError, ChannelInvalidStateError, OSError, TimeoutError) as exc:
            # Not acked either: the broker hands the original out again later.
            self._log.warning("consumer_republish_failed", queue=queue, error=describe_error(exc))
            return False
        return True

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.ack()
        except (AMQPError, ChannelInvalidStateError, OSError) as exc:
            # The channel went away after the commit; the redelivery will be a duplicate.
            self._log.info("consumer_ack_lost", message_id=message.message_id, error=str(exc))

    def _settle(
        self,
        event_id: uuid.UUID | None,
        routing_key: str,
        outcome: Outcome,
        attempt: int,
        reason: str | None = None,
    ) -> None:
        metrics.CONSUMER_MESSAGES.labels(self.consumer.name, outcome.value).inc()
        if self._on_settled is not None:
            self._on_settled(
                Settlement(self.consumer.name, event_id, routing_key, outcome, attempt, reason)
            )

    async def _prune_inbox_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._settings.relay_prune_interval_seconds)
            try:
                pruned = await prune_inbox(
                    self._engine,
                    self.consumer.inbox,
                    consumer=self.consumer.name,
                    older_than_seconds=self._settings.inbox_retention_seconds,
                )
            except Exception as exc:
                self._log.warning("inbox_prune_failed", error=describe_error(exc))
            else:
                if pruned:
                    self._log.info("inbox_pruned", rows=pruned)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A message decoded and routed, ready for its handler."""

    message: AbstractIncomingMessage
    headers: dict[str, Any]
    route: Route
    envelope: Envelope[Any]


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _attempt(value: object) -> int:
    try:
        return max(1, int(value)) if isinstance(value, int | str | bytes) else 1
    except ValueError:
        return 1


def _recorded_at(value: object) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return None


async def run_consumers(
    consumers: Sequence[Consumer],
    settings: MessagingSettings,
    *,
    engine: AsyncEngine | None = None,
) -> None:
    """A consumer process (e.g. `smarttasks run notifications`): runs until SIGTERM or SIGINT."""
    own_engine = engine is None
    engine = engine or create_engine(settings.database_url, pool_size=settings.database_pool_size)
    runners = [ConsumerRunner(c, engine=engine, settings=settings) for c in consumers]
    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        for runner in runners:
            runner.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    try:
        async with asyncio.TaskGroup() as group:
            for runner in runners:
                group.create_task(runner.run())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if own_engine:
            await engine.dispose()
