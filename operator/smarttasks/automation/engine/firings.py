"""Recording firings: the unique firing row and its `notification.requested` outbox rows,
written in one transaction, so a firing happens exactly once or not at all."""

from __future__ import annotations

import json
import random
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
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
    RuleRef,
)
from smarttasks.core.outbox import outbox_written

log = structlog.get_logger()


# The rule_stats shard a transaction adds to: the first of the STATS_SHARDS that no other
# open transaction holds (a transaction-scoped try-lock, which never waits; a transaction
# finds the shard it already holds again), or `:shard` (random) if all are taken. Concurrent
# transactions, even ones recording several batches of firings (a runner committing several
# events together), then never wait for each other on totals rows, let alone deadlock.
_SHARD = f"""COALESCE(
    (SELECT s FROM generate_series(0, {STATS_SHARDS - 1}) AS s
     WHERE pg_try_advisory_xact_lock({zlib.crc32(b"automation.rule_stats") >> 1}, s)
     LIMIT 1),
    :shard)"""


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
    f"""
    INSERT INTO automation.rule_stats AS r
        (rule_uid, shard, fired_count, throttled_count, last_fired_at)
    SELECT uid, {_SHARD}, fired, throttled,
           CASE WHEN fired > 0 THEN CAST(:now AS timestamptz) END
    FROM unnest(CAST(:uids AS varchar[]), CAST(:fired AS bigint[]),
                CAST(:throttled AS bigint[])) AS v(uid, fired, throttled)
    ON CONFLICT (rule_uid, shard) DO UPDATE SET
        fired_count = r.fired_count + EXCLUDED.fired_count,
        throttled_count = r.throttled_count + EXCLUDED.throttled_count,
        last_fired_at = GREATEST(r.last_fired_at, EXCLUDED.last_fired_at)
    """
)


# The common case in one round trip: no throttled rule among the firings, messages rendered
# beforehand. Inserts the firings that are new (in key order: two transactions inserting
# the same keys, a redelivery racing itself, wait for each other in one order), the outbox
# rows of those (in the order given), and adds them to the rule totals (the transaction's
# shard, rules in sorted order); returns the ordinals of the new firings. `:firings` is one
# JSON array (a text parameter: the payloads go in as serialised once, and arrays cost more
# to send), of {"key": [rule uid, task id, trigger, occurrence], "rule": [namespace, name,
# generation], "due_at": ..., "messages": [payload, ...]}.
_RECORD = text(
    f"""
    WITH planned AS (
        SELECT f.n, f.doc->'key'->>0 AS rule_uid, CAST(f.doc->'key'->>1 AS uuid) AS task_id,
               f.doc->'key'->>2 AS trigger, f.doc->'key'->>3 AS occurrence,
               f.doc->'rule'->>0 AS rule_namespace, f.doc->'rule'->>1 AS rule_name,
               CAST(f.doc->'rule'->>2 AS bigint) AS rule_generation,
               CAST(f.doc->>'due_at' AS timestamptz) AS due_at, f.doc->'messages' AS messages
        FROM jsonb_array_elements(CAST(:firings AS jsonb)) WITH ORDINALITY AS f(doc, n)
    ),
    fired AS (
        INSERT INTO automation.firings
            (rule_uid, task_id, trigger, occurrence, rule_namespace, rule_name, rule_generation,
             due_at)
        SELECT rule_uid, task_id, trigger, occurrence, rule_namespace, rule_name,
               rule_generation, due_at
        FROM planned ORDER BY rule_uid, task_id, trigger, occurrence
        ON CONFLICT ON CONSTRAINT uq_firings_key DO NOTHING
        RETURNING rule_uid, task_id, trigger, occurrence
    ),
    new AS (
        SELECT p.n, p.rule_uid, p.messages FROM planned p JOIN fired f
            ON f.rule_uid = p.rule_uid AND f.trigger = p.trigger
           AND f.occurrence = p.occurrence AND f.task_id IS NOT DISTINCT FROM p.task_id
    ),
    queued AS (
        INSERT INTO automation.outbox (event_id, exchange, routing_key, aggregate_id, payload)
        SELECT CAST(m.p->>'id' AS uuid), '{NOTIFICATIONS_EXCHANGE}', '{NOTIFICATION_REQUESTED}',
               CAST(m.p->'task'->>'id' AS uuid), m.p
        FROM new CROSS JOIN LATERAL jsonb_array_elements(new.messages) WITH ORDINALITY AS m(p, i)
        ORDER BY new.n, m.i
        ON CONFLICT (event_id) DO NOTHING
    ),
    totals AS (
        INSERT INTO automation.rule_stats AS r
            (rule_uid, shard, fired_count, throttled_count, last_fired_at)
        SELECT rule_uid, {_SHARD}, count(*), 0, CAST(:now AS timestamptz)
        FROM new WHERE jsonb_array_length(messages) > 0
        GROUP BY rule_uid ORDER BY rule_uid
        ON CONFLICT (rule_uid, shard) DO UPDATE SET
            fired_count = r.fired_count + EXCLUDED.fired_count,
            last_fired_at = GREATEST(r.last_fired_at, EXCLUDED.last_fired_at)
    )
    SELECT n FROM new
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
    request nothing. Without a throttled rule among them (and below one outbox chunk of
    messages) all of it is one statement; with one, the throttle's lock and count come
    first. Flushes only; the caller's unit of work commits.
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
    if not throttled_rules:
        rendered = _render_all(unique.values(), now)
        if rendered is not None:
            return await _record_rendered(session, rendered, now=now, tracker=tracker)
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


@dataclass(slots=True)
class _Rendered:
    """A firing with its messages rendered (before knowing whether it is new)."""

    firing: Firing
    payloads: list[str]
    errors: list[str]


def _render_all(firings: Iterable[Firing], now: datetime) -> list[_Rendered] | None:
    """Every firing's messages, or None if they add up to more than one outbox chunk (a
    large digest): those are recorded first and rendered after, a chunk at a time."""
    out: list[_Rendered] = []
    size = 0
    for firing in firings:
        errors: list[str] = []
        payloads = []
        for request in iter_requests(firing, now, errors):
            payload = request.model_dump_json()
            size += len(payload)
            if size > _OutboxBuffer.MAX_BYTES:
                return None
            payloads.append(payload)
        out.append(_Rendered(firing, payloads, errors))
    return out


def _firing_json(rendered: _Rendered, ref: RuleRef) -> str:
    key = rendered.firing.key
    due_at = rendered.firing.due_at
    head = json.dumps(
        {
            "key": [
                key.rule_uid,
                str(key.task_id) if key.task_id is not None else None,
                key.trigger.value,
                key.occurrence,
            ],
            "rule": [ref.namespace, ref.name, ref.generation],
            "due_at": due_at.isoformat() if due_at is not None else None,
        }
    )
    return f'{head[:-1]},"messages":[{",".join(rendered.payloads)}]}}'


async def _record_rendered(
    session: AsyncSession,
    rendered: Sequence[_Rendered],
    *,
    now: datetime,
    tracker: StatusTracker | None,
) -> list[Recorded]:
    """Record firings of unthrottled rules in one statement (`_RECORD`)."""
    refs = [r.firing.rule.ref for r in rendered]
    result = await session.execute(
        _RECORD,
        {
            "firings": "["
            + ",".join(_firing_json(r, ref) for r, ref in zip(rendered, refs, strict=True))
            + "]",
            "shard": random.randrange(STATS_SHARDS),
            "now": now,
        },
    )
    new = {int(row.n) for row in result}
    recorded: list[Recorded] = []
    for n, item in enumerate(rendered, start=1):
        if n not in new:
            continue  # a duplicate: it fired before, and requested its messages then
        if tracker is not None:
            for message in item.errors:
                tracker.error(refs[n - 1], message)
        recorded.append(Recorded(item.firing, throttled=False, messages=len(item.payloads)))
    if any(r.messages for r in recorded):
        outbox_written(session, "automation.outbox")
    return recorded


async def _add_totals(session: AsyncSession, totals: dict[str, list[int]], now: datetime) -> None:
    if not totals:
        return
    # In the transaction's own shard (see `_SHARD`), rules in sorted order: the fallback
    # shard, should every shard be taken, then still locks rules in one order.
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
