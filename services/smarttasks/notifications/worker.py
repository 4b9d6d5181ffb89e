"""The delivery worker: claims due deliveries, sends them, records attempts, schedules retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from smarttasks.core.db import unit_of_work
from smarttasks.notifications import metrics
from smarttasks.notifications.channels import Outcome, OutcomeReceipt, Result
from smarttasks.notifications.dispatch import Attempted, Dispatcher
from smarttasks.notifications.models import DeliveryStatus
from smarttasks.notifications.repository import Claimed, DeliveryRepository, record_outcomes
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
        when the whole claimed batch is done, and an SMTP connection sends its next message
        only once its last one is recorded: a worker killed mid-batch sends again at most
        one email per connection (and the webhooks of its last group commit).
        """
        total = 0
        writer = OutcomeWriter(self._sessions, observer=self._observer)
        recorder = OutcomeRecorder(writer.write)
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
            try:
                await recorder.drain()
            finally:
                await writer.aclose()
        return total

    async def _attempt_and_record(self, delivery: Claimed, recorder: OutcomeRecorder) -> None:
        # The receipt tells the channel when this message's outcome is committed: an SMTP
        # connection sends its next message only then, so a killed worker has sent at most
        # one message per connection that it sends again.
        receipt = OutcomeReceipt(recorder.hurry)
        try:
            attempted, started, duration = await self._attempt(delivery, receipt)
            written = recorder.add(self._record(delivery, attempted, started, duration))
        except BaseException:
            receipt.settle()
            raise
        written.add_done_callback(receipt.settle)

    async def _attempt(
        self, delivery: Claimed, receipt: OutcomeReceipt
    ) -> tuple[Attempted, datetime, float]:
        started = datetime.now(UTC)
        clock = time.perf_counter()
        async with self._slots:
            try:
                attempted = await self._dispatcher.attempt(delivery, receipt)
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
            "detail": _loggable(result.detail),
        }
        error = None if result.outcome is Outcome.SENT else _loggable(result.detail)
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


def _loggable(detail: str) -> str:
    """A server's answer as the delivery log can keep it: bounded, without NUL characters."""
    return detail[:MAX_ERROR_LENGTH].replace("\x00", "\ufffd")


Recorded = tuple[dict[str, Any], dict[str, Any]]
"""A delivery's row update and its attempt record."""


class OutcomeWriter:
    """Writes groups of outcomes on one autocommit connection, kept while the worker is busy.

    Each group is one statement (`record_outcomes`), so one round trip and no pool checkout,
    session or BEGIN/COMMIT: a fraction of a unit of work's cost, which matters at one
    write per few messages. A kept connection found dead is replaced and the write made
    once more; a connection that failed otherwise is dropped and the next write opens
    another.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, observer: BatchObserver | None
    ) -> None:
        self._sessions = sessions
        self._observer = observer
        self._session: AsyncSession | None = None
        self._connection: AsyncConnection | None = None

    async def write(self, outcomes: Sequence[Recorded]) -> None:
        updates = [update for update, _ in outcomes]
        attempts = [attempt for _, attempt in outcomes]
        kept = self._connection is not None
        try:
            try:
                await record_outcomes(await self._connect(), updates, attempts)
            except DBAPIError as exc:
                if not (kept and exc.connection_invalidated):
                    raise
                # The kept connection was dropped while idle (a restart, a proxy's timeout):
                # once more on a new one, rather than leave these to be sent again.
                await self._drop(invalidate=True)
                await record_outcomes(await self._connect(), updates, attempts)
        except BaseException:
            await self._drop(invalidate=True)
            raise
        if self._observer is not None:
            self._observer(updates)

    async def _connect(self) -> AsyncConnection:
        if self._connection is None:
            self._session = self._sessions()
            self._connection = await self._session.connection(
                execution_options={"isolation_level": "AUTOCOMMIT"}
            )
        return self._connection

    async def _drop(self, *, invalidate: bool) -> None:
        session, self._session, self._connection = self._session, None, None
        if session is not None:
            if invalidate:  # it may be mid-statement or broken: not back to the pool
                await session.invalidate()
            await session.close()

    async def aclose(self) -> None:
        await self._drop(invalidate=False)


class OutcomeRecorder:
    """Commits outcomes as sends complete, in group commits at most every `min_interval`.

    An outcome is written at once when no write happened in the last `min_interval`
    seconds; otherwise it waits for the next write, which starts when the interval has
    passed, `max_group` outcomes wait, or `hurry()` is called (an SMTP connection waiting
    to send its next message until its last one is recorded). So the database sees one
    transaction per group, not per message. `add` returns a future resolved once the write
    holding the outcome has finished, successfully or not. A failed write drops its
    outcomes (their rows come back when the lease ends, and are sent again) and is raised
    by `raise_failure` or `drain`.
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
        self._loop = asyncio.get_running_loop()
        self._pending: list[Recorded] = []
        self._pending_written: asyncio.Future[None] = self._loop.create_future()
        self._writing: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._next_write = 0.0
        self._hurry = asyncio.Event()

    def add(self, outcome: Recorded) -> asyncio.Future[None]:
        """Queue an outcome; the future is done when the write holding it has finished."""
        self._pending.append(outcome)
        if len(self._pending) >= self._max_group:
            self._hurry.set()
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_pending())
        return self._pending_written

    def hurry(self) -> None:
        """Write what waits now rather than at the end of the interval."""
        self._hurry.set()

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                wait = self._next_write - self._loop.time()
                if wait > 0 and not self._hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._hurry.wait()
                self._hurry.clear()
                batch, self._pending = self._pending, []
                written, self._pending_written = self._pending_written, self._loop.create_future()
                self._next_write = self._loop.time() + self._min_interval
                try:
                    await self._write(batch)
                finally:
                    written.set_result(None)
        except Exception as exc:
            self._failure = self._failure or exc
            if self._pending:  # dropped with the failure: their rows come back by lease
                self._pending = []
                self._pending_written.set_result(None)
                self._pending_written = self._loop.create_future()
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
