"""The delivery worker: claims due deliveries, sends them, records attempts, schedules retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.core.db import unit_of_work
from smarttasks.notifications import metrics
from smarttasks.notifications.channels import Outcome, Result
from smarttasks.notifications.dispatch import Attempted, Dispatcher
from smarttasks.notifications.models import DeliveryStatus
from smarttasks.notifications.repository import Claimed, DeliveryRepository
from smarttasks.notifications.retries import RetryPolicy

log = structlog.get_logger()

MAX_ERROR_LENGTH = 2000

# Called with the recorded outcomes (one dict per delivery) after each batch commits.
BatchObserver = Callable[[Sequence[dict[str, Any]]], None]


class DeliveryWorker:
    """Sends due deliveries from the `deliveries` table; any number may run at once.

    Rows are claimed with `FOR UPDATE SKIP LOCKED` and leased, so two workers never send
    the same delivery at once and a crashed worker's rows come back when the lease ends.
    Between batches the worker sleeps until the next retry is due or `wake()` is called
    (by the NOTIFY listener when deliveries are recorded or re-queued).
    """

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        policy: RetryPolicy,
        batch_size: int = 200,
        concurrency: int = 100,
        lease_seconds: float = 120.0,
        idle_seconds: float = 60.0,
        name: str = "worker",
        observer: BatchObserver | None = None,
    ) -> None:
        self._sessions = sessions
        self._dispatcher = dispatcher
        self._policy = policy
        self._batch_size = batch_size
        self._slots = asyncio.Semaphore(concurrency)
        self._lease = timedelta(seconds=lease_seconds)
        self._idle = idle_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self.name = name
        self._observer = observer

    def wake(self) -> None:
        """Look for due deliveries now."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the current batch, then return from `run`."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        log.info("delivery_worker_started", worker=self.name)
        failures = 0
        while not self._stopping:
            self._wake.clear()  # before claiming: a wake-up during the claim is not lost
            try:
                await self.run_once()
                failures = 0
                pause = await self._until_next_due()
            except (SQLAlchemyError, OSError) as exc:
                failures += 1
                pause = min(2.0**failures, 30.0)
                log.warning("delivery_worker_db_error", worker=self.name, error=str(exc))
            except Exception:  # a bug must not end the worker; claimed rows come back by lease
                failures += 1
                pause = min(2.0**failures, 30.0)
                log.exception("delivery_worker_crashed", worker=self.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()
        log.info("delivery_worker_stopped", worker=self.name)

    async def _until_next_due(self) -> float:
        async with unit_of_work(self._sessions) as session:
            due = await DeliveryRepository(session).next_due_at()
        if due is None:
            return self._idle
        return min(max((due - datetime.now(UTC)).total_seconds(), 0.0), self._idle)

    async def run_once(self) -> int:
        """Send batches until nothing is due; returns how many deliveries were attempted.

        Recording a batch's outcomes overlaps with claiming and sending the next one, so
        the channels are not idle during that database round trip.
        """
        total = 0
        recording: asyncio.Task[None] | None = None
        try:
            while not self._stopping:
                async with unit_of_work(self._sessions) as session:
                    claimed = await DeliveryRepository(session).claim_due(
                        limit=self._batch_size, lease=self._lease
                    )
                if not claimed:
                    break
                outcomes = await asyncio.gather(*(self._attempt(d) for d in claimed))
                if recording is not None:
                    await recording
                recording = asyncio.create_task(self._finish(claimed, outcomes))
                total += len(claimed)
        finally:
            if recording is not None:
                await recording
        return total

    async def _finish(
        self,
        claimed: Sequence[Claimed],
        outcomes: Sequence[tuple[Attempted, datetime, float]],
    ) -> None:
        updates: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        for delivery, (attempted, started, duration) in zip(claimed, outcomes, strict=True):
            update, attempt = self._record(delivery, attempted, started, duration)
            updates.append(update)
            attempts.append(attempt)
        async with unit_of_work(self._sessions) as session:
            await DeliveryRepository(session).finish(updates, attempts)
        if self._observer is not None:
            self._observer(updates)

    async def _attempt(self, delivery: Claimed) -> tuple[Attempted, datetime, float]:
        started = datetime.now(UTC)
        clock = time.perf_counter()
        async with self._slots:
            try:
                attempted = await self._dispatcher.attempt(delivery)
            except Exception as exc:  # a bug must cost one attempt, not the worker
                log.exception("delivery_attempt_crashed", delivery_id=str(delivery.id))
                attempted = Attempted(
                    Result.temporary(f"internal error: {type(exc).__name__}: {exc}"),
                    delivery.address,
                )
        duration = time.perf_counter() - clock
        metrics.SEND_SECONDS.labels(delivery.channel, attempted.result.outcome.value).observe(
            duration
        )
        return attempted, started, duration

    def _record(
        self, delivery: Claimed, attempted: Attempted, started: datetime, duration: float
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        result = attempted.result
        now = datetime.now(UTC)
        used = delivery.attempts - delivery.attempts_offset
        update: dict[str, Any] = {
            "id": delivery.id,
            "address": attempted.address,
            "updated_at": now,
            "next_attempt_at": now,
            "sent_at": None,
            "last_error": None,
            "detail": result.detail[:MAX_ERROR_LENGTH],
        }
        error = None if result.outcome is Outcome.SENT else result.detail[:MAX_ERROR_LENGTH]
        channel = delivery.channel
        if result.outcome is Outcome.SENT:
            update["status"] = DeliveryStatus.SENT.value
            update["sent_at"] = now
            metrics.SENT.labels(channel).inc()
            metrics.LATENCY.labels(channel).observe((now - delivery.created_at).total_seconds())
        elif result.outcome is Outcome.SKIPPED:
            update["status"] = DeliveryStatus.SKIPPED.value
            metrics.SKIPPED.labels(channel).inc()
        elif result.outcome is Outcome.PERMANENT:
            update["status"] = DeliveryStatus.FAILED.value
            update["last_error"] = error
            metrics.FAILED.labels(channel, "permanent").inc()
        elif self._policy.exhausted(used):
            update["status"] = DeliveryStatus.DEAD.value
            update["last_error"] = f"gave up after {used} attempts: {error}"
            metrics.FAILED.labels(channel, "exhausted").inc()
        else:
            delay = self._policy.delay(used, retry_after=result.retry_after)
            update["status"] = DeliveryStatus.PENDING.value
            update["next_attempt_at"] = now + timedelta(seconds=delay)
            update["last_error"] = error
            metrics.RETRIED.labels(channel).inc()
        (log.debug if result.outcome is Outcome.SENT else log.info)(
            "delivery_attempted",
            worker=self.name,
            delivery_id=str(delivery.id),
            notification_id=str(delivery.notification_id),
            channel=channel,
            attempt=delivery.attempts,
            outcome=result.outcome.value,
            status=update["status"],
            error=error,
            duration_ms=round(duration * 1000, 2),
        )
        attempt = {
            "delivery_id": delivery.id,
            "number": delivery.attempts,
            "started_at": started,
            "duration_ms": round(duration * 1000, 3),
            "outcome": result.outcome.value,
            "status_code": result.status_code,
            "error": error,
        }
        return update, attempt


class WorkerPool:
    """The workers of one process, started and stopped together."""

    def __init__(self, workers: Sequence[DeliveryWorker]) -> None:
        self.workers = list(workers)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(w.run(), name=w.name) for w in self.workers]

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake()

    async def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
