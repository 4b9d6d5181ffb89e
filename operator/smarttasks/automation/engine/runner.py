"""Starting the engine: the schedule loop, its LISTEN connection and the status flusher.

Two ways in, same code:
- embedded mode (and tests): `AutomationEngine(sessions=..., database_url=..., rules=...,
  sink=...)` used as `async with`, with `engine.task_consumer` registered with the
  in-process relay;
- the operator process: `async with open_engine(settings, rules=index, sink=...)` from the
  kopf startup handler (kept in the memo, closed in the cleanup handler), with
  `engine.task_consumer` given to the RabbitMQ consumer runner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import structlog
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine import digest
from smarttasks.automation.engine.consumer import TaskEventConsumer, task_event_consumer
from smarttasks.automation.engine.model import RuleSource
from smarttasks.automation.engine.schedule import Scheduler, listen, utcnow
from smarttasks.automation.engine.status import StatusFlusher, StatusSink, StatusTracker
from smarttasks.core.db import create_engine, create_sessionmaker, unit_of_work
from smarttasks.core.messaging.routing import Consumer
from smarttasks.core.messaging.wakeup import notifying_relays
from smarttasks.core.settings import ServiceSettings

log = structlog.get_logger()


class EngineSettings(ServiceSettings):
    """Tuning of the automation engine (env prefix `SMARTTASKS_ENGINE_`)."""

    engine_batch_size: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description=(
            "Due entries claimed per transaction. Larger batches fire bursts (many deadlines "
            "at one instant) with fewer commits; smaller ones hold row locks more briefly."
        ),
    )
    engine_status_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Seconds between status flushes. Firings meanwhile are published together, so a "
            "burst costs one status PATCH per rule, not one per firing."
        ),
    )
    engine_max_sleep_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "Longest sleep of an idle schedule loop, in seconds. The loop wakes at the next "
            "due time and on NOTIFY; this is only the safety net for a notification lost "
            "while the LISTEN connection reconnects."
        ),
    )
    engine_listen_retry_seconds: float = Field(
        default=1.0,
        gt=0,
        description="First delay before reconnecting a lost LISTEN connection (doubles, max 30).",
    )


class AutomationEngine:
    """The running engine: schedule loop, LISTEN for armed entries, status flusher."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        database_url: str,
        rules: RuleSource,
        sink: StatusSink,
        settings: EngineSettings | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        settings = settings or EngineSettings()
        self.settings = settings
        self._sessions = sessions
        self.database_url = database_url
        self.tracker = StatusTracker()
        self.scheduler = Scheduler(
            sessions,
            rules,
            tracker=self.tracker,
            batch_size=settings.engine_batch_size,
            max_sleep=settings.engine_max_sleep_seconds,
            clock=clock,
        )
        self.consumer = TaskEventConsumer(rules, tracker=self.tracker, clock=clock)
        self.task_consumer: Consumer = task_event_consumer(self.consumer)
        """Register with the consumer runner (RabbitMQ) or the in-process relay."""
        self.flusher = StatusFlusher(
            sessions, self.tracker, sink, interval=settings.engine_status_interval_seconds
        )
        self._tasks: list[asyncio.Task[None]] = []

    def rules_changed(self) -> None:
        """Call after rules were added, changed or removed (the kopf handlers do)."""
        self.scheduler.rules_changed()

    async def rule_deleted(self, uid: str) -> None:
        """Call before a deleted rule's finalizer is released: drops its cron entry.

        Its firings stay (they are the record of what was sent); deadline entries are
        shared by every rule of a kind and are dropped by the next sync if unused.
        """
        async with unit_of_work(self._sessions) as session:
            await digest.drop_entry(session, uid)
        self.rules_changed()

    async def start(self) -> None:
        """Sync the schedule with the rules, then run the loop, listener and flusher."""
        if self._tasks:
            return
        await self.scheduler.sync_rules()
        self._spawn("automation-schedule", self.scheduler.run())
        self._spawn(
            "automation-listen",
            listen(
                self.database_url,
                self.scheduler.wakeup,
                retry=self.settings.engine_listen_retry_seconds,
            ),
        )
        self._spawn("automation-status", self.flusher.run())
        log.info("automation_engine_started")

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_report_crash)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Stop the loops and publish the statuses still pending."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flusher.flush()
        except Exception:
            log.exception("status_flush_failed")
        log.info("automation_engine_stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("automation_engine_task_crashed", task=task.get_name(), exc_info=task.exception())


@asynccontextmanager
async def open_engine(
    settings: EngineSettings, *, rules: RuleSource, sink: StatusSink
) -> AsyncIterator[AutomationEngine]:
    """The operator process's engine, with its own database pool, running until closed."""
    db = create_engine(settings.database_url, pool_size=settings.database_pool_size)
    try:
        engine = AutomationEngine(
            sessions=create_sessionmaker(db),
            database_url=settings.database_url,
            rules=rules,
            sink=sink,
            settings=settings,
        )
        # Firings commit outbox rows: wake the relays (other processes) after each commit.
        async with notifying_relays(db), engine:
            yield engine
    finally:
        await db.dispose()


__all__ = ["AutomationEngine", "EngineSettings", "open_engine"]
