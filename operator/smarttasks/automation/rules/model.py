"""The AutomationRule spec as a pydantic model, mirroring crds/automationrules.smarttasks.io.yaml.

The CRD is the contract: every bound, enum, pattern and cross-field rule here says what
the CRD says, with the same messages, so a rule refused by the REST API would have been
refused by the API server, and one accepted here is accepted there. Field names are the
CRD's camelCase on the wire (``timeZone``, ``secretRef``, ``maxPerHour``) and snake_case
in Python.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError


class TriggerEvent(StrEnum):
    """What fires a rule (``spec.trigger.event``)."""

    TASK_CREATED = "TaskCreated"
    TASK_UPDATED = "TaskUpdated"
    TASK_ASSIGNED = "TaskAssigned"
    TASK_COMPLETED = "TaskCompleted"
    TASK_DELETED = "TaskDeleted"
    DEADLINE_APPROACHING = "DeadlineApproaching"
    TASK_OVERDUE = "TaskOverdue"
    SCHEDULE = "Schedule"

    @property
    def is_task_event(self) -> bool:
        """True for triggers fired by a task event, false for the time-based ones."""
        return self not in _TIME_TRIGGERS


_TIME_TRIGGERS = frozenset(
    {TriggerEvent.DEADLINE_APPROACHING, TriggerEvent.TASK_OVERDUE, TriggerEvent.SCHEDULE}
)


class Channel(StrEnum):
    """How a notification is delivered."""

    EMAIL = "email"
    WEBHOOK = "webhook"


class Priority(StrEnum):
    """Task priorities a rule can match."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


# Patterns copied from the CRD. pydantic evaluates them with Rust's regex crate, where `$`
# only matches at the very end, as in the API server's Go regexps.
DURATION_PATTERN = r"^([0-9]+[smhd])+$"
_ZERO_DURATION = re.compile(r"(0+[smhd])+")
SCHEDULE_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+(\s+\S+){4})$"
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
FIELD_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
RECIPIENT_PATTERN = r"^(assignee|owner|[^@\s]+@[^@\s]+\.[^@\s]+)$"
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"

_PATTERN_HINTS = {
    DURATION_PATTERN: "must be a duration such as 30m, 1h, 2d or 1d12h (units s, m, h, d)",
    SCHEDULE_PATTERN: (
        "must be a five-field cron expression (minute hour day-of-month month day-of-week), "
        "for example '0 9 * * 1-5', or one of @yearly, @monthly, @weekly, @daily, @hourly"
    ),
    TIME_ZONE_PATTERN: "must be an IANA time zone name such as Europe/Berlin",
    FIELD_NAME_PATTERN: "must be a task field name such as status or assignee_id",
    RECIPIENT_PATTERN: "must be assignee, owner or an email address",
    SECRET_NAME_PATTERN: "must be a Secret name (lower-case letters, digits, '-' and '.')",
    SECRET_KEY_PATTERN: "may only contain letters, digits, '-', '_' and '.'",
}


def describe_error(error: ErrorDetails) -> str:
    """A validation error of this model in words a person understands (no regexps)."""
    if error["type"] == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern")
        if pattern in _PATTERN_HINTS:
            return _PATTERN_HINTS[pattern]
    return str(error["msg"]).removeprefix("Value error, ")


def _pattern(pattern: str) -> tuple[Any, Any]:
    """The CRD's pattern, checked with a message a person understands (not the regexp).

    Python's ``re`` in ASCII mode with ``fullmatch`` reads these patterns as the API
    server's RE2 does; the JSON schema still shows the pattern itself.
    """
    compiled = re.compile(pattern, re.ASCII)
    hint = _PATTERN_HINTS[pattern]

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise PydanticCustomError("string_pattern_mismatch", hint, {"pattern": pattern})
        return value

    return (AfterValidator(check), Field(json_schema_extra={"pattern": pattern}))


Duration = Annotated[str, StringConstraints(max_length=32), *_pattern(DURATION_PATTERN)]
FieldName = Annotated[
    str, StringConstraints(min_length=1, max_length=64), *_pattern(FIELD_NAME_PATTERN)
]
ProjectName = Annotated[str, StringConstraints(min_length=1, max_length=63)]
LabelName = Annotated[str, StringConstraints(min_length=1, max_length=63)]
TimeZoneName = Annotated[str, StringConstraints(max_length=64), *_pattern(TIME_ZONE_PATTERN)]
Recipient = Annotated[
    str, StringConstraints(min_length=1, max_length=254), *_pattern(RECIPIENT_PATTERN)
]


class _SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=False,
    )


def _unique(values: list[str] | None, what: str) -> list[str] | None:
    # The CRD declares these lists `x-kubernetes-list-type: set`: the API server refuses
    # duplicates, so the REST API does too.
    if values is not None:
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise ValueError(f"{what} lists {value!r} more than once")
            seen.add(value)
    return values


def _event(info: ValidationInfo) -> TriggerEvent | None:
    event = info.data.get("event")
    return event if isinstance(event, TriggerEvent) else None


class Trigger(_SpecModel):
    """When the rule fires."""

    event: TriggerEvent
    fields: Annotated[list[FieldName], Field(max_length=16)] | None = Field(
        default=None, validate_default=True
    )
    before: Duration | None = Field(default=None, validate_default=True)
    repeat: Duration | None = Field(default=None, validate_default=True)
    schedule: (
        Annotated[str, StringConstraints(min_length=1, max_length=128), *_pattern(SCHEDULE_PATTERN)]
        | None
    ) = Field(default=None, validate_default=True)
    time_zone: TimeZoneName | None = Field(default=None, validate_default=True)

    # Field validators (not a model validator) so that a 422 names the offending field.
    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        event = _event(info)
        if value is not None and event is not None and event is not TriggerEvent.TASK_UPDATED:
            raise ValueError("fields is only allowed when event is TaskUpdated")
        return _unique(value, "fields")

    @field_validator("before")
    @classmethod
    def _before(cls, value: str | None, info: ValidationInfo) -> str | None:
        event = _event(info)
        if value is not None:
            if _ZERO_DURATION.fullmatch(value):
                raise ValueError("before must be longer than zero")
            if event is not None and event is not TriggerEvent.DEADLINE_APPROACHING:
                raise ValueError("before is only allowed when event is DeadlineApproaching")
        elif event is TriggerEvent.DEADLINE_APPROACHING:
            raise ValueError("before is required when event is DeadlineApproaching")
        return value

    @field_validator("repeat")
    @classmethod
    def _repeat(cls, value: str | None, info: ValidationInfo) -> str | None:
        event = _event(info)
        if value is not None:
            if _ZERO_DURATION.fullmatch(value):
                raise ValueError("repeat must be longer than zero")
            if event is not None and event is not TriggerEvent.TASK_OVERDUE:
                raise ValueError("repeat is only allowed when event is TaskOverdue")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None, info: ValidationInfo) -> str | None:
        event = _event(info)
        if value is not None and event is not None and event is not TriggerEvent.SCHEDULE:
            raise ValueError("schedule is only allowed when event is Schedule")
        if value is None and event is TriggerEvent.SCHEDULE:
            raise ValueError("schedule is required when event is Schedule")
        return value

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str | None, info: ValidationInfo) -> str | None:
        event = _event(info)
        if value is not None and event is not None and event is not TriggerEvent.SCHEDULE:
            raise ValueError("timeZone is only allowed when event is Schedule")
        return value


class Match(_SpecModel):
    """Which tasks the rule applies to; every criterion given must hold."""

    projects: Annotated[list[ProjectName], Field(max_length=32)] | None = None
    labels: Annotated[list[LabelName], Field(max_length=16)] | None = None
    priorities: Annotated[list[Priority], Field(max_length=4)] | None = None
    condition: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None

    @field_validator("projects", "labels", "priorities")
    @classmethod
    def _sets(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        _unique([str(v) for v in value] if value is not None else None, info.field_name or "")
        return value


class SecretRef(_SpecModel):
    """A key of a Secret in the rule's namespace."""

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=253), *_pattern(SECRET_NAME_PATTERN)
    ]
    key: Annotated[
        str, StringConstraints(min_length=1, max_length=253), *_pattern(SECRET_KEY_PATTERN)
    ]


class Notify(_SpecModel):
    """Send a notification by email or signed webhook."""

    channel: Channel
    to: Annotated[list[Recipient], Field(max_length=32)] | None = Field(
        default=None, validate_default=True
    )
    subject: Annotated[str, StringConstraints(max_length=512)] | None = None
    body: Annotated[str, StringConstraints(max_length=16384)] | None = None
    url: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        default=None, validate_default=True
    )
    secret_ref: SecretRef | None = Field(default=None, validate_default=True)

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        channel = info.data.get("channel")
        if channel is Channel.EMAIL and not value:
            raise ValueError("an email action requires at least one recipient in to")
        if channel is Channel.WEBHOOK and value is not None:
            raise ValueError("to is only allowed for email actions")
        return _unique(value, "to")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        channel = info.data.get("channel")
        if value is None:
            if channel is Channel.WEBHOOK:
                raise ValueError("a webhook action requires url")
            return value
        if channel is Channel.EMAIL:
            raise ValueError("url is only allowed for webhook actions")
        if not is_http_url(value):
            raise ValueError("url must be an absolute http:// or https:// URL")
        return value

    @field_validator("secret_ref")
    @classmethod
    def _secret_ref(cls, value: SecretRef | None, info: ValidationInfo) -> SecretRef | None:
        if value is not None and info.data.get("channel") is Channel.EMAIL:
            raise ValueError("secretRef is only allowed for webhook actions")
        return value


def is_http_url(value: str) -> bool:
    """The CRD's ``isURL(self) && scheme in [http, https] && hostname != ''``."""
    if any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(hostname)


class Action(_SpecModel):
    """One action; today the only kind is notify."""

    notify: Notify


class Throttle(_SpecModel):
    """Limits on how often the rule fires."""

    max_per_hour: Annotated[int, Field(ge=1, le=10000)] | None = None


class RuleSpec(_SpecModel):
    """``spec`` of an AutomationRule."""

    enabled: bool = True
    description: Annotated[str, StringConstraints(max_length=1024)] | None = None
    trigger: Trigger
    match: Match | None = None
    actions: Annotated[list[Action], Field(min_length=1, max_length=8)]
    throttle: Throttle | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The spec as it is written into the custom resource (camelCase, unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def from_manifest(cls, spec: Any) -> Self:
        """Parse ``spec`` as read from a custom resource or a request body."""
        return cls.model_validate(spec)


__all__ = [
    "Action",
    "Channel",
    "Match",
    "Notify",
    "Priority",
    "RuleSpec",
    "SecretRef",
    "Throttle",
    "Trigger",
    "TriggerEvent",
    "describe_error",
    "is_http_url",
]
