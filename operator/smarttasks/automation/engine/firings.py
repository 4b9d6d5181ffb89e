"""Recording firings: the unique firing row and its `notification.requested` outbox rows,
written in one transaction, so a firing happens exactly once or not at all."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.automation.engine import throttle
from smarttasks.automation.engine.messages import iter_requests
from smarttasks.automation.engine.model import Firing, FiringKey
from smarttasks.automation.engine.status import StatusTracker
from smarttasks.automation.engine.tables import STATS_SHARDS
from smarttasks.automation.rules.model import TriggerEvent
from smarttasks.core.events import (
    NOTIFICATION_REQUESTED,
    NOTIFICATIONS_EXCHANGE,
    NotificationRequested,
)
from smarttasks.core.outbox import outbox_written

log = structlog.get_logger()


# Constant statement texts taking arrays (one row per element): one round trip per batch,
# parsed and planned once per connection, whatever the batch size.
_INSERT_FIRINGS = text(
    """
    INSERT INTO automation.firings
        (rule_uid, task_id, trigger, occurrence, rule_namespace, rule_name, rule_generation,
         due_at)
    SELECT * FROM unnest(
        CAST(:rule_uids AS varchar[]), CAST(:task_ids AS uuid[]), CAST(:triggers AS varchar[]),
        CAST(:occurrences AS varchar[]), CAST(:namespaces AS varchar[]),
        CAST(:names AS varchar[]), CAST(:generations AS bigint[]),
        CAST(:due_ats AS timestamptz[]))
    ON CONFLICT ON CONSTRAINT uq_firings_key DO NOTHING
    RETURNING id, rule_uid, task_id, trigger, occurrence
    """
)
_THROTTLE = text("UPDATE automation.firings SET throttled = true WHERE id = ANY(:ids)")
# The payloads go as one JSON array (a text array would need every quote escaped); the
# message id and the task (the aggregate the relay orders by) are read from the payload.
_INSERT_OUTBOX = text(
    f"""
    INSERT INTO automation.outbox (event_id, exchange, routing_key, aggregate_id, payload)
    SELECT CAST(p->>'id' AS uuid), '{NOTIFICATIONS_EXCHANGE}', '{NOTIFICATION_REQUESTED}',
           CAST(p->'task'->>'id' AS uuid), p
    FROM jsonb_array_elements(CAST(:payloads AS jsonb)) AS p
    ON CONFLICT (event_id) DO NOTHING
    """
)
_ADD_TOTALS = text(
    """
    INSERT INTO automation.rule_stats AS r
        (rule_uid, shard, fired_count, throttled_count, last_fired_at)
    SELECT uid, :shard, fired, throttled,
           CASE WHEN fired > 0 THEN CAST(:now AS timestamptz) END
    FROM unnest(CAST(:uids AS varchar[]), CAST(:fired AS bigint[]),
                CAST(:throttled AS bigint[])) AS v(uid, fired, throttled)
    ON CONFLICT (rule_uid, shard) DO UPDATE SET
        fired_count = r.fired_count + EXCLUDED.fired_count,
        throttled_count = r.throttled_count + EXCLUDED.throttled_count,
        last_fired_at = GREATEST(r.last_fired_at, EXCLUDED.last_fired_at)
    """
)


class _OutboxBuffer:
    """Outbox rows written in chunks: one statement per batch, bounded memory for digests."""

    MAX_BYTES = 4 * 1024 * 1024

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._payloads: list[str] = []
        self._bytes = 0

    async def add(self, request: NotificationRequested) -> None:
        payload = request.model_dump_json()
        self._payloads.append(payload)
        self._bytes += len(payload)
        if self._bytes >= self.MAX_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._payloads:
            await self._session.execute(
                _INSERT_OUTBOX, {"payloads": "[" + ",".join(self._payloads) + "]"}
            )
            outbox_written(self._session, "automation.outbox")
        self._payloads, self._bytes = [], 0


@dataclass(frozen=True, slots=True)
class Recorded:
    """A firing that was new (not a duplicate) and what became of it."""

    firing: Firing
    throttled: bool
    messages: int


def _key_of(row: Any) -> FiringKey:
    return FiringKey(str(row.rule_uid), row.task_id, TriggerEvent(row.trigger), str(row.occurrence))


async def record_firings(
    session: AsyncSession,
    planned: Sequence[Firing],
    *,
    now: datetime,
    tracker: StatusTracker | None = None,
) -> list[Recorded]:
    """Insert the firings that are new, throttle, queue their notifications, update totals.

    Duplicates (a redelivered event, a second replica, a restart) insert nothing and so
    request nothing. Flushes only; the caller's unit of work commits.
    """
    unique: dict[FiringKey, Firing] = {}
    for firing in planned:
        unique.setdefault(firing.key, firing)
    if not unique:
        return []
    throttled_rules = {
        f.key.rule_uid: f.rule.max_per_hour
        for f in unique.values()
        if f.rule.max_per_hour is not None
    }
    # Lock before inserting: the count below must see every other replica's firings.
    await throttle.lock_rules(session, throttled_rules)
    planned_firings = list(unique.values())
    refs = [f.rule.ref for f in planned_firings]
    result = await session.execute(
        _INSERT_FIRINGS,
        {
            "rule_uids": [f.key.rule_uid for f in planned_firings],
            "task_ids": [f.key.task_id for f in planned_firings],
            "triggers": [f.key.trigger.value for f in planned_firings],
            "occurrences": [f.key.occurrence for f in planned_firings],
            "namespaces": [ref.namespace for ref in refs],
            "names": [ref.name for ref in refs],
            "generations": [ref.generation for ref in refs],
            "due_ats": [f.due_at for f in planned_firings],
        },
    )
    inserted = {_key_of(row): int(row.id) for row in result.all()}
    ref_of = {f.key: ref for f, ref in zip(planned_firings, refs, strict=True)}
    if not inserted:
        return []

    throttled_ids: set[int] = set()
    new_by_rule: dict[str, list[int]] = defaultdict(list)
    for key, row_id in inserted.items():
        if key.rule_uid in throttled_rules:
            new_by_rule[key.rule_uid].append(row_id)
    if new_by_rule:
        counts = await throttle.recent_counts(session, new_by_rule)
        for uid, new_ids in new_by_rule.items():
            limit = throttled_rules[uid]
            assert limit is not None
            excess = throttle.over_limit(limit, counts.get(uid, 0), len(new_ids))
            if excess:
                throttled_ids.update(sorted(new_ids)[-excess:])
        if throttled_ids:
            await session.execute(_THROTTLE, {"ids": sorted(throttled_ids)})

    recorded: list[Recorded] = []
    outbox = _OutboxBuffer(session)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, row_id in inserted.items():
        firing = unique[key]
        if row_id in throttled_ids:
            totals[key.rule_uid][1] += 1
            recorded.append(Recorded(firing, throttled=True, messages=0))
            continue
        errors: list[str] = []
        count = 0
        for request in iter_requests(firing, now, errors):
            await outbox.add(request)
            count += 1
        if tracker is not None:
            for message in errors:
                tracker.error(ref_of[key], message)
        if count:  # `firedCount` counts firings that asked for a notification
            totals[key.rule_uid][0] += 1
        recorded.append(Recorded(firing, throttled=False, messages=count))
    await outbox.flush()
    await _add_totals(session, totals, now)
    return recorded


async def _add_totals(session: AsyncSession, totals: dict[str, list[int]], now: datetime) -> None:
    if not totals:
        return
    # Sorted, so that two transactions updating the same rules lock them in the same order;
    # one random shard per transaction spreads a busy rule's updates over several rows.
    uids = sorted(totals)
    await session.execute(
        _ADD_TOTALS,
        {
            "shard": random.randrange(STATS_SHARDS),
            "now": now,
            "uids": uids,
            "fired": [totals[uid][0] for uid in uids],
            "throttled": [totals[uid][1] for uid in uids],
        },
    )


__all__ = ["Recorded", "record_firings"]
