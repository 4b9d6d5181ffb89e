"""Request and response bodies of the tasks service."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smarttasks.core.validation import AwareIsoDatetime, StorableStr


class TaskStatus(StrEnum):
    TODO = "todo"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


Title = Annotated[StorableStr, Field(min_length=1, max_length=200)]
Description = Annotated[StorableStr, Field(max_length=10_000)]
Label = Annotated[StorableStr, Field(min_length=1, max_length=50)]
ProjectSlug = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
]
Labels = Annotated[list[Label], Field(max_length=20)]


def _dedupe(labels: list[str] | None) -> list[str] | None:
    return list(dict.fromkeys(labels)) if labels is not None else None


EXAMPLE: dict[str, Any] = {
    "title": "Renew the TLS certificate",
    "description": "The wildcard certificate expires on Friday.",
    "priority": "high",
    "labels": ["ops", "customer"],
    "project": "apollo",
    "due_at": "2026-12-04T17:00:00+01:00",
}


class TaskCreate(BaseModel):
    """A new task; the caller becomes its owner."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE]})

    title: Title
    description: Description = ""
    status: TaskStatus = TaskStatus.TODO
    priority: Priority = Priority.NORMAL
    labels: Labels = Field(default_factory=list)
    project: ProjectSlug | None = None
    assignee_id: uuid.UUID | None = None
    due_at: AwareIsoDatetime | None = Field(
        default=None, description="ISO 8601 with a UTC offset; naive times are refused."
    )

    _labels = field_validator("labels")(_dedupe)


class TaskPatch(BaseModel):
    """Fields to change; absent fields stay as they are, `null` clears a clearable field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"status": "done"}]})

    title: Title | None = None
    description: Description | None = None
    status: TaskStatus | None = None
    priority: Priority | None = None
    labels: Labels | None = None
    project: ProjectSlug | None = None
    assignee_id: uuid.UUID | None = None
    due_at: AwareIsoDatetime | None = None

    _labels = field_validator("labels")(_dedupe)


NOT_CLEARABLE = ("title", "description", "status", "priority", "labels")


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    description: str
    status: TaskStatus
    priority: Priority
    labels: list[str]
    project: str | None
    owner_id: uuid.UUID
    assignee_id: uuid.UUID | None
    due_at: datetime | None
    completed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )


class SortKey(StrEnum):
    CREATED = "created_at"
    CREATED_DESC = "-created_at"
    UPDATED = "updated_at"
    UPDATED_DESC = "-updated_at"
    DUE = "due_at"
    DUE_DESC = "-due_at"
