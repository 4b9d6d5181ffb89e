"""Schedule triggers: one digest per cron slot listing the open tasks a rule matches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.automation.engine import cron
from smarttasks.automation.engine.model import EngineRule, Firing, FiringKey
from smarttasks.automation.engine.triggers import RuleError, occurrence
from smarttasks.automation.rules.documents import task_document
from smarttasks.automation.rules.model import TriggerEvent
from smarttasks.core.events import TaskSnapshot

MAX_DIGEST_CANDIDATES = 10_000
"""Most tasks one digest considers (earliest deadlines first), so a slot stays bounded."""
_YIELD_EVERY = 100

_UPSERT_ENTRY = text(
    """
    INSERT INTO automation.cron_entries AS c (rule_uid, expression, time_zone, next_at)
    VALUES (:uid, :expression, :time_zone, :first)
    ON CONFLICT (rule_uid) DO UPDATE
        SET expression = EXCLUDED.expression, time_zone = EXCLUDED.time_zone,
            next_at = :changed
        WHERE c.expression <> EXCLUDED.expression OR c.time_zone <> EXCLUDED.time_zone
           OR c.next_at IS NULL
    """
)
_PRUNE_ENTRIES = text("DELETE FROM automation.cron_entries WHERE NOT (rule_uid = ANY(:uids))")
_DROP_ENTRY = text("DELETE FROM automation.cron_entries WHERE rule_uid = :uid")


async def drop_entry(session: AsyncSession, uid: str) -> None:
    """Forget the cron entry of a deleted rule."""
    await session.execute(_DROP_ENTRY, {"uid": uid})


async def sync_entries(session: AsyncSession, rules: Sequence[EngineRule], now: datetime) -> None:
    """One cron entry per Schedule rule, first due at the first slot after the rule existed.

    A changed expression or zone starts over from `now`; entries of rules that are gone are
    removed.
    """
    uids: list[str] = []
    for rule in rules:
        if rule.trigger is not TriggerEvent.SCHEDULE or rule.schedule is None:
            continue
        uids.append(rule.uid)
        try:
            first = cron.next_slot(rule.schedule, rule.time_zone, rule.created_at)
            changed = cron.next_slot(rule.schedule, rule.time_zone, now)
        except cron.InvalidSchedule:  # the compiler refuses these; never crash the loop on one
            first = changed = None
        await session.execute(
            _UPSERT_ENTRY,
            {
                "uid": rule.uid,
                "expression": rule.schedule,
                "time_zone": rule.time_zone,
                "first": first,
                "changed": changed,
            },
        )
    await session.execute(_PRUNE_ENTRIES, {"uids": uids})


def _prefilter(rule: EngineRule) -> tuple[str, dict[str, Any]]:
    clauses = ["NOT deleted", "status IN ('todo', 'in_progress')"]
    params: dict[str, Any] = {"limit": MAX_DIGEST_CANDIDATES}
    if rule.owner is not None:
        clauses.append("owner_id = :owner")
        params["owner"] = rule.owner
    if rule.projects:
        clauses.append("project = ANY(:projects)")
        params["projects"] = sorted(rule.projects)
    if rule.labels:
        clauses.append("labels && CAST(:labels AS varchar[])")
        params["labels"] = sorted(rule.labels)
    if rule.priorities:
        clauses.append("priority = ANY(:priorities)")
        params["priorities"] = sorted(rule.priorities)
    return " AND ".join(clauses), params


async def matching_tasks(
    session: AsyncSession, rule: EngineRule
) -> tuple[list[TaskSnapshot], list[RuleError]]:
    """Open tasks the rule matches; the cheap clauses run in SQL, the condition in Python."""
    where, params = _prefilter(rule)
    rows = await session.stream(
        text(
            f"SELECT snapshot FROM automation.tasks WHERE {where} "
            "ORDER BY due_at NULLS LAST, task_id LIMIT :limit"
        ),
        params,
    )
    tasks: list[TaskSnapshot] = []
    errors: list[RuleError] = []
    async for n, row in _enumerate(rows):
        if n % _YIELD_EVERY == 0:
            # Let the deadline loop in: a large digest must not hold up what falls due meanwhile.
            await asyncio.sleep(0)
        task = TaskSnapshot.model_validate(row.snapshot)
        try:
            if rule.matches(task_document(task)):
                tasks.append(task)
        except Exception as exc:  # a CEL runtime error is the rule's problem, not ours
            if not errors:
                errors.append((rule, f"condition failed: {exc}"))
    return tasks, errors


async def _enumerate(rows: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    n = 0
    async for row in rows:
        yield n, row
        n += 1


def digest_firing(rule: EngineRule, slot: datetime, tasks: Sequence[TaskSnapshot]) -> Firing:
    """The firing of one cron slot; its occurrence is the slot, so a slot fires once."""
    key = FiringKey(rule.uid, None, TriggerEvent.SCHEDULE, occurrence(slot))
    return Firing(key=key, rule=rule, task=None, tasks=tuple(tasks), due_at=slot)


__all__ = [
    "MAX_DIGEST_CANDIDATES",
    "digest_firing",
    "drop_entry",
    "matching_tasks",
    "sync_entries",
]
