"""Task events written to the tasks service's outbox, in the transaction of the change."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from smarttasks.core.auth import Principal
from smarttasks.core.events import EVENTS_EXCHANGE, Actor, TaskEvent, TaskEventType, TaskSnapshot
from smarttasks.core.outbox import add_to_outbox
from smarttasks.tasks.models import Task, outbox


def snapshot(task: Task) -> TaskSnapshot:
    return TaskSnapshot.model_validate(task, from_attributes=True)


async def publish_task_event(
    session: AsyncSession,
    *,
    kind: TaskEventType,
    task: Task,
    principal: Principal,
    changes: dict[str, list[Any]] | None = None,
    along_with: tuple[Insert, dict[str, Any]] | None = None,
) -> TaskEvent:
    """One event per change, carrying the full task after it and what changed.

    `along_with`: the statement making the change, written with the event in one statement.
    """
    event = TaskEvent(
        type=kind,
        actor=Actor(user_id=principal.user_id, email=principal.email),
        data=snapshot(task),
        changes=changes or {},
    )
    await add_to_outbox(
        session,
        outbox,
        event_id=event.id,
        exchange=EVENTS_EXCHANGE,
        routing_key=kind.value,
        message=event,
        aggregate_id=task.id,
        along_with=along_with,
    )
    return event
