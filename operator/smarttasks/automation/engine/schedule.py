"""The durable schedule loop: claims due entries with `FOR UPDATE SKIP LOCKED` and fires them.

The loop sleeps until the earliest due entry, or until it is woken: by a task event that
armed an earlier entry (LISTEN/NOTIFY on `automation_schedule`, so it works across
processes and replicas) or by a rules change. It never polls on a fixed period. Claiming,
firing (firing row + outbox rows) and advancing an entry happen in one transaction, so a
crash at any point either fires an entry exactly once or leaves it for the next claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine import digest, metrics, projection
from smarttasks.automation.engine.cron import latest_due
from smarttasks.automation.engine.firings import Recorded, record_firings
from smarttasks.automation.engine.model import OPEN_STATUSES, Firing, RuleSource
from smarttasks.automation.engine.status import StatusTracker
from smarttasks.automation.engine.tables import SCHEDULE_CHANNEL
from smarttasks.automation.engine.triggers import (
    DueEntry,
    RuleError,
    ScheduleKind,
    kinds_in_use,
    process_entry,
)
from smarttasks.automation.rules.documents import TaskDocument, task_document
from smarttasks.automation.rules.model import TriggerEvent
from smarttasks.core.db import unit_of_work
from smarttasks.core.events import TaskSnapshot

log = structlog.get_logger()

# Claim first (a locked, materialised batch), then join: the join then runs over the claimed
# rows only, by primary key, however large the projection is.
_CLAIM = text(
    """
    WITH due AS (
        SELECT task_id, trigger, offset_s, deadline, slot, next_at
        FROM automation.schedule
        WHERE next_at <= :now
        ORDER BY next_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    SELECT due.task_id, due.trigger, due.offset_s, due.deadline, due.slot, due.next_at,
           t.snapshot, t.due_at AS current_due, t.deleted, t.status
    FROM due
    LEFT JOIN automation.tasks t ON t.task_id = due.task_id
    ORDER BY due.next_at
    """
)
# One statement per batch (arrays, not one UPDATE per entry): a constant text, so it is
# parsed and planned once per connection.
_ADVANCE = text(
    """
    UPDATE automation.schedule AS s
    SET deadline = v.deadline, slot = v.slot, next_at = v.next_at
    FROM unnest(CAST(:task_ids AS uuid[]), CAST(:triggers AS varchar[]),
                CAST(:offsets AS integer[]), CAST(:deadlines AS timestamptz[]),
                CAST(:slots AS integer[]), CAST(:next_ats AS timestamptz[]))
         AS v(task_id, trigger, offset_s, deadline, slot, next_at)
    WHERE s.task_id = v.task_id AND s.trigger = v.trigger AND s.offset_s = v.offset_s
    """
)
_DROP = text(
    """
    DELETE FROM automation.schedule AS s
    USING unnest(CAST(:task_ids AS uuid[]), CAST(:triggers AS varchar[]),
                 CAST(:offsets AS integer[])) AS v(task_id, trigger, offset_s)
    WHERE s.task_id = v.task_id AND s.trigger = v.trigger AND s.offset_s = v.offset_s
    """
)
_CLAIM_CRON = text(
    """
    SELECT rule_uid, expression, time_zone, next_at FROM automation.cron_entries
    WHERE next_at <= :now ORDER BY next_at LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)
_ADVANCE_CRON = text("UPDATE automation.cron_entries SET next_at = :next_at WHERE rule_uid = :uid")
_NEXT_DUE = text(
    """
    SELECT (SELECT min(next_at) FROM automation.schedule WHERE next_at IS NOT NULL) AS deadline,
           (SELECT min(next_at) FROM automation.cron_entries WHERE next_at IS NOT NULL) AS cron
    """
)
_KINDS = text("SELECT trigger, offset_s FROM automation.schedule_kinds")
_ADD_KIND = text(
    """
    INSERT INTO automation.schedule_kinds (trigger, offset_s, since)
    VALUES (:trigger, :offset_s, :since)
    ON CONFLICT DO NOTHING RETURNING trigger
    """
)
_DROP_KIND = text(
    "DELETE FROM automation.schedule_kinds WHERE trigger = :trigger AND offset_s = :offset_s"
)
_DROP_KIND_ENTRIES = text(
    "DELETE FROM automation.schedule WHERE trigger = :trigger AND offset_s = :offset_s"
)
_DROP_SCHEDULE = text("DELETE FROM automation.schedule")


_CRON_RETRY = timedelta(seconds=1)
# A digest holds its tasks in memory until its transaction commits: one digest at a time.
_CRONS_PER_BATCH = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Wakeup:
    """Wakes the loop early: when something becomes due before what it is sleeping for."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._target: datetime | None = None
        self._settled = False

    def reset(self) -> None:
        """Called before looking for due work: any poke from now on must wake the loop."""
        self._event.clear()
        self._settled = False

    def settle(self, target: datetime | None) -> None:
        """The loop will sleep until `target` (None: nothing scheduled)."""
        self._target = target
        self._settled = True

    def poke(self, at: datetime | None = None) -> None:
        """Something is due at `at` (None: something changed, look again)."""
        if at is None or not self._settled or self._target is None or at < self._target:
            self._event.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until poked."""
        if self._event.is_set():
            return
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # coincides with the event being set, and the loop would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._event.wait()


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection string, for the LISTEN connection."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(url: str, wakeup: Wakeup, *, retry: float = 1.0, max_retry: float = 30.0) -> None:
    """LISTEN for armed entries and poke `wakeup`; reconnects (with backoff) on failure."""
    delay = retry
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True)
            async with conn:
                await conn.execute(f"LISTEN {SCHEDULE_CHANNEL}")
                delay = retry
                # Notifications sent while we were not listening are lost: look again.
                wakeup.poke()
                async for note in conn.notifies():
                    wakeup.poke(_parse_epoch(note.payload))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("schedule_listen_failed", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_retry)


def _parse_epoch(payload: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(payload), UTC)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One claimed batch: how many entries it claimed and what fired."""

    claimed: int
    recorded: list[Recorded]


FiringListener = Callable[[Sequence[Recorded]], None]
Claimed = tuple[int, list[Firing], list[RuleError]]


class Scheduler:
    """Fires DeadlineApproaching, TaskOverdue and Schedule rules from the durable schedule."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        rules: RuleSource,
        *,
        tracker: StatusTracker,
        wakeup: Wakeup | None = None,
        batch_size: int = 200,
        max_sleep: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._rules = rules
        self._tracker = tracker
        self.wakeup = wakeup or Wakeup()
        self._batch_size = batch_size
        self._max_sleep = max_sleep
        self._clock = clock
        self._rules_dirty = True
        self._crons_retry_at: datetime | None = None
        self.listeners: list[FiringListener] = []

    def rules_changed(self) -> None:
        """The rule set changed: re-sync kinds and cron entries before the next claim."""
        self._rules_dirty = True
        self.wakeup.poke()

    async def sync_rules(self) -> None:
        """Make the schedule match the rules: add (and backfill) new kinds, drop unused ones,
        keep one cron entry per Schedule rule."""
        self._rules_dirty = False
        rules = self._rules.rules()
        needed = kinds_in_use(rules)
        async with unit_of_work(self._sessions) as session:
            existing = {
                ScheduleKind(TriggerEvent(row.trigger), int(row.offset_s))
                for row in (await session.execute(_KINDS)).all()
            }
            for kind, since in sorted(needed.items()):
                if kind in existing:
                    continue
                params = {"trigger": kind.trigger.value, "offset_s": kind.offset_s}
                added = (await session.execute(_ADD_KIND, {**params, "since": since})).first()
                if added is not None:
                    count = await projection.backfill(
                        session, trigger=kind.trigger.value, offset_s=kind.offset_s, since=since
                    )
                    log.info("schedule_kind_added", **params, armed=count)
            for kind in sorted(existing - needed.keys()):
                params = {"trigger": kind.trigger.value, "offset_s": kind.offset_s}
                await session.execute(_DROP_KIND_ENTRIES, params)
                await session.execute(_DROP_KIND, params)
                log.info("schedule_kind_dropped", **params)
            await digest.sync_entries(session, rules, self._clock())

    async def rebuild(self) -> None:
        """Recreate every schedule entry from the projection (firings already made stay made)."""
        async with unit_of_work(self._sessions) as session:
            await session.execute(_DROP_SCHEDULE)
            for kind, since in sorted(kinds_in_use(self._rules.rules()).items()):
                await projection.backfill(
                    session, trigger=kind.trigger.value, offset_s=kind.offset_s, since=since
                )

    async def next_due(self) -> tuple[datetime | None, datetime | None]:
        """When the earliest deadline entry and the earliest cron entry fall due."""
        async with self._sessions() as session:
            row = (await session.execute(_NEXT_DUE)).one()
            return row.deadline, row.cron

    async def run_due(self, now: datetime | None = None) -> int:
        """Fire everything due at `now`, batch by batch; returns how many entries were claimed."""
        deadlines = await self._drain(self._claim_deadlines, self._batch_size, now)
        return deadlines + await self._drain(self._claim_crons, _CRONS_PER_BATCH, now)

    async def _drain(
        self,
        claim: Callable[[AsyncSession, datetime], Awaitable[Claimed]],
        limit: int,
        now: datetime | None = None,
    ) -> int:
        total = 0
        while True:
            batch = await self._run_batch(claim, now or self._clock())
            total += batch.claimed
            if batch.claimed < limit:
                return total

    async def _run_crons(self) -> None:
        try:
            if await self._drain(self._claim_crons, _CRONS_PER_BATCH) == 0:
                # Due but claimed by another replica: look again shortly, do not spin.
                self._crons_retry_at = self._clock() + _CRON_RETRY
        except Exception:
            log.exception("schedule_digest_failed")
            self._crons_retry_at = self._clock() + _CRON_RETRY
        finally:
            self.wakeup.poke()

    async def _run_batch(
        self,
        claim: Callable[[AsyncSession, datetime], Awaitable[Claimed]],
        now: datetime,
    ) -> BatchResult:
        async with unit_of_work(self._sessions) as session:
            claimed, firings, errors = await claim(session, now)
            recorded = await record_firings(session, firings, now=now, tracker=self._tracker)
        # Committed: only now report it.
        for rule, message in errors:
            self._tracker.error(rule.ref, message)
        if recorded:
            metrics.observe(recorded)
            self._tracker.touched(r.firing.rule.ref for r in recorded)
            for listener in self.listeners:
                listener(recorded)
        return BatchResult(claimed, recorded)

    async def _claim_deadlines(self, session: AsyncSession, now: datetime) -> Claimed:
        rows = (await session.execute(_CLAIM, {"now": now, "limit": self._batch_size})).all()
        if not rows:
            return 0, [], []
        firings: list[Firing] = []
        errors: list[RuleError] = []
        advance: list[tuple[Any, ...]] = []
        drop: list[tuple[Any, ...]] = []
        # A task usually has several entries due at once (one per kind): prepare it once.
        prepared: dict[Any, tuple[TaskSnapshot, TaskDocument, dict[TriggerEvent, Any]]] = {}
        for row in rows:
            kind = ScheduleKind(TriggerEvent(row.trigger), int(row.offset_s))
            ident = (row.task_id, row.trigger, row.offset_s)
            if (
                row.snapshot is None
                or row.deleted
                or row.current_due is None
                or row.status not in OPEN_STATUSES
            ):
                drop.append(ident)
                continue
            if row.current_due != row.deadline:
                # The projection moved on since this entry was armed: re-arm from it.
                advance.append((*ident, row.current_due, 0, kind.first_due(row.current_due)))
                continue
            cached = prepared.get(row.task_id)
            if cached is None:
                task = TaskSnapshot.model_validate(row.snapshot)
                cached = prepared[row.task_id] = (task, task_document(task), {})
            task, doc, by_trigger = cached
            candidates = by_trigger.get(kind.trigger)
            if candidates is None:
                # The index narrows the rules to those the task could match (project, owner..).
                candidates = by_trigger[kind.trigger] = self._rules.candidates(kind.trigger, doc)
            entry = DueEntry(row.task_id, kind, row.deadline, int(row.slot), row.next_at)
            outcome = process_entry(entry, task, candidates, now, document=doc)
            firings.extend(outcome.firings)
            errors.extend(outcome.errors)
            advance.append((*ident, row.deadline, outcome.slot, outcome.next_at))
        if advance:
            columns = list(zip(*advance, strict=True))
            await session.execute(
                _ADVANCE,
                {
                    "task_ids": list(columns[0]),
                    "triggers": list(columns[1]),
                    "offsets": list(columns[2]),
                    "deadlines": list(columns[3]),
                    "slots": list(columns[4]),
                    "next_ats": list(columns[5]),
                },
            )
        if drop:
            columns = list(zip(*drop, strict=True))
            await session.execute(
                _DROP,
                {
                    "task_ids": list(columns[0]),
                    "triggers": list(columns[1]),
                    "offsets": list(columns[2]),
                },
            )
        return len(rows), firings, errors

    async def _claim_crons(self, session: AsyncSession, now: datetime) -> Claimed:
        rows = (await session.execute(_CLAIM_CRON, {"now": now, "limit": _CRONS_PER_BATCH})).all()
        firings: list[Firing] = []
        errors: list[RuleError] = []
        for row in rows:
            rule = self._rules.get(str(row.rule_uid))
            if (
                rule is None
                or not rule.enabled
                or rule.trigger is not TriggerEvent.SCHEDULE
                or rule.schedule is None
            ):
                # Unknown here (maybe not yet): park it; the rules sync revives or removes it.
                await session.execute(_ADVANCE_CRON, {"uid": row.rule_uid, "next_at": None})
                continue
            slot, following = latest_due(row.expression, row.time_zone, row.next_at, now)
            if slot >= rule.created_at:
                tasks, problems = await digest.matching_tasks(session, rule)
                errors.extend(problems)
                if tasks:
                    firings.append(digest.digest_firing(rule, slot, tasks))
            await session.execute(_ADVANCE_CRON, {"uid": row.rule_uid, "next_at": following})
        return len(rows), firings, errors

    async def run(self) -> None:
        """The loop: fire what is due, then sleep until the next due time or a wake-up.

        Digests (Schedule rules) run in a task of their own, so that scanning the tasks of a
        large digest never delays the deadlines falling due meanwhile.
        """
        backoff = 0.5
        digests: asyncio.Task[None] | None = None
        try:
            while True:
                self.wakeup.reset()
                try:
                    if self._rules_dirty:
                        await self.sync_rules()
                    await self._drain(self._claim_deadlines, self._batch_size)
                    deadline, cron = await self.next_due()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("schedule_loop_failed", retry_in=backoff)
                    self._rules_dirty = True
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                busy = digests is not None and not digests.done()
                if cron is not None and self._crons_retry_at is not None:
                    cron = max(cron, self._crons_retry_at)
                if cron is not None and not busy and cron <= self._clock():
                    self._crons_retry_at = None
                    digests = asyncio.create_task(self._run_crons(), name="automation-digests")
                    busy = True
                # While digests run, their entries are claimed; the task pokes when done.
                target = min(
                    (t for t in (deadline, None if busy else cron) if t is not None), default=None
                )
                self.wakeup.settle(target)
                # The cap is a safety net (e.g. a notification lost while the listener
                # reconnects), not the mechanism: entries wake the loop at their due time.
                delay = self._max_sleep
                if target is not None:
                    delay = min(delay, (target - self._clock()).total_seconds())
                await self.wakeup.sleep(max(0.0, delay))
        finally:
            if digests is not None:
                digests.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await digests


__all__ = [
    "BatchResult",
    "FiringListener",
    "Scheduler",
    "Wakeup",
    "libpq_url",
    "listen",
    "utcnow",
]
