"""The event contract between services: exchanges, routing keys and message envelopes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

EVENTS_EXCHANGE = "smarttasks.events"
NOTIFICATIONS_EXCHANGE = "smarttasks.notifications"
NOTIFICATION_REQUESTED = "notification.requested"
ENVELOPE_VERSION = 1


class TaskEventType(StrEnum):
    """Routing keys of task events on the `smarttasks.events` topic exchange."""

    CREATED = "task.created"
    UPDATED = "task.updated"
    ASSIGNED = "task.assigned"
    COMPLETED = "task.completed"
    DELETED = "task.deleted"


class TaskSnapshot(BaseModel):
    """The full task after the change, as carried in every task event."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID
    title: str
    description: str = ""
    status: str
    priority: str
    labels: list[str] = Field(default_factory=list)
    project: str | None = None
    owner_id: uuid.UUID
    assignee_id: uuid.UUID | None = None
    due_at: datetime | None = None
    completed_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    version: int


class Actor(BaseModel):
    """Who caused the event."""

    user_id: uuid.UUID | None = None
    email: str | None = None


class TaskEvent(BaseModel):
    """Envelope of a task event; `id` is stable across redelivery, consumers dedupe on it."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: TaskEventType
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    version: int = ENVELOPE_VERSION
    actor: Actor = Field(default_factory=Actor)
    data: TaskSnapshot
    changes: dict[str, list[Any]] = Field(default_factory=dict)


class RuleRef(BaseModel):
    """Which rule (and which generation of it) asked for a notification."""

    namespace: str
    name: str
    uid: str
    generation: int


USER_PREFIX = "user:"
"""A `NotificationRequested.recipients` entry naming a user by id: `user:<uuid>`."""


class NotificationRequested(BaseModel):
    """Envelope of `notification.requested`: what to send, to whom, through which channel."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID
    type: str = NOTIFICATION_REQUESTED
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    version: int = ENVELOPE_VERSION
    rule: RuleRef
    task: TaskSnapshot | None = None
    tasks: list[TaskSnapshot] = Field(default_factory=list)
    channel: str
    recipients: list[str] = Field(default_factory=list)
    subject: str = ""
    body: str = ""
    rendered: bool = False
    """True when `subject` and `body` are final text (the engine renders rule templates);
    false when they are templates the notification service renders per recipient."""
    url: str | None = None
    secret_ref: dict[str, str] | None = None
    dedup_key: str
