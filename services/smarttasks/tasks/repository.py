"""Queries of the tasks service; flushes, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, delete, insert, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from smarttasks.core.auth import Principal
from smarttasks.tasks.models import Task
from smarttasks.tasks.pagination import Cursor
from smarttasks.tasks.schemas import SortKey, TaskStatus

_TABLE: Table = Task.__table__  # type: ignore[assignment]
_COLUMNS = tuple(column.key for column in _TABLE.columns)
# Parameters named apart from any column, so that the statement can run as a CTE inside
# the outbox row's insert (whose columns' own parameter names are reserved).
_INSERT = insert(_TABLE).values({column: bindparam(f"task_{column}") for column in _COLUMNS})

OPEN_STATUSES = (TaskStatus.TODO.value, TaskStatus.IN_PROGRESS.value)


@dataclass(frozen=True)
class TaskFilter:
    """What a list request asks for; None means "any"."""

    statuses: tuple[str, ...] = ()
    assignee_id: uuid.UUID | None = None
    project: str | None = None
    label: str | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    overdue_at: datetime | None = None
    title_contains: str | None = None


def visible_to(principal: Principal) -> ColumnElement[bool]:
    """Owner, assignee and administrators see a task; nobody else knows it exists."""
    if principal.is_admin:
        return true()
    return or_(Task.owner_id == principal.user_id, Task.assignee_id == principal.user_id)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class TaskRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @staticmethod
    def insert(task: Task) -> tuple[Insert, dict[str, Any]]:
        """The INSERT of a new, fully populated task and its parameters, for the caller to
        run with the task's event (`publish_task_event(along_with=...)`).

        A plain INSERT rather than the session's unit of work: a created task is not
        changed again in its request, and the flush machinery cost more than the insert.
        """
        return _INSERT, {f"task_{column}": getattr(task, column) for column in _COLUMNS}

    async def get_visible(
        self, task_id: uuid.UUID, principal: Principal, *, for_update: bool = False
    ) -> Task | None:
        query = select(Task).where(Task.id == task_id, visible_to(principal))
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def delete(self, task: Task) -> None:
        await self.session.execute(delete(Task).where(Task.id == task.id))

    async def page(
        self,
        principal: Principal,
        flt: TaskFilter,
        *,
        sort: SortKey,
        cursor: Cursor | None,
        limit: int,
    ) -> Sequence[Task]:
        descending = sort.value.startswith("-")
        column = getattr(Task, sort.value.lstrip("-"))
        query = select(Task).where(visible_to(principal), *self._conditions(flt))
        if cursor is not None:
            query = query.where(self._after(column, cursor, descending=descending))
        if descending:
            query = query.order_by(column.desc().nulls_last(), Task.id.desc())
        else:
            query = query.order_by(column.asc().nulls_last(), Task.id.asc())
        return (await self.session.execute(query.limit(limit))).scalars().all()

    @staticmethod
    def _after(
        column: ColumnElement[datetime], cursor: Cursor, *, descending: bool
    ) -> ColumnElement[bool]:
        id_after = Task.id < cursor.last_id if descending else Task.id > cursor.last_id
        if cursor.value is None:  # already in the NULLS LAST tail
            return and_(column.is_(None), id_after)
        beyond = column < cursor.value if descending else column > cursor.value
        return or_(beyond, and_(column == cursor.value, id_after), column.is_(None))

    @staticmethod
    def _conditions(flt: TaskFilter) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if flt.statuses:
            out.append(Task.status.in_(flt.statuses))
        if flt.assignee_id is not None:
            out.append(Task.assignee_id == flt.assignee_id)
        if flt.project is not None:
            out.append(Task.project == flt.project)
        if flt.label is not None:
            out.append(Task.labels.contains([flt.label]))
        if flt.due_before is not None:
            out.append(Task.due_at < flt.due_before)
        if flt.due_after is not None:
            out.append(Task.due_at > flt.due_after)
        if flt.overdue_at is not None:
            out.append(and_(Task.due_at < flt.overdue_at, Task.status.in_(OPEN_STATUSES)))
        if flt.title_contains:
            out.append(Task.title.ilike(f"%{_escape_like(flt.title_contains)}%", escape="\\"))
        return out
