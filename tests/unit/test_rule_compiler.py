"""Compiling rules: what compiles, what does not and the message a person reads, rendering."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.rules import (
    RuleCompileError,
    TemplateRenderError,
    TriggerEvent,
    compile_resource,
    compile_rule,
)
from smarttasks.automation.rules.conditions import SUPPORTED_FUNCTIONS, compile_condition

REPO = Path(__file__).resolve().parents[2]
SAMPLES = {
    p.stem: yaml.safe_load(p.read_text())
    for p in sorted((REPO / "manifests" / "samples").glob("*.yaml"))
}
RULES = {name: doc for name, doc in SAMPLES.items() if doc["kind"] == "AutomationRule"}

TASK: dict[str, Any] = {
    "id": "11111111-1111-4111-8111-111111111111",
    "title": "Ship the release",
    "description": "",
    "status": "todo",
    "priority": "high",
    "labels": ["customer"],
    "project": "apollo",
    "owner_id": "22222222-2222-4222-8222-222222222222",
    "assignee_id": "33333333-3333-4333-8333-333333333333",
    "due_at": "2026-12-04T17:00:00+01:00",
    "created_at": "2026-11-30T09:00:00Z",
    "updated_at": "2026-11-30T09:00:00Z",
    "version": 1,
}


def _email(**notify: Any) -> dict[str, Any]:
    return {"notify": {"channel": "email", "to": ["owner"], **notify}}


def _spec(
    event: str = "TaskCreated", *, actions: list[dict[str, Any]] | None = None, **more: Any
) -> dict[str, Any]:
    trigger = {"event": event, **more.pop("trigger", {})}
    return {"trigger": trigger, "actions": actions or [_email()], **more}


def _compile(spec: dict[str, Any], **kwargs: Any) -> Any:
    return compile_rule(spec, namespace="team-a", name="r", uid="u-1", generation=1, **kwargs)


def _error(spec: dict[str, Any], **kwargs: Any) -> RuleCompileError:
    with pytest.raises(RuleCompileError) as caught:
        _compile(spec, **kwargs)
    return caught.value


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_sample_compiles(name: str) -> None:
    body = {**RULES[name], "metadata": {**RULES[name]["metadata"], "namespace": "team-a"}}

    rule = compile_resource(body)

    assert rule.key == f"team-a/{name}"
    assert rule.trigger is TriggerEvent(RULES[name]["spec"]["trigger"]["event"])
    assert rule.enabled


def test_compiled_fields_are_parsed() -> None:
    deadline = compile_resource({**RULES["deadline-approaching"], "metadata": {"name": "d"}})
    overdue = compile_resource({**RULES["overdue-high-priority"], "metadata": {"name": "o"}})
    digest = compile_resource({**RULES["weekday-digest"], "metadata": {"name": "w"}})

    assert deadline.before == timedelta(days=1)
    assert deadline.projects == frozenset({"apollo"})
    assert overdue.repeat == timedelta(hours=24)
    assert overdue.priorities == frozenset({"high", "urgent"})
    assert overdue.max_per_hour == 200
    assert digest.schedule == "0 9 * * 1-5" and digest.time_zone == "Europe/Berlin"
    assert digest.cron is not None
    # Friday 2026-12-04 10:00 Berlin -> next weekday 09:00 Berlin is Monday 08:00 UTC.
    friday = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    assert digest.cron.next_after(friday) == datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def test_resource_metadata_is_carried() -> None:
    owner = uuid.uuid4()
    rule = compile_resource(
        {
            "metadata": {
                "namespace": "ns",
                "name": "n",
                "uid": "abc",
                "generation": 4,
                "creationTimestamp": "2026-11-30T09:00:00Z",
                "labels": {OWNER_LABEL: str(owner)},
            },
            "spec": _spec(),
        }
    )

    assert (rule.ref.namespace, rule.ref.name, rule.ref.uid, rule.ref.generation) == (
        "ns",
        "n",
        "abc",
        4,
    )
    assert rule.created_at == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert rule.owner == owner


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("task.assignee != nul", "unknown name 'nul'"),
        ("task.priorty == 'high'", "a task has no field 'priorty'"),
        ("task.title.(", "Syntax error"),
        ("task.priority", "must be true or false, but it gave a string"),
        ("task.version + 'x' == 1", "fails for a typical task"),
        ("task.title.lowerAscii() == 'x'", "unknown function 'lowerAscii'"),
        ("(((1)", "Syntax error"),
    ],
)
def test_a_condition_that_does_not_compile_says_why(condition: str, message: str) -> None:
    error = _error(_spec(match={"condition": condition}))

    assert error.field == "spec.match.condition"
    assert message in error.reason
    assert str(error).startswith("spec.match.condition: ")


@pytest.mark.parametrize(
    "condition",
    [
        'task.assignee != null && !("muted" in task.labels)',
        "task.labels.exists(l, l.startsWith('cust'))",
        "task.due_at < now && task.status != 'done'",
        "'status' in changes && changes.status[1] == 'in_progress'",
        "type(task.version) == int && size(task.title) > 0",
        "task.due_at - now < duration('48h')",
        "task.title.matches('^Renew') || task.priority in ['high', 'urgent']",
    ],
)
def test_realistic_conditions_compile(condition: str) -> None:
    assert _compile(_spec(match={"condition": condition})).condition is not None


@pytest.mark.parametrize("function", sorted(SUPPORTED_FUNCTIONS))
def test_every_function_allowed_is_implemented(function: str) -> None:
    uses = {
        "size": "size(task.labels) >= 0",
        "contains": "task.title.contains('a') || true",
        "startsWith": "task.title.startsWith('a') || true",
        "endsWith": "task.title.endsWith('a') || true",
        "matches": "task.title.matches('a') || true",
        "int": "int('1') == 1",
        "uint": "uint(1) == 1u",
        "double": "double(1) == 1.0",
        "string": "string(1) == '1'",
        "bytes": "bytes('a') == b'a'",
        "timestamp": "timestamp('2026-01-01T00:00:00Z') < now",
        "duration": "duration('1h') > duration('1m')",
        "type": "type(1) == int",
        "dyn": "dyn(1) == 1",
        "of": "optional.of(1).hasValue()",
        "none": "!optional.none().hasValue()",
        "ofNonZeroValue": "!optional.ofNonZeroValue(0).hasValue()",
        "hasValue": "optional.of(1).hasValue()",
        "value": "optional.of(1).value() == 1",
        "orValue": "optional.none().orValue(1) == 1",
        "or": "optional.none().or(optional.of(1)).value() == 1",
    }
    source = uses.get(function, f"now.{function}() >= 0")

    condition = compile_condition(source)

    assert function in condition.program.functions()


@pytest.mark.parametrize(
    ("notify", "field", "message"),
    [
        ({"subject": "{{ task.titel }}"}, "subject", "the task has no field 'titel'"),
        ({"subject": "{% if %}"}, "subject", "line 1: Expected an expression"),
        ({"body": "a\n{{ task.title }\n"}, "body", "line 2"),
        ({"body": "{{ nope }}"}, "body", "'nope' is undefined"),
        ({"body": "{{ task.__class__ }}"}, "body", "unsafe"),
        ({"body": "{{ task.labels.append('x') }}"}, "body", "unsafe"),
        ({"body": "{{ 'x' * 1000000000 }}"}, "body", "longer than 100000"),
        ({"body": "{{ 'x'.center(1000000000) }}"}, "body", "larger than 1000"),
        ({"body": "{{ 'x' | center(1000000000) }}"}, "body", "larger than 1000"),
        ({"body": "{{ '%99999s' % 'x' }}"}, "body", "format widths"),
        ({"body": "{{ '{:>99999}'.format('x') }}"}, "body", "format widths"),
        ({"body": "{{ 10 ** 100000 }}"}, "body", "exponents"),
        (
            {
                "body": "{% for i in range(9000) %}{% for j in range(9000) %}"
                "{% endfor %}{% endfor %}"
            },
            "body",
            "range() produced more than 10000",
        ),
        ({"body": "{% for i in range(5000) %}{{ 'x' * 99 }}{% endfor %}"}, "body", "longer than"),
        ({"body": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"}, "body", "recurses"),
    ],
)
def test_a_template_that_does_not_compile_or_render_says_why(
    notify: dict[str, Any], field: str, message: str
) -> None:
    error = _error(_spec(actions=[_email(), _email(**notify)]))

    assert error.field == f"spec.actions[1].notify.{field}"
    assert message in error.reason


def test_a_digest_template_cannot_use_task() -> None:
    error = _error(
        _spec("Schedule", trigger={"schedule": "@daily"}, actions=[_email(body="{{ task.title }}")])
    )

    assert error.field == "spec.actions[0].notify.body"
    assert "there is no task" in error.reason


@pytest.mark.parametrize(
    ("trigger", "field", "message"),
    [
        ({"event": "Schedule", "schedule": "0 0 30 2 *"}, "schedule", "never fires"),
        ({"event": "Schedule", "schedule": "61 * * * *"}, "schedule", "not a valid cron"),
        ({"event": "Schedule", "schedule": "@fortnightly"}, "schedule", "five-field cron"),
        (
            {"event": "Schedule", "schedule": "@daily", "timeZone": "Mars/Olympus_Mons"},
            "timeZone",
            "unknown time zone 'Mars/Olympus_Mons'",
        ),
        (
            {"event": "DeadlineApproaching", "before": "99999999999999999d"},
            "before",
            "longer than 3650 days",
        ),
        ({"event": "TaskOverdue", "repeat": "3651d"}, "repeat", "longer than 3650 days"),
    ],
)
def test_a_trigger_that_does_not_compile_says_why(
    trigger: dict[str, Any], field: str, message: str
) -> None:
    error = _error({"trigger": trigger, "actions": [_email()]})

    assert error.field == f"spec.trigger.{field}"
    assert message in error.reason


def test_an_invalid_owner_label_does_not_compile() -> None:
    error = _error(_spec(), labels={OWNER_LABEL: "bob"})

    assert error.field == f"metadata.labels[{OWNER_LABEL}]"


def test_an_invalid_spec_names_the_first_field() -> None:
    error = _error(
        {"trigger": {"event": "TaskCreated"}, "actions": [{"notify": {"channel": "sms"}}]}
    )

    assert error.field == "spec.actions[0].notify.channel"


@pytest.mark.parametrize("spec", [None, [], "x", {"trigger": 1}, {"actions": [{}] * 50}])
def test_garbage_raises_only_rule_compile_error(spec: Any) -> None:
    with pytest.raises(RuleCompileError):
        compile_rule(spec, namespace="n", name="x")


def test_render_with_default_templates() -> None:
    rule = _compile(_spec("TaskUpdated", actions=[_email()]))

    (action,) = rule.render(task=TASK, changes={"status": ["todo", "in_progress"]})

    assert action.subject == "[SmartTasks] r: Ship the release"
    assert 'TaskUpdated: "Ship the release"' in action.body
    assert "Changed:  status" in action.body
    assert action.to == ("owner",)


def test_render_subject_is_one_line_and_body_keeps_lines() -> None:
    rule = _compile(_spec(actions=[_email(subject="A\n\n{{ task.title }}\r\nB", body="x\ny")]))

    (action,) = rule.render(task=TASK)

    assert action.subject == "A Ship the release B"
    assert action.body == "x\ny"


def test_digest_shows_now_in_the_rules_time_zone_and_lists_tasks() -> None:
    rule = compile_resource({**RULES["weekday-digest"], "metadata": {"name": "w"}})
    monday_8_utc = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)

    (action,) = rule.render(tasks=[TASK, {**TASK, "title": "Second"}], now=monday_8_utc)

    assert action.subject == "Urgent tasks, Monday 07 December"
    assert "2 tasks matching rule w" in action.body
    assert "- Second (todo, high" in action.body


def test_webhook_action_carries_url_and_secret_ref() -> None:
    rule = compile_resource({**RULES["task-completed-webhook"], "metadata": {"name": "t"}})

    (action,) = rule.render(task=TASK)

    assert action.url == "https://hooks.example.com/smarttasks"
    assert action.secret_ref == {"name": "hook-secret", "key": "signing-key"}


def test_render_at_runtime_raises_template_render_error_naming_the_action() -> None:
    rule = _compile(_spec(actions=[_email(body="{{ task.due_at.strftime('%d') }}")]))

    with pytest.raises(TemplateRenderError, match=r"spec\.actions\[0\]\.notify\.body"):
        rule.render(task={**TASK, "due_at": None})


def test_compiling_is_deterministic_and_does_not_share_state() -> None:
    first = _compile(_spec(match={"condition": "task.priority == 'high'"}))
    second = _compile(_spec(match={"condition": "task.priority == 'low'"}))

    assert first.matches(TASK) is True
    assert second.matches(TASK) is False
