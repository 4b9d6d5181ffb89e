"""Business logic of the tasks service: visibility, optimistic concurrency, events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.core.auth import Principal
from smarttasks.core.errors import Forbidden, NotFound, PreconditionFailed, ValidationFailed
from smarttasks.core.events import TaskEventType
from smarttasks.tasks.models import Task
from smarttasks.tasks.pagination import Cursor
from smarttasks.tasks.publishers import publish_task_event
from smarttasks.tasks.repository import TaskFilter, TaskRepository
from smarttasks.tasks.schemas import NOT_CLEARABLE, SortKey, TaskCreate, TaskPatch, TaskStatus

log = structlog.get_logger()


def _now() -> datetime:
    return datetime.now(UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


async def create_task(session: AsyncSession, *, data: TaskCreate, principal: Principal) -> Task:
    """Create a task owned by the caller and emit `task.created`."""
    now = _now()
    task = Task(
        id=uuid.uuid4(),
        title=data.title,
        description=data.description,
        status=data.status.value,
        priority=data.priority.value,
        labels=list(data.labels),
        project=data.project,
        owner_id=principal.user_id,
        assignee_id=data.assignee_id,
        due_at=data.due_at,
        completed_at=now if data.status is TaskStatus.DONE else None,
        created_at=now,
        updated_at=now,
        version=1,
    )
    await publish_task_event(
        session,
        kind=TaskEventType.CREATED,
        task=task,
        principal=principal,
        along_with=TaskRepository.insert(task),
    )
    log.info("task_created", task_id=str(task.id))
    return task


async def get_task(session: AsyncSession, *, task_id: uuid.UUID, principal: Principal) -> Task:
    """The task if the caller may see it; 404 otherwise (existence is not revealed)."""
    task = await TaskRepository(session).get_visible(task_id, principal)
    if task is None:
        raise NotFound("Task not found")
    return task


async def update_task(
    session: AsyncSession,
    *,
    task_id: uuid.UUID,
    patch: TaskPatch,
    principal: Principal,
    if_match: int | None,
) -> Task:
    """Apply a partial update; 412 when `if_match` names an older version."""
    task = await TaskRepository(session).get_visible(task_id, principal, for_update=True)
    if task is None:
        raise NotFound("Task not found")
    if if_match is not None and if_match != task.version:
        raise PreconditionFailed(
            f"Task changed since version {if_match}; it is now at version {task.version}"
        )
    changes: dict[str, list[Any]] = {}
    for field, value in patch.model_dump(exclude_unset=True).items():
        if value is None and field in NOT_CLEARABLE:
            raise ValidationFailed(
                f"{field}: may not be null",
                errors=[{"field": field, "in": "body", "message": "may not be null"}],
            )
        if isinstance(value, StrEnum):
            value = value.value
        old = getattr(task, field)
        if old != value:
            changes[field] = [_jsonable(old), _jsonable(value)]
            setattr(task, field, value)
    if not changes:
        return task
    now = _now()
    if "status" in changes:
        done = task.status == TaskStatus.DONE.value
        task.completed_at = now if done else None
    task.updated_at = now
    task.version += 1
    await session.flush()
    kind = TaskEventType.UPDATED
    if "status" in changes and task.status == TaskStatus.DONE.value:
        kind = TaskEventType.COMPLETED
    elif "assignee_id" in changes:
        kind = TaskEventType.ASSIGNED
    await publish_task_event(session, kind=kind, task=task, principal=principal, changes=changes)
    log.info("task_updated", task_id=str(task.id), fields=sorted(changes), event_type=kind.value)
    return task


async def delete_task(session: AsyncSession, *, task_id: uuid.UUID, principal: Principal) -> None:
    """Delete a task (owner or admin only) and emit `task.deleted` with its last state."""
    repo = TaskRepository(session)
    task = await repo.get_visible(task_id, principal, for_update=True)
    if task is None:
        raise NotFound("Task not found")
    if task.owner_id != principal.user_id and not principal.is_admin:
        raise Forbidden("Only the owner or an administrator may delete a task")
    await publish_task_event(session, kind=TaskEventType.DELETED, task=task, principal=principal)
    await repo.delete(task)
    log.info("task_deleted", task_id=str(task.id))


async def list_tasks(
    session: AsyncSession,
    *,
    principal: Principal,
    flt: TaskFilter,
    sort: SortKey,
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[Task], str | None]:
    """One page of the caller's visible tasks and the cursor of the next page."""
    decoded = Cursor.decode(cursor, sort=sort.value) if cursor else None
    rows = await TaskRepository(session).page(
        principal, flt, sort=sort, cursor=decoded, limit=limit + 1
    )
    items = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        value = getattr(last, sort.value.lstrip("-"))
        next_cursor = Cursor(sort=sort.value, value=value, last_id=last.id).encode()
    return items, next_cursor
