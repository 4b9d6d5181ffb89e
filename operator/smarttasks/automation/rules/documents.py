"""Tasks and changes as rule conditions and templates see them: plain values, aware datetimes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

TASK_FIELDS: tuple[str, ...] = (
    "id",
    "title",
    "description",
    "status",
    "priority",
    "labels",
    "project",
    "owner_id",
    "assignee_id",
    "due_at",
    "completed_at",
    "created_at",
    "updated_at",
    "version",
)
"""The fields of ``task`` in conditions and templates, as in the task event's snapshot."""

ALIASES: Mapping[str, str] = {"assignee": "assignee_id", "owner": "owner_id"}
"""Short names: ``task.assignee`` is ``task.assignee_id`` (a user id, or null when unassigned)."""

_DATETIME_FIELDS = frozenset({"due_at", "completed_at", "created_at", "updated_at"})
_ID_FIELDS = frozenset({"id", "owner_id", "assignee_id"})


class TaskDocument(dict[str, Any]):
    """A task as a rule sees it; build it once per event with :func:`task_document`."""


def _datetime(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value  # left as it is: a condition comparing it fails, and does not match
    if isinstance(value, datetime) and value.tzinfo is None:
        # CEL timestamps and comparisons with `now` need an offset; events always carry one.
        return value.replace(tzinfo=UTC)
    return value


def _value(name: str, value: Any) -> Any:
    if name in _DATETIME_FIELDS:
        return _datetime(value)
    if name in _ID_FIELDS:
        return None if value is None else str(value)
    if name == "labels":
        return [str(label) for label in value or ()]
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def task_document(task: TaskDocument | BaseModel | Mapping[str, Any]) -> TaskDocument:
    """The task (an event's snapshot, a model or a JSON mapping) as conditions and templates see it.

    Ids become strings, datetimes become timezone-aware (ISO strings are parsed, naive
    values are taken as UTC), absent optional fields become ``None`` and ``labels`` a
    list. Never raises: a value that cannot be normalised is kept as it is. ``assignee``
    and ``owner`` are aliases of ``assignee_id`` and ``owner_id``. A :class:`TaskDocument`
    is returned as it is, so callers may prepare it once.
    """
    if isinstance(task, TaskDocument):
        return task
    raw: Mapping[str, Any] = task.model_dump() if isinstance(task, BaseModel) else task
    doc = TaskDocument({name: _value(name, raw.get(name)) for name in TASK_FIELDS})
    for alias, field in ALIASES.items():
        doc[alias] = doc[field]
    return doc


def changes_document(changes: Mapping[str, Sequence[Any]] | None) -> dict[str, list[Any]]:
    """An event's ``changes`` (``{field: [old, new]}``), values normalised like the task's."""
    if not changes:
        return {}
    out: dict[str, list[Any]] = {}
    for name, pair in changes.items():
        values = [_value(name, v) for v in pair]
        out[str(name)] = values
        if name in ALIASES.values():
            alias = next(a for a, f in ALIASES.items() if f == name)
            out.setdefault(alias, values)
    return out


# Every field set (none null), so that trying a condition or template on it reaches every
# branch that depends on a field being present.
SAMPLE_TASK = task_document(
    {
        "id": "6f1c2a8e-4b0d-4c53-9a51-1f5d2b7e9c01",
        "title": "Renew the TLS certificate",
        "description": "The wildcard certificate expires on Friday.",
        "status": "in_progress",
        "priority": "high",
        "labels": ["ops", "customer"],
        "project": "apollo",
        "owner_id": "0b7e5f3a-2c1d-4e8f-9a6b-3c2d1e0f9a8b",
        "assignee_id": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a",
        "due_at": "2026-12-04T17:00:00+01:00",
        "completed_at": "2026-12-04T16:30:00+01:00",
        "created_at": "2026-11-30T09:00:00+01:00",
        "updated_at": "2026-12-01T10:15:00+01:00",
        "version": 3,
    }
)
"""A representative task, used to try conditions and templates when a rule is compiled."""

SAMPLE_CHANGES = changes_document(
    {
        name: [SAMPLE_TASK[name], SAMPLE_TASK[name]]
        for name in TASK_FIELDS
        if name not in ("id", "created_at")
    }
)
"""Changes naming every changeable field, so ``changes.status[1]`` can be tried."""

SAMPLE_NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)

__all__ = [
    "ALIASES",
    "SAMPLE_CHANGES",
    "SAMPLE_NOW",
    "SAMPLE_TASK",
    "TASK_FIELDS",
    "TaskDocument",
    "changes_document",
    "task_document",
]
