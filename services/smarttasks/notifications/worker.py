"""The delivery worker: claims due deliveries, sends them, records attempts, schedules retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
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

# Called with the recorded outcomes (one dict per delivery) after each write commits.
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

        Each outcome is recorded as soon as its send completes (see `OutcomeRecorder`), not
        when the whole claimed batch is done: a worker killed mid-batch sends again only
        the few messages whose outcome it had not yet committed.
        """
        total = 0
        recorder = OutcomeRecorder(self._finish)
        try:
            while not self._stopping:
                async with unit_of_work(self._sessions) as session:
                    claimed = await DeliveryRepository(session).claim_due(
                        limit=self._batch_size, lease=self._lease
                    )
                if not claimed:
                    break
                await asyncio.gather(*(self._attempt_and_record(d, recorder) for d in claimed))
                recorder.raise_failure()
                total += len(claimed)
        finally:
            await recorder.drain()
        return total

    async def _attempt_and_record(self, delivery: Claimed, recorder: OutcomeRecorder) -> None:
        attempted, started, duration = await self._attempt(delivery)
        recorder.add(self._record(delivery, attempted, started, duration))

    async def _finish(self, outcomes: Sequence[Recorded]) -> None:
        updates = [update for update, _ in outcomes]
        attempts = [attempt for _, attempt in outcomes]
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


Recorded = tuple[dict[str, Any], dict[str, Any]]
"""A delivery's row update and its attempt record."""


class OutcomeRecorder:
    """Commits outcomes as sends complete, in group commits at most every `min_interval`.

    An outcome is written at once when no write happened in the last `min_interval`
    seconds; otherwise it waits for the next write, which starts when the interval has
    passed or `max_group` outcomes wait. So the database sees at most one transaction per
    interval rather than one per message, and at any moment only the outcomes of the last
    interval and round trip are unrecorded: what a worker killed then sends again. A
    failed write drops its outcomes (their rows come back when the lease ends, and are
    sent again) and is raised by `raise_failure` or `drain`.
    """

    def __init__(
        self,
        write: Callable[[Sequence[Recorded]], Awaitable[None]],
        *,
        min_interval: float = 0.02,
        max_group: int = 100,
    ) -> None:
        self._write = write
        self._min_interval = min_interval
        self._max_group = max_group
        self._pending: list[Recorded] = []
        self._writing: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._next_write = 0.0
        self._now = asyncio.get_running_loop().time
        self._hurry = asyncio.Event()

    def add(self, outcome: Recorded) -> None:
        self._pending.append(outcome)
        if len(self._pending) >= self._max_group:
            self._hurry.set()
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_pending())

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                wait = self._next_write - self._now()
                if wait > 0 and not self._hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._hurry.wait()
                if len(self._pending) < self._max_group:
                    self._hurry.clear()
                batch, self._pending = self._pending, []
                self._next_write = self._now() + self._min_interval
                await self._write(batch)
        except Exception as exc:
            self._pending = []
            self._failure = self._failure or exc
        finally:
            self._writing = None

    def raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    async def drain(self) -> None:
        """Write every outcome added so far now (or fail to), and wait for it."""
        while self._writing is not None:
            self._hurry.set()
            await asyncio.shield(self._writing)
        self._hurry.clear()
        self.raise_failure()


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
