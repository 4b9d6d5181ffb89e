"""Request and response bodies of the rules API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from smarttasks.automation.rules.model import RuleSpec

RuleName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=52,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description=(
            "Lower-case letters, digits and '-', starting and ending with a letter or digit. "
            "The rule's id is this name followed by a suffix that is yours alone."
        ),
    ),
]

SPEC_EXAMPLE: dict[str, Any] = {
    "description": "Email the assignee when a high-priority task is overdue",
    "trigger": {"event": "TaskOverdue", "repeat": "24h"},
    "match": {
        "priorities": ["high", "urgent"],
        "condition": 'task.assignee != null && !("muted" in task.labels)',
    },
    "actions": [
        {
            "notify": {
                "channel": "email",
                "to": ["assignee"],
                "subject": "Overdue: {{ task.title }}",
            }
        }
    ],
}


class RuleCreate(BaseModel):
    """A new rule; it applies to your tasks only."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "overdue-high", "spec": SPEC_EXAMPLE}]},
    )

    name: RuleName
    spec: RuleSpec


class RuleReplace(BaseModel):
    """The rule's new spec (replaces the whole spec; a new generation)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"spec": SPEC_EXAMPLE}]}
    )

    spec: RuleSpec


class ReadyOut(BaseModel):
    """The operator's verdict on the rule's current generation."""

    status: str = Field(description='"True", "False" or "Unknown" (not compiled yet).')
    reason: str
    message: str
    observed_generation: int | None = None


class RuleOut(BaseModel):
    """A rule, as stored."""

    id: str = Field(description="What to put in /api/v1/rules/{id}.")
    name: str
    namespace: str
    owner_id: uuid.UUID | None = Field(
        description="The user whose tasks the rule applies to; null for cluster-wide rules."
    )
    generation: int
    spec: dict[str, Any] = Field(description="The spec as stored (camelCase, as in the CRD).")
    ready: ReadyOut
    fired_count: int = 0
    last_fired_at: datetime | None = None
    created_at: datetime | None = None


class RulePage(BaseModel):
    items: list[RuleOut]


class TaskSample(BaseModel):
    """A task to try the rule on: fields left out come from a typical task, null clears them."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, Field(max_length=200)] | None = None
    description: Annotated[str, Field(max_length=10_000)] | None = None
    status: Annotated[str, Field(max_length=20)] | None = None
    priority: Annotated[str, Field(max_length=10)] | None = None
    labels: Annotated[list[Annotated[str, Field(max_length=50)]], Field(max_length=20)] | None = (
        None
    )
    project: Annotated[str, Field(max_length=63)] | None = None
    owner_id: uuid.UUID | None = Field(default=None, description="Default: you.")
    assignee_id: uuid.UUID | None = None
    due_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None


class DryRunIn(BaseModel):
    """A spec to validate and compile, and optionally a task to try it on."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "spec": SPEC_EXAMPLE,
                    "task": {"title": "Renew the certificate", "priority": "high"},
                }
            ]
        },
    )

    spec: RuleSpec
    task: TaskSample | None = None
    changes: (
        Annotated[dict[Annotated[str, Field(max_length=64)], list[Any]], Field(max_length=32)]
        | None
    ) = Field(default=None, description='For TaskUpdated: {"status": ["todo", "done"]}.')
    now: AwareDatetime | None = Field(default=None, description="Default: the current time.")


class CheckOut(BaseModel):
    name: str
    passed: bool
    detail: str


class RenderedOut(BaseModel):
    channel: str
    to: list[str]
    url: str | None
    subject: str | None
    body: str | None
    error: str | None = Field(default=None, description="Why this action did not render.")


class DryRunOut(BaseModel):
    """The rule compiles; whether the task matches it, and what would be sent."""

    compiled: bool = True
    summary: str
    matches: bool
    checks: list[CheckOut]
    actions: list[RenderedOut]


__all__ = [
    "CheckOut",
    "DryRunIn",
    "DryRunOut",
    "ReadyOut",
    "RenderedOut",
    "RuleCreate",
    "RuleOut",
    "RulePage",
    "RuleReplace",
    "TaskSample",
]
