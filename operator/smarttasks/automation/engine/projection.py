"""The engine's own view of tasks (schema `automation`), fed by task events.

Every row carries the task's version: an event applies only if it is newer than what the
projection holds (a deletion also wins at equal version, since `task.deleted` carries the
last snapshot), so a redelivered or reordered event never moves a task backwards, and a
deleted task stays a tombstone that late updates cannot resurrect. Schedule entries are
armed, moved and disarmed here, in the same transaction as the projection change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.automation.engine.model import OPEN_STATUSES
from smarttasks.automation.engine.tables import SCHEDULE_CHANNEL
from smarttasks.core.events import TaskSnapshot

_UPSERT = text(
    """
    INSERT INTO automation.tasks AS t
        (task_id, version, deleted, status, priority, project, labels, owner_id, assignee_id,
         due_at, snapshot, updated_at)
    VALUES (:task_id, :version, :deleted, :status, :priority, :project, :labels, :owner_id,
            :assignee_id, :due_at, CAST(:snapshot AS jsonb), now())
    ON CONFLICT (task_id) DO UPDATE SET
        version = EXCLUDED.version, deleted = EXCLUDED.deleted, status = EXCLUDED.status,
        priority = EXCLUDED.priority, project = EXCLUDED.project, labels = EXCLUDED.labels,
        owner_id = EXCLUDED.owner_id, assignee_id = EXCLUDED.assignee_id,
        due_at = EXCLUDED.due_at, snapshot = EXCLUDED.snapshot, updated_at = now()
    WHERE t.version < EXCLUDED.version
       OR (EXCLUDED.deleted AND NOT t.deleted AND t.version <= EXCLUDED.version)
    RETURNING task_id
    """
)

# First due time of an entry of kind (trigger, offset) for a deadline.
_FIRST_DUE = (
    "CASE WHEN {trigger} = 'DeadlineApproaching' "
    "THEN {deadline} - make_interval(secs => {offset}) ELSE {deadline} END"
)

# Arm every kind for this task; a moved deadline re-arms (slot 0), an unchanged one is left
# alone so a spent entry stays spent. Returns the earliest entry whose due time changed, and
# the earliest entry of any other task (as committed before this statement).
_ARM = text(
    f"""
    WITH armed AS (
        INSERT INTO automation.schedule AS s (task_id, trigger, offset_s, deadline, slot, next_at)
        SELECT :task_id, k.trigger, k.offset_s, :due_at, 0,
               {_FIRST_DUE.format(trigger="k.trigger", deadline=":due_at", offset="k.offset_s")}
        FROM automation.schedule_kinds k
        ON CONFLICT (task_id, trigger, offset_s) DO UPDATE
            SET deadline = EXCLUDED.deadline, slot = 0, next_at = EXCLUDED.next_at
            WHERE s.deadline IS DISTINCT FROM EXCLUDED.deadline
        RETURNING next_at
    )
    SELECT (SELECT min(next_at) FROM armed) AS armed_at,
           (SELECT min(next_at) FROM automation.schedule
            WHERE next_at IS NOT NULL AND task_id <> :task_id) AS earliest
    """
)
_DISARM = text("DELETE FROM automation.schedule WHERE task_id = :task_id")
_WAKE = text("SELECT pg_notify(:channel, :payload)")

_BACKFILL = text(
    f"""
    INSERT INTO automation.schedule (task_id, trigger, offset_s, deadline, slot, next_at)
    SELECT task_id, :trigger, :offset_s, due_at, 0, first_due
    FROM (
        SELECT task_id, due_at,
               {_FIRST_DUE.format(trigger=":trigger", deadline="due_at", offset=":offset_s")}
                   AS first_due
        FROM automation.tasks
        WHERE NOT deleted AND status IN ('todo', 'in_progress') AND due_at IS NOT NULL
    ) AS open_tasks
    WHERE first_due >= :since
    ON CONFLICT (task_id, trigger, offset_s) DO NOTHING
    """
)


@dataclass(frozen=True, slots=True)
class Applied:
    """Whether an event moved the projection, and the earliest entry it (re-)armed."""

    applied: bool
    armed_at: datetime | None = None


def _row(task: TaskSnapshot, *, deleted: bool) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "version": task.version,
        "deleted": deleted,
        "status": task.status,
        "priority": task.priority,
        "project": task.project,
        "labels": list(task.labels),
        "owner_id": task.owner_id,
        "assignee_id": task.assignee_id,
        "due_at": task.due_at,
        "snapshot": task.model_dump_json(),
    }


def is_armed(task: TaskSnapshot, *, deleted: bool) -> bool:
    """Whether deadline triggers should be armed for this state of the task."""
    return not deleted and task.due_at is not None and task.status in OPEN_STATUSES


async def apply_snapshot(session: AsyncSession, task: TaskSnapshot, *, deleted: bool) -> Applied:
    """Apply one task state if it is newer than the projection's; arm or disarm its entries."""
    result = await session.execute(_UPSERT, _row(task, deleted=deleted))
    if result.first() is None:
        return Applied(applied=False)
    if not is_armed(task, deleted=deleted):
        await session.execute(_DISARM, {"task_id": task.id})
        return Applied(applied=True)
    row = (await session.execute(_ARM, {"task_id": task.id, "due_at": task.due_at})).one()
    armed_at: datetime | None = row.armed_at
    if armed_at is None or not needs_wake(armed_at, row.earliest, datetime.now(UTC)):
        return Applied(applied=True)
    return Applied(applied=True, armed_at=armed_at)


WAKE_MARGIN = timedelta(seconds=2)


def needs_wake(armed_at: datetime, earliest: datetime | None, now: datetime) -> bool:
    """Whether arming an entry at `armed_at` must wake the schedule loops.

    A loop always wakes by the earliest pending entry, so an entry no earlier than that needs
    no notification: the loop will see it when it looks again. Skipping the NOTIFY matters,
    because PostgreSQL serialises the commits of notifying transactions. An earliest entry
    that is (nearly) due may be being fired and spent right now, so near it we still notify.
    """
    return earliest is None or armed_at < earliest or earliest <= now + WAKE_MARGIN


async def wake_scheduler(session: AsyncSession, at: datetime) -> None:
    """Tell every engine's schedule loop (on commit) that an entry is due at `at`."""
    await session.execute(
        _WAKE, {"channel": SCHEDULE_CHANNEL, "payload": f"{at.astimezone(UTC).timestamp():.6f}"}
    )


async def backfill(session: AsyncSession, *, trigger: str, offset_s: int, since: datetime) -> int:
    """Arm a newly used kind for every open task whose trigger moment is at or after `since`."""
    result = await session.execute(
        _BACKFILL, {"trigger": trigger, "offset_s": offset_s, "since": since}
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def reseed(
    session: AsyncSession, snapshots: Iterable[TaskSnapshot], *, complete: bool
) -> int:
    """Rebuild the projection from current task states (e.g. paged from the tasks API).

    Each state goes through the same version guard as events. With `complete`, tasks the
    source no longer has are marked deleted (and disarmed).
    """
    seen: list[uuid.UUID] = []
    for task in snapshots:
        await apply_snapshot(session, task, deleted=False)
        seen.append(task.id)
    if complete:
        await session.execute(
            text(
                "UPDATE automation.tasks SET deleted = true "
                "WHERE NOT deleted AND NOT (task_id = ANY(:seen))"
            ),
            {"seen": seen},
        )
        await session.execute(
            text(
                "DELETE FROM automation.schedule s USING automation.tasks t "
                "WHERE s.task_id = t.task_id AND t.deleted"
            )
        )
    return len(seen)


__all__ = [
    "WAKE_MARGIN",
    "Applied",
    "apply_snapshot",
    "backfill",
    "is_armed",
    "needs_wake",
    "reseed",
    "wake_scheduler",
]
