"""Rule status (firedCount, lastFiredAt, throttledCount, lastError), flushed in batches.

Counts come from `automation.rule_stats`, which each firing's own transaction updates, so
they are right across restarts and replicas; this module only decides *when* to publish
them: rules touched since the last flush are published together, at most once per
interval, through a `StatusSink` (the Kubernetes one patches the status subresource).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine.tables import rule_stats
from smarttasks.core.events import RuleRef

log = structlog.get_logger()

MAX_ERROR_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class RuleStatus:
    """What the engine reports about one rule."""

    rule: RuleRef
    fired_count: int
    throttled_count: int
    last_fired_at: datetime | None
    last_error: str | None

    def patch(self) -> dict[str, Any]:
        """The `status` fields as a merge patch (camelCase, as in the CRD)."""
        status: dict[str, Any] = {
            "firedCount": self.fired_count,
            "throttledCount": self.throttled_count,
        }
        if self.last_fired_at is not None:
            status["lastFiredAt"] = self.last_fired_at.isoformat().replace("+00:00", "Z")
        if self.last_error is not None:
            status["lastError"] = self.last_error
        return status


class StatusSink(Protocol):
    """Where rule statuses go; called with a batch, never once per firing."""

    async def publish(self, statuses: Sequence[RuleStatus]) -> None: ...


class StatusTracker:
    """Remembers which rules changed (and their last error) until the next flush."""

    def __init__(self) -> None:
        self._dirty: dict[str, RuleRef] = {}
        self._errors: dict[str, str] = {}
        self._changed = asyncio.Event()

    def touched(self, refs: Iterable[RuleRef]) -> None:
        for ref in refs:
            self._dirty[ref.uid] = ref
        if self._dirty:
            self._changed.set()

    def error(self, ref: RuleRef, message: str) -> None:
        """Record what went wrong for a rule; shown as `lastError` at the next flush."""
        self._errors[ref.uid] = message[:MAX_ERROR_LENGTH]
        self._dirty[ref.uid] = ref
        self._changed.set()
        log.warning("rule_error", rule=f"{ref.namespace}/{ref.name}", error=message)

    async def wait(self) -> None:
        await self._changed.wait()

    def drain(self) -> tuple[dict[str, RuleRef], dict[str, str]]:
        dirty, self._dirty = self._dirty, {}
        errors = {uid: self._errors[uid] for uid in dirty if uid in self._errors}
        self._changed.clear()
        return dirty, errors

    def restore(self, dirty: Mapping[str, RuleRef]) -> None:
        """Mark rules dirty again after a failed publish."""
        for uid, ref in dirty.items():
            self._dirty.setdefault(uid, ref)
        if self._dirty:
            self._changed.set()


async def read_statuses(
    session: AsyncSession, refs: Mapping[str, RuleRef], errors: Mapping[str, str] | None = None
) -> list[RuleStatus]:
    """Current totals of `refs` (a rule that never fired reports zeros)."""
    if not refs:
        return []
    rows = (
        await session.execute(
            select(
                rule_stats.c.rule_uid,
                func.sum(rule_stats.c.fired_count).label("fired_count"),
                func.sum(rule_stats.c.throttled_count).label("throttled_count"),
                func.max(rule_stats.c.last_fired_at).label("last_fired_at"),
            )
            .where(rule_stats.c.rule_uid.in_(list(refs)))
            .group_by(rule_stats.c.rule_uid)
        )
    ).all()
    found = {row.rule_uid: row for row in rows}
    errors = errors or {}
    statuses = []
    for uid, ref in sorted(refs.items()):
        row = found.get(uid)
        statuses.append(
            RuleStatus(
                rule=ref,
                fired_count=int(row.fired_count) if row else 0,
                throttled_count=int(row.throttled_count) if row else 0,
                last_fired_at=row.last_fired_at if row else None,
                last_error=errors.get(uid),
            )
        )
    return statuses


class StatusFlusher:
    """Publishes touched rules' statuses in batches, at most once per `interval` seconds."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tracker: StatusTracker,
        sink: StatusSink,
        *,
        interval: float = 5.0,
        batch_size: int = 100,
    ) -> None:
        self._sessions = sessions
        self._tracker = tracker
        self._sink = sink
        self._interval = interval
        self._batch_size = batch_size

    async def flush(self) -> int:
        """Publish every rule touched since the last flush; returns how many."""
        dirty, errors = self._tracker.drain()
        if not dirty:
            return 0
        try:
            async with self._sessions() as session:
                statuses = await read_statuses(session, dirty, errors)
            for start in range(0, len(statuses), self._batch_size):
                await self._sink.publish(statuses[start : start + self._batch_size])
        except BaseException:  # including cancellation at shutdown: the final flush retries
            self._tracker.restore(dirty)
            raise
        return len(statuses)

    async def run(self) -> None:
        """Flush whenever rules were touched, waiting `interval` between flushes to batch."""
        while True:
            await self._tracker.wait()
            try:
                await self.flush()
            except Exception:
                log.exception("status_flush_failed")
            # Deliberate batching window: firings arriving meanwhile join the next flush.
            await asyncio.sleep(self._interval)


class MemoryStatusSink:
    """Keeps the latest status of each rule (embedded mode's rules API and tests read it)."""

    def __init__(self) -> None:
        self.statuses: dict[str, RuleStatus] = {}
        self.batches: list[int] = []
        self._published = asyncio.Condition()

    async def publish(self, statuses: Sequence[RuleStatus]) -> None:
        async with self._published:
            for status in statuses:
                self.statuses[status.rule.uid] = status
            self.batches.append(len(statuses))
            self._published.notify_all()

    async def wait_for(self, uid: str, *, fired_count: int) -> RuleStatus:
        """Wait until `uid` reports at least `fired_count` firings."""
        async with self._published:
            await self._published.wait_for(
                lambda: uid in self.statuses and self.statuses[uid].fired_count >= fired_count
            )
            return self.statuses[uid]


_MERGE_DOCUMENT_STATUS = text(
    """
    UPDATE automation.rule_documents AS d
    SET status = d.status || v.patch
    FROM (
        SELECT CAST(e->>'uid' AS uuid) AS uid, e->'status' AS patch
        FROM jsonb_array_elements(CAST(:batch AS jsonb)) AS e
    ) AS v
    WHERE d.uid = v.uid
    """
)


class DatabaseStatusSink:
    """Embedded mode: merges the fields into the `status` of the rule documents (one
    statement per batch), where the rules API reads them as it reads a resource's status."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def publish(self, statuses: Sequence[RuleStatus]) -> None:
        batch = [{"uid": s.rule.uid, "status": s.patch()} for s in statuses]
        async with self._sessions() as session:
            await session.execute(_MERGE_DOCUMENT_STATUS, {"batch": json.dumps(batch)})
            await session.commit()


class KubernetesStatusSink:
    """Merge-patches the `status` subresource of each AutomationRule in a batch.

    One PATCH per touched rule per flush (not per firing), a few at a time; a rule deleted
    meanwhile (404) is skipped.
    """

    def __init__(
        self,
        api: Any,
        *,
        group: str,
        version: str,
        plural: str,
        concurrency: int = 4,
    ) -> None:
        self._api = api  # kubernetes.client.CustomObjectsApi
        self._group = group
        self._version = version
        self._plural = plural
        self._limit = asyncio.Semaphore(concurrency)

    async def _patch(self, status: RuleStatus) -> None:
        async with self._limit:
            try:
                await asyncio.to_thread(
                    self._api.patch_namespaced_custom_object_status,
                    self._group,
                    self._version,
                    status.rule.namespace,
                    self._plural,
                    status.rule.name,
                    {"status": status.patch()},
                    _content_type="application/merge-patch+json",
                )
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    return
                raise

    async def publish(self, statuses: Sequence[RuleStatus]) -> None:
        # Every patch is attempted even if one fails; the failures are raised together.
        results = await asyncio.gather(
            *(self._patch(status) for status in statuses), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            raise ExceptionGroup("status patches failed", failures)


__all__ = [
    "DatabaseStatusSink",
    "KubernetesStatusSink",
    "MemoryStatusSink",
    "RuleStatus",
    "StatusFlusher",
    "StatusSink",
    "StatusTracker",
    "read_statuses",
]
