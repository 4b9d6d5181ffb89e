"""Which firings a task event or a due schedule entry produces, and their occurrence keys (pure).

Nothing here touches the database or the clock: callers pass `now` and the rules, so the
semantics can be tested exhaustively without I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from smarttasks.automation.engine.model import (
    OPEN_STATUSES,
    EngineRule,
    Firing,
    FiringKey,
    RuleSource,
)
from smarttasks.automation.rules.documents import TaskDocument, task_document
from smarttasks.automation.rules.matcher import MatchSubject
from smarttasks.automation.rules.model import TriggerEvent
from smarttasks.core.events import TaskEvent, TaskEventType, TaskSnapshot

RuleError = tuple[EngineRule, str]
"""A rule and what went wrong while evaluating it (reported in its status)."""


def activated_triggers(event: TaskEvent) -> tuple[TriggerEvent, ...]:
    """The event triggers one task event can activate.

    The tasks service emits exactly one event per change, of the most specific type, so
    `task.assigned` and `task.completed` are updates too; an assignee set in the same
    change as a completion (or at creation) still counts as an assignment.
    """
    kind = event.type
    if kind is TaskEventType.CREATED:
        if event.data.assignee_id is not None:
            return (TriggerEvent.TASK_CREATED, TriggerEvent.TASK_ASSIGNED)
        return (TriggerEvent.TASK_CREATED,)
    if kind is TaskEventType.DELETED:
        return (TriggerEvent.TASK_DELETED,)
    triggers = [TriggerEvent.TASK_UPDATED]
    if kind is TaskEventType.COMPLETED:
        triggers.append(TriggerEvent.TASK_COMPLETED)
    assignee = event.changes.get("assignee_id")
    assigned = kind is TaskEventType.ASSIGNED or (assignee is not None and len(assignee) == 2)
    # An unassignment is an update, not an assignment.
    if assigned and event.data.assignee_id is not None:
        triggers.append(TriggerEvent.TASK_ASSIGNED)
    return tuple(triggers)


def _fields_changed(rule: EngineRule, event: TaskEvent) -> bool:
    return not rule.fields or any(name in event.changes for name in rule.fields)


def event_firings(event: TaskEvent, rules: RuleSource) -> tuple[list[Firing], list[RuleError]]:
    """Firings for the rules one task event matches; the occurrence is the event id.

    Rules created after the event occurred do not fire for it (a replayed backlog must not
    reach rules that did not exist yet).
    """
    firings: list[Firing] = []
    errors: list[RuleError] = []
    doc = task_document(event.data)
    subject: MatchSubject | None = None  # made for the first candidate, shared by the others
    for trigger in activated_triggers(event):
        for rule in rules.candidates(trigger, doc):
            if rule.created_at > event.occurred_at:
                continue
            if trigger is TriggerEvent.TASK_UPDATED and not _fields_changed(rule, event):
                continue
            if subject is None:
                subject = MatchSubject(doc, event.changes)
            try:
                matched = rule.matches(subject)
            except Exception as exc:  # a CEL runtime error is the rule's problem, not ours
                errors.append((rule, f"condition failed: {exc}"))
                continue
            if matched:
                key = FiringKey(rule.uid, event.data.id, trigger, str(event.id))
                firings.append(
                    Firing(
                        key=key,
                        rule=rule,
                        task=event.data,
                        changes=event.changes,
                        event_id=event.id,
                        document=doc,
                    )
                )
    return firings, errors


@dataclass(frozen=True, slots=True, order=True)
class ScheduleKind:
    """A family of schedule entries: one per open task with a deadline, per kind.

    Rules sharing a trigger and offset share one entry per task, so the schedule grows with
    tasks x distinct offsets, not tasks x rules. `offset` is `before` for
    DeadlineApproaching and `repeat` (zero when unset) for TaskOverdue.
    """

    trigger: TriggerEvent
    offset_s: int

    @property
    def offset(self) -> timedelta:
        return timedelta(seconds=self.offset_s)

    def first_due(self, deadline: datetime) -> datetime:
        """When the entry for a task with this deadline first falls due."""
        if self.trigger is TriggerEvent.DEADLINE_APPROACHING:
            return deadline - self.offset
        return deadline

    def moment(self, deadline: datetime) -> datetime:
        """The moment a rule must have existed at to fire for this deadline."""
        return self.first_due(deadline)


def kind_of(rule: EngineRule) -> ScheduleKind | None:
    """The schedule kind a deadline rule belongs to; None for other triggers."""
    if rule.trigger is TriggerEvent.DEADLINE_APPROACHING and rule.before is not None:
        return ScheduleKind(rule.trigger, int(rule.before.total_seconds()))
    if rule.trigger is TriggerEvent.TASK_OVERDUE:
        repeat = int(rule.repeat.total_seconds()) if rule.repeat else 0
        return ScheduleKind(rule.trigger, repeat)
    return None


def kinds_in_use(rules: Iterable[EngineRule]) -> dict[ScheduleKind, datetime]:
    """Every kind the rules need, with the creation time of the oldest rule of that kind."""
    kinds: dict[ScheduleKind, datetime] = {}
    for rule in rules:
        kind = kind_of(rule)
        if kind is not None:
            since = kinds.get(kind)
            kinds[kind] = rule.created_at if since is None else min(since, rule.created_at)
    return kinds


def occurrence(deadline: datetime, slot: int = 0) -> str:
    """Occurrence key of a deadline trigger: the deadline, and the repeat slot after the first."""
    stamp = deadline.astimezone(UTC).isoformat()
    return stamp if slot == 0 else f"{stamp}#{slot}"


@dataclass(frozen=True, slots=True)
class DueEntry:
    """A claimed schedule entry: kind, task, the deadline it was armed for, the slot due."""

    task_id: uuid.UUID
    kind: ScheduleKind
    deadline: datetime
    slot: int
    next_at: datetime


@dataclass(frozen=True, slots=True)
class EntryOutcome:
    """What processing a due entry produced, and how the entry moves on."""

    firings: list[Firing]
    errors: list[RuleError]
    slot: int
    next_at: datetime | None
    """None: the entry is spent until the deadline moves or the task reopens."""


def task_is_open(task: TaskSnapshot) -> bool:
    return task.status in OPEN_STATUSES


def process_entry(
    entry: DueEntry,
    task: TaskSnapshot,
    rules: Sequence[EngineRule],
    now: datetime,
    *,
    document: TaskDocument | None = None,
) -> EntryOutcome:
    """Fire the rules of `entry.kind` for `task` at `now`.

    Late entries (the engine was down) fire once, for the latest slot that fell due, rather
    than once per missed slot. A DeadlineApproaching entry processed after the deadline has
    passed does not fire: the task is overdue by then, which is TaskOverdue's business.
    """
    kind = entry.kind
    deadline = entry.deadline
    slot = entry.slot
    next_at: datetime | None = None
    if kind.trigger is TriggerEvent.TASK_OVERDUE and kind.offset_s > 0:
        elapsed = now - deadline
        slot = max(slot, int(elapsed.total_seconds() // kind.offset_s))
        next_at = deadline + kind.offset * (slot + 1)
    if not task_is_open(task):
        return EntryOutcome([], [], slot, None)
    if kind.trigger is TriggerEvent.DEADLINE_APPROACHING and now >= deadline:
        return EntryOutcome([], [], slot, None)
    firings: list[Firing] = []
    errors: list[RuleError] = []
    doc = document if document is not None else task_document(task)
    subject: MatchSubject | None = None  # made for the first rule of the kind, then shared
    moment = kind.moment(deadline)
    due_at = kind.first_due(deadline)
    if kind.trigger is TriggerEvent.TASK_OVERDUE:
        due_at = deadline + kind.offset * slot
    for rule in rules:
        if kind_of(rule) != kind or rule.created_at > moment:
            continue
        if subject is None:
            subject = MatchSubject(doc)
        try:
            matched = rule.matches(subject)
        except Exception as exc:  # a CEL runtime error is the rule's problem, not ours
            errors.append((rule, f"condition failed: {exc}"))
            continue
        if matched:
            key = FiringKey(rule.uid, task.id, kind.trigger, occurrence(deadline, slot))
            firings.append(Firing(key=key, rule=rule, task=task, due_at=due_at, document=doc))
    return EntryOutcome(firings, errors, slot, next_at)


__all__ = [
    "DueEntry",
    "EntryOutcome",
    "RuleError",
    "ScheduleKind",
    "activated_triggers",
    "event_firings",
    "kind_of",
    "kinds_in_use",
    "occurrence",
    "process_entry",
    "task_is_open",
]
