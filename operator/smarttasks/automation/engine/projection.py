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

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.automation.engine.model import OPEN_STATUSES
from smarttasks.automation.engine.tables import SCHEDULE_CHANNEL
from smarttasks.core.events import TaskSnapshot

# First due time of an entry of kind (trigger, offset) for a deadline.
_FIRST_DUE = (
    "CASE WHEN {trigger} = 'DeadlineApproaching' "
    "THEN {deadline} - make_interval(secs => {offset}) ELSE {deadline} END"
)

# One round trip for any number of task states (one per task), whatever they do to the
# schedule. `:states` is a JSON array of {"s": snapshot, "d": deleted, "a": armed}: one text
# parameter, the snapshot as serialised once, the columns read from it here.
#
# Each state applies if it is newer than the projection's (RETURNING says which did). Then,
# for the tasks it applied to only: arming every kind for the task, where a moved deadline
# re-arms (slot 0) and an unchanged one is left alone so a spent entry stays spent; or
# disarming. Rows are written in task order, so concurrent batches lock in the same order.
#
# Returns the earliest entry whose due time changed and, only then (the scalar subquery in
# the CASE runs only if its branch is taken), the earliest entry of any other task, as
# committed before this statement.
#
# The statement reads one snapshot, taken before it waits for any task's row lock: entries
# armed by a transaction that committed meanwhile (the same task handled concurrently
# elsewhere) can survive a disarm. The schedule loop drops the entries of closed tasks when
# it claims them, as the projection says, so such a leftover never fires.
_APPLY = text(
    f"""
    WITH state AS (
        SELECT CAST(r->'s'->>'id' AS uuid) AS task_id,
               CAST(r->'s'->>'version' AS integer) AS version,
               CAST(r->>'d' AS boolean) AS deleted,
               CAST(r->>'a' AS boolean) AS armed,
               r->'s'->>'status' AS status,
               r->'s'->>'priority' AS priority,
               r->'s'->>'project' AS project,
               ARRAY(SELECT jsonb_array_elements_text(r->'s'->'labels')) AS labels,
               CAST(r->'s'->>'owner_id' AS uuid) AS owner_id,
               CAST(r->'s'->>'assignee_id' AS uuid) AS assignee_id,
               CAST(r->'s'->>'due_at' AS timestamptz) AS due_at,
               r->'s' AS snapshot
        FROM jsonb_array_elements(CAST(:states AS jsonb)) AS r
    ),
    applied AS (
        INSERT INTO automation.tasks AS t
            (task_id, version, deleted, status, priority, project, labels, owner_id,
             assignee_id, due_at, snapshot, updated_at)
        SELECT task_id, version, deleted, status, priority, project, labels, owner_id,
               assignee_id, due_at, snapshot, now()
        FROM state ORDER BY task_id
        ON CONFLICT (task_id) DO UPDATE SET
            version = EXCLUDED.version, deleted = EXCLUDED.deleted, status = EXCLUDED.status,
            priority = EXCLUDED.priority, project = EXCLUDED.project, labels = EXCLUDED.labels,
            owner_id = EXCLUDED.owner_id, assignee_id = EXCLUDED.assignee_id,
            due_at = EXCLUDED.due_at, snapshot = EXCLUDED.snapshot, updated_at = now()
        WHERE t.version < EXCLUDED.version
           OR (EXCLUDED.deleted AND NOT t.deleted AND t.version <= EXCLUDED.version)
        RETURNING task_id
    ),
    disarmed AS (
        DELETE FROM automation.schedule AS s
        USING state JOIN applied USING (task_id)
        WHERE s.task_id = state.task_id AND NOT state.armed
    ),
    armed AS (
        INSERT INTO automation.schedule AS s (task_id, trigger, offset_s, deadline, slot, next_at)
        SELECT st.task_id, k.trigger, k.offset_s, st.due_at, 0,
               {_FIRST_DUE.format(trigger="k.trigger", deadline="st.due_at", offset="k.offset_s")}
        FROM state AS st JOIN applied USING (task_id) CROSS JOIN automation.schedule_kinds k
        WHERE st.armed
        ORDER BY st.task_id, k.trigger, k.offset_s
        ON CONFLICT (task_id, trigger, offset_s) DO UPDATE
            SET deadline = EXCLUDED.deadline, slot = 0, next_at = EXCLUDED.next_at
            WHERE s.deadline IS DISTINCT FROM EXCLUDED.deadline
        RETURNING next_at
    ),
    first_armed AS (SELECT min(next_at) AS at FROM armed)
    SELECT (SELECT at FROM first_armed) AS armed_at,
           CASE WHEN (SELECT at FROM first_armed) IS NOT NULL THEN
               (SELECT min(next_at) FROM automation.schedule
                WHERE next_at IS NOT NULL AND task_id <> ALL (SELECT task_id FROM state))
           END AS earliest
    """
)
_WAKE = text("SELECT pg_notify(:channel, :payload)")
_RESEED_PAGE = 500

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
    """The earliest entry the applied task states (re-)armed, if that entry must wake the
    schedule loops (see `needs_wake`)."""

    armed_at: datetime | None = None


def is_armed(task: TaskSnapshot, *, deleted: bool) -> bool:
    """Whether deadline triggers should be armed for this state of the task."""
    return not deleted and task.due_at is not None and task.status in OPEN_STATUSES


def latest_states(
    states: Iterable[tuple[TaskSnapshot, bool]],
) -> list[tuple[TaskSnapshot, bool]]:
    """Of several `(snapshot, deleted)` states of a task, the one the version guard leaves
    when they are applied one after the other, in any order: the highest version, and at
    equal versions the deletion. One per task, in first-seen order."""
    latest: dict[uuid.UUID, tuple[TaskSnapshot, bool]] = {}
    for task, deleted in states:
        held = latest.get(task.id)
        if held is None or (task.version, deleted) > (held[0].version, held[1]):
            latest[task.id] = (task, deleted)
    return list(latest.values())


def _state(task: TaskSnapshot, deleted: bool) -> str:
    flags = ("true" if deleted else "false", "true" if is_armed(task, deleted=deleted) else "false")
    return f'{{"d":{flags[0]},"a":{flags[1]},"s":{task.model_dump_json()}}}'


async def apply_snapshots(
    session: AsyncSession, states: Iterable[tuple[TaskSnapshot, bool]]
) -> Applied:
    """Apply task states `(snapshot, deleted)`, each only if newer than the projection's, and
    arm or disarm their entries: as applying them one by one would, in one statement."""
    latest = latest_states(states)
    if not latest:
        return Applied()
    payload = "[" + ",".join(_state(task, deleted) for task, deleted in latest) + "]"
    row = (await session.execute(_APPLY, {"states": payload})).one()
    armed_at: datetime | None = row.armed_at
    if armed_at is None or not needs_wake(armed_at, row.earliest, datetime.now(UTC)):
        return Applied()
    return Applied(armed_at=armed_at)


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
    page: list[tuple[TaskSnapshot, bool]] = []
    for task in snapshots:
        page.append((task, False))
        seen.append(task.id)
        if len(page) == _RESEED_PAGE:
            await apply_snapshots(session, page)
            page = []
    await apply_snapshots(session, page)
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
    "apply_snapshots",
    "backfill",
    "is_armed",
    "latest_states",
    "needs_wake",
    "reseed",
    "wake_scheduler",
]
