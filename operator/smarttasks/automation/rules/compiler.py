"""Compile an AutomationRule once per generation into a :class:`CompiledRule`.

Compiling parses and checks everything the API server cannot: the CEL condition (syntax,
names, functions, and a trial evaluation on a representative task), the subject and body
templates (syntax and a trial rendering), durations, the cron schedule and its time
zone, and the owner label. A rule that does not compile raises :class:`RuleCompileError`
whose ``field`` names the spec field and whose message says why; nothing else is raised
for any input, so the operator cannot be crashed by a rule.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.rules.conditions import (
    Condition,
    ConditionCompileError,
    compile_condition,
)
from smarttasks.automation.rules.documents import (
    SAMPLE_CHANGES,
    SAMPLE_NOW,
    SAMPLE_TASK,
    TaskDocument,
    changes_document,
    task_document,
)
from smarttasks.automation.rules.matcher import MatchSubject, evaluate, subject_of
from smarttasks.automation.rules.model import Channel, RuleSpec, TriggerEvent, describe_error
from smarttasks.automation.rules.schedules import CronSchedule, compile_schedule, parse_duration
from smarttasks.automation.rules.templates import (
    MessageTemplate,
    TemplateCompileError,
    TemplateRenderError,
    compile_template,
)
from smarttasks.core.events import RuleRef

SUBJECT_LIMIT = 1_000
"""Longest rendered subject, in characters (RFC 5322 caps a header line at 998)."""
BODY_LIMIT = 256 * 1024
"""Longest rendered body, in characters."""

DEFAULT_SUBJECT = "[SmartTasks] {{ rule.name }}: {{ task.title }}"
DEFAULT_DIGEST_SUBJECT = (
    "[SmartTasks] {{ rule.name }}: "
    "{{ tasks | length }} task{{ '' if tasks | length == 1 else 's' }}"
)
DEFAULT_BODY = """\
{{ event }}: "{{ task.title }}" (rule {{ rule.name }})

Status:   {{ task.status }}
Priority: {{ task.priority }}
{% if task.project %}Project:  {{ task.project }}
{% endif %}{% if task.due_at %}Due:      {{ task.due_at }}
{% endif %}{% if changes %}Changed:  {{ changes | list | sort | join(", ") }}
{% endif %}"""
DEFAULT_DIGEST_BODY = """\
{{ tasks | length }} task{{ '' if tasks | length == 1 else 's' }} matching rule {{ rule.name }}:
{% for t in tasks %}
- {{ t.title }} ({{ t.status }}, {{ t.priority }}{% if t.due_at %}, due {{ t.due_at }}{% endif %})
{%- endfor %}
"""


class RuleCompileError(ValueError):
    """A rule does not compile: ``field`` is the spec path, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, eq=False, slots=True)
class RenderedAction:
    """One action of a firing, with its subject and body rendered for the task(s)."""

    index: int
    channel: Channel
    to: tuple[str, ...]
    url: str | None
    secret_ref: Mapping[str, str] | None
    subject: str
    body: str


@dataclass(frozen=True, eq=False, slots=True)
class CompiledAction:
    """A notify action with its templates compiled."""

    index: int
    channel: Channel
    to: tuple[str, ...]
    """Email recipients: roles (``assignee``, ``owner``) and addresses, as written."""
    url: str | None
    secret_ref: Mapping[str, str] | None
    """Webhook signing key: ``{"name": secret, "key": key}`` in the rule's namespace."""
    subject_template: MessageTemplate
    body_template: MessageTemplate

    def render(self, context: Mapping[str, Any]) -> tuple[str, str]:
        """Subject (one line) and body for ``context`` (see ``CompiledRule.template_context``).

        Raises ``TemplateRenderError`` whose message names the field, and nothing else.
        """
        where = f"spec.actions[{self.index}].notify"
        try:
            subject = " ".join(self.subject_template.render(context).split())
        except TemplateRenderError as exc:
            raise TemplateRenderError(f"{where}.subject: {exc}") from None
        try:
            body = self.body_template.render(context)
        except TemplateRenderError as exc:
            raise TemplateRenderError(f"{where}.body: {exc}") from None
        return subject, body


@dataclass(frozen=True, eq=False, slots=True)
class CompiledRule:
    """A rule of one generation, compiled: what the engine evaluates and fires.

    Immutable and compared by identity; a new generation is a new object. ``matches()``
    (in ``rules.matcher``) decides whether a task matches; ``RuleIndex`` finds the rules
    an event can match; ``render()`` produces the notifications of a firing.
    """

    namespace: str
    name: str
    uid: str
    generation: int
    created_at: datetime
    """When the resource was created; the rule never fires for moments before it."""
    owner: uuid.UUID | None
    """The user whose tasks the rule applies to (rules made through the REST API), or None."""
    spec: RuleSpec
    enabled: bool
    trigger: TriggerEvent
    fields: frozenset[str]
    """TaskUpdated: fire only if one of these changed; empty means any change."""
    before: timedelta | None
    """DeadlineApproaching: how long before the deadline to fire."""
    repeat: timedelta | None
    """TaskOverdue: fire again after each such interval while overdue; None means once."""
    schedule: str | None
    """Schedule: the cron expression, read in ``time_zone``."""
    time_zone: str
    """Schedule: the IANA zone of ``schedule`` (``UTC`` when unset)."""
    cron: CronSchedule | None
    """Schedule: the validated schedule (``cron.next_after(t)``)."""
    projects: frozenset[str]
    labels: frozenset[str]
    priorities: frozenset[str]
    condition: Condition | None
    actions: tuple[CompiledAction, ...]
    max_per_hour: int | None
    key: str = field(init=False, repr=False)
    """``namespace/name``: what identifies the rule across generations."""
    ref: RuleRef = field(init=False, repr=False)
    """The rule as named in ``notification.requested`` events (built once, never mutate it)."""

    def __post_init__(self) -> None:
        # Read for every candidate of every event and every firing: computed once here.
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")
        ref = RuleRef(
            namespace=self.namespace, name=self.name, uid=self.uid, generation=self.generation
        )
        object.__setattr__(self, "ref", ref)

    def matches(
        self,
        task: TaskDocument | BaseModel | Mapping[str, Any] | MatchSubject,
        changes: Mapping[str, Sequence[Any]] | None = None,
    ) -> bool:
        """Does the task pass ``match``? (``rules.matcher.evaluate``)

        Raises ``ConditionError`` when the condition cannot be evaluated for this task
        (the engine reports it as the rule's ``lastError``); ``rules.matcher.matches``
        counts that as not matching instead.
        """
        return evaluate(self, subject_of(task, changes))

    def template_context(
        self,
        *,
        task: TaskDocument | BaseModel | Mapping[str, Any] | None = None,
        tasks: Sequence[TaskDocument | BaseModel | Mapping[str, Any]] = (),
        changes: Mapping[str, Sequence[Any]] | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """What templates see: ``task``, ``tasks``, ``changes``, ``event``, ``rule``, ``now``.

        ``now`` is shown in the rule's time zone for Schedule rules, in UTC otherwise.
        ``task`` is absent for Schedule rules (they list ``tasks``); for the others
        ``tasks`` is ``[task]`` unless given.
        """
        zone = self.cron.time_zone if self.cron is not None else UTC
        context: dict[str, Any] = {
            "rule": {
                "namespace": self.namespace,
                "name": self.name,
                "description": self.spec.description or "",
            },
            "event": self.trigger.value,
            "changes": changes_document(changes),
            "now": (now or datetime.now(UTC)).astimezone(zone),
        }
        docs = [task_document(t) for t in tasks]
        if task is not None and self.trigger is not TriggerEvent.SCHEDULE:
            context["task"] = task_document(task)
            docs = docs or [context["task"]]
        context["tasks"] = docs
        return context

    def render(
        self,
        *,
        task: TaskDocument | BaseModel | Mapping[str, Any] | None = None,
        tasks: Sequence[TaskDocument | BaseModel | Mapping[str, Any]] = (),
        changes: Mapping[str, Sequence[Any]] | None = None,
        now: datetime | None = None,
    ) -> list[RenderedAction]:
        """Render every action for a firing; raises ``TemplateRenderError`` naming the action.

        A subject is one line: line breaks and runs of spaces become single spaces.
        """
        context = self.template_context(task=task, tasks=tasks, changes=changes, now=now)
        return [_render_action(action, context) for action in self.actions]


def _render_action(action: CompiledAction, context: Mapping[str, Any]) -> RenderedAction:
    subject, body = action.render(context)
    return RenderedAction(
        index=action.index,
        channel=action.channel,
        to=action.to,
        url=action.url,
        secret_ref=action.secret_ref,
        subject=subject,
        body=body,
    )


def compile_rule(
    spec: RuleSpec | Mapping[str, Any],
    *,
    namespace: str,
    name: str,
    uid: str = "",
    generation: int = 0,
    labels: Mapping[str, str] | None = None,
    created_at: datetime | None = None,
) -> CompiledRule:
    """Compile a rule's spec (a model, or the ``spec`` mapping of a resource).

    ``labels`` are the resource's labels; ``smarttasks.io/owner`` scopes the rule to one
    user's tasks. ``created_at`` is the resource's creation time (default: now).
    Raises :class:`RuleCompileError`, and nothing else, for any input.
    """
    try:
        return _compile(
            spec,
            namespace=namespace,
            name=name,
            uid=uid,
            generation=generation,
            labels=labels or {},
            created_at=created_at or datetime.now(UTC),
        )
    except RuleCompileError:
        raise
    except RecursionError:
        raise RuleCompileError("spec", "the rule is nested too deeply to compile") from None
    except Exception as exc:  # a bug must not take the operator down with it
        raise RuleCompileError("spec", f"the rule could not be compiled: {exc!r}") from None


def compile_resource(body: Mapping[str, Any]) -> CompiledRule:
    """Compile an AutomationRule resource as read from the API server (or the rule store)."""
    meta = body.get("metadata") or {}
    return compile_rule(
        body.get("spec") or {},
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        labels=meta.get("labels") or {},
        created_at=_timestamp(meta.get("creationTimestamp")),
    )


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def validation_error(exc: ValidationError) -> RuleCompileError:
    """The first problem of a spec's ValidationError, as a RuleCompileError naming the field."""
    err = exc.errors()[0]
    path = "spec"
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    message = describe_error(err)
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return RuleCompileError(path, message)


def _owner(labels: Mapping[str, str]) -> uuid.UUID | None:
    value = labels.get(OWNER_LABEL)
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise RuleCompileError(
            f"metadata.labels[{OWNER_LABEL}]", f"{value!r} is not a user id"
        ) from None


def _compile(
    spec: RuleSpec | Mapping[str, Any],
    *,
    namespace: str,
    name: str,
    uid: str,
    generation: int,
    labels: Mapping[str, str],
    created_at: datetime,
) -> CompiledRule:
    if not isinstance(spec, RuleSpec):
        try:
            spec = RuleSpec.model_validate(spec)
        except ValidationError as exc:
            raise validation_error(exc) from None
    owner = _owner(labels)
    trigger = spec.trigger
    before = _duration(trigger.before, "spec.trigger.before")
    repeat = _duration(trigger.repeat, "spec.trigger.repeat")
    cron: CronSchedule | None = None
    if trigger.event is TriggerEvent.SCHEDULE:
        try:
            cron = compile_schedule(trigger.schedule or "", trigger.time_zone)
        except ValueError as exc:
            field = "timeZone" if "time zone" in str(exc) else "schedule"
            raise RuleCompileError(f"spec.trigger.{field}", str(exc)) from None
    match = spec.match
    condition: Condition | None = None
    if match is not None and match.condition is not None:
        try:
            condition = compile_condition(match.condition)
        except ConditionCompileError as exc:
            raise RuleCompileError("spec.match.condition", str(exc)) from None
    compiled = CompiledRule(
        namespace=namespace,
        name=name,
        uid=uid,
        generation=generation,
        created_at=created_at,
        owner=owner,
        spec=spec,
        enabled=spec.enabled,
        trigger=trigger.event,
        fields=frozenset(trigger.fields or ()),
        before=before,
        repeat=repeat,
        schedule=trigger.schedule,
        time_zone=trigger.time_zone or "UTC",
        cron=cron,
        projects=frozenset(match.projects or ()) if match else frozenset(),
        labels=frozenset(match.labels or ()) if match else frozenset(),
        priorities=frozenset(p.value for p in match.priorities or ()) if match else frozenset(),
        condition=condition,
        actions=tuple(
            _compile_action(i, action.notify, trigger.event)
            for i, action in enumerate(spec.actions)
        ),
        max_per_hour=spec.throttle.max_per_hour if spec.throttle else None,
    )
    _try_templates(compiled)
    return compiled


def _duration(text: str | None, field: str) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise RuleCompileError(field, str(exc)) from None


def _compile_action(index: int, notify: Any, event: TriggerEvent) -> CompiledAction:
    digest = event is TriggerEvent.SCHEDULE
    where = f"spec.actions[{index}].notify"
    subject_src = (
        notify.subject
        if notify.subject is not None
        else (DEFAULT_DIGEST_SUBJECT if digest else DEFAULT_SUBJECT)
    )
    body_src = (
        notify.body
        if notify.body is not None
        else (DEFAULT_DIGEST_BODY if digest else DEFAULT_BODY)
    )
    try:
        subject = compile_template(subject_src, limit=SUBJECT_LIMIT)
    except TemplateCompileError as exc:
        raise RuleCompileError(f"{where}.subject", str(exc)) from None
    try:
        body = compile_template(body_src, limit=BODY_LIMIT)
    except TemplateCompileError as exc:
        raise RuleCompileError(f"{where}.body", str(exc)) from None
    return CompiledAction(
        index=index,
        channel=notify.channel,
        to=tuple(notify.to or ()),
        url=notify.url,
        secret_ref=notify.secret_ref.model_dump() if notify.secret_ref else None,
        subject_template=subject,
        body_template=body,
    )


def _try_templates(rule: CompiledRule) -> None:
    """Render every template once for a representative task, so typos fail now, not later."""
    digest = rule.trigger is TriggerEvent.SCHEDULE
    context = rule.template_context(
        task=None if digest else SAMPLE_TASK,
        tasks=[SAMPLE_TASK, SAMPLE_TASK] if digest else (),
        changes=SAMPLE_CHANGES if rule.trigger.is_task_event else None,
        now=SAMPLE_NOW,
    )
    for action in rule.actions:
        try:
            _render_action(action, context)
        except TemplateRenderError as exc:
            field, _, reason = str(exc).partition(": ")
            hint = (
                " (Schedule rules list the tasks in tasks, there is no task)"
                if (digest and "'task' is undefined" in reason)
                else ""
            )
            raise RuleCompileError(
                field, f"does not render for a typical task: {reason}{hint}"
            ) from None


__all__ = [
    "BODY_LIMIT",
    "SUBJECT_LIMIT",
    "CompiledAction",
    "CompiledRule",
    "RenderedAction",
    "RuleCompileError",
    "compile_resource",
    "compile_rule",
    "validation_error",
]
