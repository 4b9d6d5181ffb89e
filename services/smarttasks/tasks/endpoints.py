"""HTTP endpoints of the tasks service (thin: validate, authorise, call the service)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from smarttasks.core.auth import CurrentPrincipal
from smarttasks.core.db import OneStatementSessionDep, SessionDep
from smarttasks.core.errors import BadRequest, problem_responses
from smarttasks.core.validation import AwareIsoDatetime, StorableStr
from smarttasks.tasks import service
from smarttasks.tasks.models import Task
from smarttasks.tasks.repository import TaskFilter
from smarttasks.tasks.schemas import SortKey, TaskCreate, TaskOut, TaskPage, TaskPatch, TaskStatus

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

COMMON = problem_responses(
    {401: "Missing or invalid access token", 422: "Invalid input; `errors` names each field"}
)
ONE = {**COMMON, **problem_responses({404: "No such task, or not visible to you"})}


def _etag(task: Task) -> str:
    return f'"{task.version}"'


def _parse_if_match(value: str | None) -> int | None:
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 9:
        raise BadRequest('If-Match must be an ETag returned by this API, like "3"')
    return int(text)


@router.post(
    "",
    response_model=TaskOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a task",
    responses=COMMON,
)
async def create_task(
    data: TaskCreate,
    principal: CurrentPrincipal,
    session: OneStatementSessionDep,
    response: Response,
) -> TaskOut:
    task = await service.create_task(session, data=data, principal=principal)
    response.headers["ETag"] = _etag(task)
    response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    return TaskOut.model_validate(task)


@router.get(
    "",
    response_model=TaskPage,
    summary="List the tasks you own or are assigned, with filters and cursor pagination",
    responses={**COMMON, **problem_responses({400: "Invalid cursor"})},
)
async def list_tasks(
    principal: CurrentPrincipal,
    session: OneStatementSessionDep,
    status_: Annotated[list[TaskStatus] | None, Query(alias="status", max_length=4)] = None,
    assignee: Annotated[str | None, Query(description="A user id, or `me`", max_length=36)] = None,
    project: Annotated[str | None, Query(max_length=63)] = None,
    label: Annotated[StorableStr | None, Query(max_length=50)] = None,
    due_before: AwareIsoDatetime | None = None,
    due_after: AwareIsoDatetime | None = None,
    overdue: Annotated[bool, Query(description="Only open tasks whose deadline passed")] = False,
    q: Annotated[StorableStr | None, Query(max_length=200, description="Title contains")] = None,
    sort: SortKey = SortKey.CREATED_DESC,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> TaskPage:
    assignee_id: uuid.UUID | None = None
    if assignee == "me":
        assignee_id = principal.user_id
    elif assignee is not None:
        try:
            assignee_id = uuid.UUID(assignee)
        except ValueError:
            raise BadRequest("assignee must be a user id or `me`") from None
    flt = TaskFilter(
        statuses=tuple(s.value for s in status_ or ()),
        assignee_id=assignee_id,
        project=project,
        label=label,
        due_before=due_before,
        due_after=due_after,
        overdue_at=datetime.now(UTC) if overdue else None,
        title_contains=q,
    )
    items, next_cursor = await service.list_tasks(
        session, principal=principal, flt=flt, sort=sort, cursor=cursor, limit=limit
    )
    return TaskPage(items=[TaskOut.model_validate(t) for t in items], next_cursor=next_cursor)


@router.get("/{task_id}", response_model=TaskOut, summary="Get a task", responses=ONE)
async def get_task(
    task_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: OneStatementSessionDep,
    response: Response,
) -> TaskOut:
    task = await service.get_task(session, task_id=task_id, principal=principal)
    response.headers["ETag"] = _etag(task)
    return TaskOut.model_validate(task)


@router.patch(
    "/{task_id}",
    response_model=TaskOut,
    summary="Change a task; send If-Match with its ETag to avoid overwriting others' changes",
    responses={**ONE, **problem_responses({412: "The task changed since your ETag"})},
)
async def patch_task(
    task_id: uuid.UUID,
    patch: TaskPatch,
    principal: CurrentPrincipal,
    session: SessionDep,
    response: Response,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
) -> TaskOut:
    task = await service.update_task(
        session,
        task_id=task_id,
        patch=patch,
        principal=principal,
        if_match=_parse_if_match(if_match),
    )
    response.headers["ETag"] = _etag(task)
    return TaskOut.model_validate(task)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a task (owner or administrator)",
    responses={**ONE, **problem_responses({403: "Only the owner may delete"})},
)
async def delete_task(task_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep) -> None:
    await service.delete_task(session, task_id=task_id, principal=principal)
