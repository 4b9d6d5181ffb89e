"""No valid rule can crash the compiler: it compiles, or it raises RuleCompileError.

Specs are generated to be valid per the CRD (the API server would accept them), with
free text and CEL-/Jinja-shaped fragments in the places only the operator checks. A rule
that compiles is then rendered and matched against arbitrary tasks, which may only ever
raise TemplateRenderError (rendering) and never raise at all (matching).
"""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from smarttasks.automation.rules import (
    RuleCompileError,
    RuleSpec,
    TemplateRenderError,
    TriggerEvent,
    compile_rule,
    explain,
    matches,
)

_FIELDS = ["title", "status", "priority", "labels", "project", "assignee", "due_at", "version"]
_CEL_TOKENS = [
    *(f"task.{f}" for f in _FIELDS),
    "task.nope",
    "changes",
    "changes.status",
    "now",
    "null",
    "true",
    "1",
    "1u",
    "2.5",
    "'high'",
    '"x"',
    "[]",
    "{}",
    "==",
    "!=",
    "<",
    "&&",
    "||",
    "!",
    "+",
    "in",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".size()",
    ".exists(l, l == 'a')",
    ".startsWith('a')",
    "size(",
    "timestamp(",
    "duration('1h')",
    "?",
    ":",
    "9223372036854775807",
    "matches(",
    "'\\\\'",
]
_JINJA_TOKENS = [
    "{{ task.title }}",
    "{{ task.nope }}",
    "{{ tasks | length }}",
    "{% for t in tasks %}{{ t.title }}{% endfor %}",
    "{% if task.assignee %}a{% else %}b{% endif %}",
    "{{ now.strftime('%A') }}",
    "{{ rule.name }}",
    "{{ changes }}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{{ 'x' * 99 }}",
    "{{ range(50) | list }}",
    "{{ task.__class__ }}",
    "{{ ''.join(['a']) }}",
    "{{ lipsum() }}",
    "{{ cycler('a') }}",
    "{% raw %}",
    "{% endraw %}",
    "{{ task.due_at.year }}",
    "\n",
]


def _fragments(tokens: list[str], max_size: int) -> st.SearchStrategy[str]:
    token_text = st.lists(st.sampled_from(tokens), min_size=1, max_size=12).map(" ".join)
    free_text = st.text(min_size=1, max_size=max_size)
    return st.one_of(token_text, free_text).filter(lambda s: len(s) <= max_size)


conditions = _fragments(_CEL_TOKENS, 4096)
templates = _fragments(_JINJA_TOKENS, 512)
durations = st.from_regex(r"([0-9]{1,12}[smhd]){1,3}", fullmatch=True).filter(
    lambda s: s.strip("0smhd") != "" and len(s) <= 32
)
cron_field = st.sampled_from(["*", "0", "9", "1-5", "*/15", "L", "5#3", "MON", "31", "x", "?"])
schedules = st.one_of(
    st.sampled_from(["@daily", "@hourly", "@weekly", "@monthly", "@yearly", "@midnight"]),
    st.lists(cron_field, min_size=5, max_size=5).map(" ".join),
    st.lists(st.text(string.printable.strip(), min_size=1, max_size=4), min_size=5, max_size=5).map(
        " ".join
    ),
)
time_zones = st.one_of(
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Etc/GMT+5"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_+-]{0,10}(/[A-Za-z0-9_+-]{1,10}){0,2}", fullmatch=True),
)
names = st.text(min_size=1, max_size=63)
recipients = st.one_of(
    st.sampled_from(["assignee", "owner", "a@example.com"]),
    st.from_regex(r"[a-z0-9.+]{1,10}@[a-z0-9]{1,10}\.[a-z]{2,5}", fullmatch=True),
)


@st.composite
def triggers(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(st.sampled_from(list(TriggerEvent)))
    trigger: dict[str, Any] = {"event": event.value}
    if event is TriggerEvent.TASK_UPDATED and draw(st.booleans()):
        trigger["fields"] = draw(
            st.lists(
                st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
                min_size=1,
                max_size=4,
                unique=True,
            )
        )
    if event is TriggerEvent.DEADLINE_APPROACHING:
        trigger["before"] = draw(durations)
    if event is TriggerEvent.TASK_OVERDUE and draw(st.booleans()):
        trigger["repeat"] = draw(durations)
    if event is TriggerEvent.SCHEDULE:
        trigger["schedule"] = draw(schedules)
        if draw(st.booleans()):
            trigger["timeZone"] = draw(time_zones)
    return trigger


@st.composite
def actions(draw: st.DrawFn) -> dict[str, Any]:
    notify: dict[str, Any]
    if draw(st.booleans()):
        notify = {
            "channel": "email",
            "to": draw(st.lists(recipients, min_size=1, max_size=3, unique=True)),
        }
    else:
        notify = {"channel": "webhook", "url": "https://hooks.example.com/x"}
        if draw(st.booleans()):
            notify["secretRef"] = {"name": "hook-secret", "key": "signing-key"}
    for part in ("subject", "body"):
        if draw(st.booleans()):
            notify[part] = draw(templates)
    return {"notify": notify}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "trigger": draw(triggers()),
        "actions": draw(st.lists(actions(), min_size=1, max_size=3)),
    }
    if draw(st.booleans()):
        spec["enabled"] = draw(st.booleans())
    match: dict[str, Any] = {}
    if draw(st.booleans()):
        match["projects"] = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        match["labels"] = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        match["priorities"] = draw(
            st.lists(st.sampled_from(["low", "normal", "high", "urgent"]), min_size=1, unique=True)
        )
    if draw(st.booleans()):
        match["condition"] = draw(conditions)
    if match:
        spec["match"] = match
    if draw(st.booleans()):
        spec["throttle"] = {"maxPerHour": draw(st.integers(1, 10000))}
    return spec


tasks = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str),
        "title": st.text(max_size=50),
        "status": st.sampled_from(["todo", "in_progress", "done", "cancelled"]),
        "priority": st.sampled_from(["low", "normal", "high", "urgent"]),
        "labels": st.lists(st.text(min_size=1, max_size=10), max_size=3),
        "project": st.none() | st.text(min_size=1, max_size=10),
        "owner_id": st.uuids().map(str),
        "assignee_id": st.none() | st.uuids().map(str),
        "due_at": st.none() | st.datetimes(timezones=st.just(UTC)),
        "completed_at": st.none(),
        "created_at": st.just("2026-11-30T09:00:00Z"),
        "updated_at": st.just("2026-11-30T09:00:00Z"),
        "version": st.integers(1, 2**31),
    }
)
changes = st.dictionaries(
    st.sampled_from(["status", "priority", "title", "assignee_id", "due_at"]),
    st.tuples(st.none() | st.text(max_size=5), st.none() | st.text(max_size=5)).map(list),
    max_size=3,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(spec=specs(), the_task=tasks, the_changes=changes)
def test_any_valid_rule_compiles_or_says_why(
    spec: dict[str, Any], the_task: dict[str, Any], the_changes: dict[str, list[Any]]
) -> None:
    RuleSpec.model_validate(spec)  # the strategy only makes specs the CRD accepts

    try:
        rule = compile_rule(spec, namespace="ns", name="fuzz", uid="u", generation=1)
    except RuleCompileError as exc:
        event(f"refused: {exc.field.split('[')[0]}")
        assert exc.field.startswith("spec.")
        assert exc.reason
        return
    event("compiled")

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert isinstance(matches(rule, the_task, the_changes, now=now), bool)
    assert all(isinstance(c.passed, bool) for c in explain(rule, the_task, the_changes, now=now))
    try:
        rendered = rule.render(task=the_task, tasks=[the_task], changes=the_changes, now=now)
    except TemplateRenderError as exc:
        assert str(exc).startswith("spec.actions[")
    else:
        assert len(rendered) == len(spec["actions"])
        assert all("\n" not in a.subject for a in rendered)
