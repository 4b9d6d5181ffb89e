"""Does a task (and the change that happened to it) match a compiled rule?"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from smarttasks.automation.rules.conditions import Activation, ConditionError
from smarttasks.automation.rules.documents import TaskDocument, changes_document, task_document
from smarttasks.automation.rules.model import TriggerEvent

if TYPE_CHECKING:
    from smarttasks.automation.rules.compiler import CompiledRule

TaskLike = TaskDocument | BaseModel | Mapping[str, Any]
"""A task: a prepared :class:`TaskDocument`, an event's ``TaskSnapshot`` or its JSON mapping."""


@dataclass(frozen=True, slots=True)
class Check:
    """One criterion of a rule and whether the task met it, for explaining a match."""

    name: str
    passed: bool
    detail: str


class MatchSubject:
    """A task and the change that happened to it, prepared once to be matched by many rules.

    Holds the task document, the normalised ``changes`` and ``now``, and converts them for
    CEL at most once (the first condition to need them), however many rules look.
    """

    __slots__ = ("_activation", "changes", "now", "task")

    def __init__(
        self,
        task: TaskLike,
        changes: Mapping[str, Sequence[Any]] | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        self.task: TaskDocument = task_document(task)
        self.changes: dict[str, list[Any]] = changes_document(changes)
        self.now: datetime = now or datetime.now(UTC)
        self._activation: Activation | None = None

    @property
    def activation(self) -> Activation:
        if self._activation is None:
            self._activation = Activation(self.task, self.changes, self.now)
        return self._activation


def matches(
    rule: CompiledRule,
    task: TaskLike | MatchSubject,
    changes: Mapping[str, Sequence[Any]] | None = None,
    *,
    now: datetime | None = None,
) -> bool:
    """True if ``task`` passes every criterion of ``rule``; never raises.

    Checks, in order, stopping at the first that fails: the rule is enabled; an owned
    rule (``smarttasks.io/owner``) only matches its owner's tasks; a TaskUpdated rule
    with ``fields`` only matches when one of them is in ``changes``; ``projects``,
    ``labels`` (any one of them) and ``priorities``; the CEL condition, evaluated with
    ``task``, ``changes`` (``{field: [old, new]}``, empty when not given) and ``now``
    (default: the current time). A condition that fails to evaluate for this task (say,
    a comparison with a null deadline) counts as not matching; :func:`explain` says why,
    and :func:`evaluate` raises instead.

    It does not look at the trigger: which rules an event concerns is the job of
    ``RuleIndex``. Pass a :class:`MatchSubject` (or at least a :class:`TaskDocument`,
    ``task_document(snapshot)``) when matching one task against many rules, to convert
    it only once.
    """
    try:
        return evaluate(rule, subject_of(task, changes, now))
    except ConditionError:
        return False


def evaluate(rule: CompiledRule, subject: MatchSubject) -> bool:
    """Like :func:`matches`, but a condition that cannot be evaluated raises ``ConditionError``.

    The engine uses this: such a failure is the rule's to report (its ``lastError``).
    """
    if not rule.enabled:
        return False
    task = subject.task
    if rule.owner is not None and task.get("owner_id") != str(rule.owner):
        return False
    if (
        rule.fields
        and rule.trigger is TriggerEvent.TASK_UPDATED
        and rule.fields.isdisjoint(subject.changes)
    ):
        return False
    if rule.projects and task.get("project") not in rule.projects:
        return False
    if rule.labels and rule.labels.isdisjoint(task.get("labels") or ()):
        return False
    if rule.priorities and task.get("priority") not in rule.priorities:
        return False
    if rule.condition is None:
        return True
    return rule.condition.evaluate_in(subject.activation)


def subject_of(
    task: TaskLike | MatchSubject,
    changes: Mapping[str, Sequence[Any]] | None = None,
    now: datetime | None = None,
) -> MatchSubject:
    """``task`` as matching sees it (itself when it already is a ``MatchSubject``)."""
    if isinstance(task, MatchSubject):
        return task
    return MatchSubject(task, changes, now=now)


def explain(
    rule: CompiledRule,
    task: TaskLike | MatchSubject,
    changes: Mapping[str, Sequence[Any]] | None = None,
    *,
    now: datetime | None = None,
) -> list[Check]:
    """Every criterion of ``rule`` with its outcome for ``task`` (no short-circuit)."""
    return list(_checks(rule, task, changes, now))


def _checks(
    rule: CompiledRule,
    task: TaskLike | MatchSubject,
    changes: Mapping[str, Sequence[Any]] | None,
    now: datetime | None,
) -> Iterator[Check]:
    subject = subject_of(task, changes, now)
    doc = subject.task
    changed = subject.changes
    checks = (
        _enabled,
        _owner,
        _fields,
        _projects,
        _labels,
        _priorities,
    )
    for check in checks:
        result = check(rule, doc, changed)
        if result is None:
            continue
        yield result
    if rule.condition is not None:
        try:
            passed = rule.condition.evaluate_in(subject.activation)
        except ConditionError as exc:
            yield Check("condition", False, f"could not be evaluated: {exc}")
        else:
            yield Check("condition", passed, rule.condition.source)


def _enabled(rule: CompiledRule, _doc: TaskDocument, _changes: object) -> Check | None:
    if rule.enabled:
        return None
    return Check("enabled", False, "the rule is disabled")


def _owner(rule: CompiledRule, doc: TaskDocument, _changes: object) -> Check | None:
    if rule.owner is None:
        return None
    passed = doc.get("owner_id") == str(rule.owner)
    return Check("owner", passed, f"only tasks owned by {rule.owner}")


def _fields(
    rule: CompiledRule, _doc: TaskDocument, changes: Mapping[str, Any] | None
) -> Check | None:
    if rule.trigger is not TriggerEvent.TASK_UPDATED or not rule.fields:
        return None
    changed = rule.fields.intersection(changes or {})
    wanted = ", ".join(sorted(rule.fields))
    return Check("fields", bool(changed), f"one of {wanted} changed")


def _projects(rule: CompiledRule, doc: TaskDocument, _changes: object) -> Check | None:
    if not rule.projects:
        return None
    return Check(
        "projects", doc.get("project") in rule.projects, f"project in {sorted(rule.projects)}"
    )


def _labels(rule: CompiledRule, doc: TaskDocument, _changes: object) -> Check | None:
    if not rule.labels:
        return None
    passed = not rule.labels.isdisjoint(doc.get("labels") or ())
    return Check("labels", passed, f"a label in {sorted(rule.labels)}")


def _priorities(rule: CompiledRule, doc: TaskDocument, _changes: object) -> Check | None:
    if not rule.priorities:
        return None
    return Check(
        "priorities",
        doc.get("priority") in rule.priorities,
        f"priority in {sorted(rule.priorities)}",
    )


__all__ = ["Check", "MatchSubject", "TaskLike", "evaluate", "explain", "matches", "subject_of"]
