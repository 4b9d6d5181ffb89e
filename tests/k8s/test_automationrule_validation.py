"""Bad AutomationRules are refused by the API server at apply time, naming the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.k8s import ControlPlane

pytestmark = pytest.mark.k8s

Rule = dict[str, Any]
# What the error message must contain: the same for both ways of applying, or per way.
Fragments = list[str] | dict[str, list[str]]


def _rule(**spec: Any) -> Rule:
    base: Rule = {
        "apiVersion": "smarttasks.io/v1alpha1",
        "kind": "AutomationRule",
        "metadata": {"name": "rule"},
        "spec": {
            "trigger": {"event": "TaskCreated"},
            "actions": [{"notify": {"channel": "email", "to": ["assignee"]}}],
        },
    }
    base["spec"].update(spec)
    return base


def _email(**notify: Any) -> list[dict[str, Any]]:
    return [{"notify": {"channel": "email", **notify}}]


def _webhook(**notify: Any) -> list[dict[str, Any]]:
    return [{"notify": {"channel": "webhook", **notify}}]


def _with(mutate: Callable[[Rule], None]) -> Rule:
    rule = _rule()
    mutate(rule)
    return rule


# Server-side apply checks types, list semantics and unknown fields while building
# its typed patch, before validation proper, so it words those errors differently.
SERVER_SIDE, CLIENT_SIDE = "server-side", "client-side"
APPLY_MODES = [SERVER_SIDE, CLIENT_SIDE]


def _apply(k8s: ControlPlane, namespace: str, rule: Rule, mode: str) -> Any:
    return k8s.kubectl(
        "apply", f"--server-side={mode == SERVER_SIDE}", "--validate=strict",
        "--field-manager=smarttasks-tests", "-n", namespace, "-f", "-",
        input=json.dumps(rule), check=False,
    )  # fmt: skip


HOOK = "https://hooks.example.com/x"

# (id, manifest, fragments the error message must contain)
BAD_RULES: list[tuple[str, Rule, Fragments]] = [
    (
        "unknown-event",
        _rule(trigger={"event": "TaskExploded"}),
        ['spec.trigger.event: Unsupported value: "TaskExploded"', '"TaskCreated"'],
    ),
    (
        "before-without-deadline-approaching",
        _rule(trigger={"event": "TaskCreated", "before": "1h"}),
        [
            "spec.trigger.before: Forbidden:",
            "before is only allowed when event is DeadlineApproaching",
        ],
    ),
    (
        "deadline-approaching-without-before",
        _rule(trigger={"event": "DeadlineApproaching"}),
        [
            "spec.trigger.before: Required value:",
            "before is required when event is DeadlineApproaching",
        ],
    ),
    (
        "before-not-a-duration",
        _rule(trigger={"event": "DeadlineApproaching", "before": "soon"}),
        ['spec.trigger.before: Invalid value: "soon"', "should match"],
    ),
    (
        "before-iso-duration",
        _rule(trigger={"event": "DeadlineApproaching", "before": "PT1H"}),
        ['spec.trigger.before: Invalid value: "PT1H"'],
    ),
    (
        "before-zero",
        _rule(trigger={"event": "DeadlineApproaching", "before": "0h"}),
        ["spec.trigger.before", "before must be longer than zero"],
    ),
    (
        "repeat-without-task-overdue",
        _rule(trigger={"event": "DeadlineApproaching", "before": "1h", "repeat": "1h"}),
        ["spec.trigger.repeat: Forbidden: repeat is only allowed when event is TaskOverdue"],
    ),
    (
        "schedule-on-event-trigger",
        _rule(trigger={"event": "TaskCompleted", "schedule": "0 9 * * *"}),
        ["spec.trigger.schedule: Forbidden: schedule is only allowed when event is Schedule"],
    ),
    (
        "schedule-trigger-without-schedule",
        _rule(trigger={"event": "Schedule", "timeZone": "Europe/Berlin"}),
        ["spec.trigger.schedule: Required value: schedule is required when event is Schedule"],
    ),
    (
        "schedule-not-cron",
        _rule(trigger={"event": "Schedule", "schedule": "every morning"}),
        ['spec.trigger.schedule: Invalid value: "every morning"'],
    ),
    (
        "time-zone-without-schedule",
        _rule(trigger={"event": "TaskOverdue", "timeZone": "Europe/Berlin"}),
        ["spec.trigger.timeZone: Forbidden: timeZone is only allowed when event is Schedule"],
    ),
    (
        "fields-without-task-updated",
        _rule(trigger={"event": "TaskAssigned", "fields": ["status"]}),
        ["spec.trigger.fields: Forbidden: fields is only allowed when event is TaskUpdated"],
    ),
    (
        "missing-trigger",
        _with(lambda r: r["spec"].pop("trigger")),
        ["spec.trigger: Required value"],
    ),
    ("empty-actions", _rule(actions=[]), ["spec.actions", "should have at least 1 items"]),
    (
        "missing-actions",
        _with(lambda r: r["spec"].pop("actions")),
        ["spec.actions: Required value"],
    ),
    (
        "too-many-actions",
        _rule(actions=_email(to=["owner"]) * 9),
        ["spec.actions: Too many: 9: must have at most 8 items"],
    ),
    (
        "unknown-channel",
        _rule(actions=[{"notify": {"channel": "sms", "to": ["owner"]}}]),
        ['spec.actions[0].notify.channel: Unsupported value: "sms"'],
    ),
    (
        "webhook-without-url",
        _rule(actions=_webhook()),
        ["spec.actions[0].notify.url: Required value: a webhook action requires url"],
    ),
    (
        "webhook-ftp-url",
        _rule(actions=_webhook(url="ftp://hooks.example.com/x")),
        ["spec.actions[0].notify.url", "url must be an absolute http:// or https:// URL"],
    ),
    (
        "webhook-relative-url",
        _rule(actions=_webhook(url="/hooks/x")),
        ["spec.actions[0].notify.url", "url must be an absolute http:// or https:// URL"],
    ),
    (
        "webhook-with-recipients",
        _rule(actions=_webhook(url=HOOK, to=["owner"])),
        ["spec.actions[0].notify.to: Forbidden: to is only allowed for email actions"],
    ),
    (
        "email-without-recipients",
        _rule(actions=_email()),
        [
            "spec.actions[0].notify.to: Required value:",
            "an email action requires at least one recipient in to",
        ],
    ),
    (
        "email-empty-recipients",
        _rule(actions=_email(to=[])),
        [
            "spec.actions[0].notify.to: Required value:",
            "an email action requires at least one recipient in to",
        ],
    ),
    (
        "email-with-url",
        _rule(actions=_email(to=["owner"], url=HOOK)),
        ["spec.actions[0].notify.url: Forbidden: url is only allowed for webhook actions"],
    ),
    (
        "email-with-secret-ref",
        _rule(actions=_email(to=["owner"], secretRef={"name": "s", "key": "k"})),
        [
            "spec.actions[0].notify.secretRef: Forbidden:",
            "secretRef is only allowed for webhook actions",
        ],
    ),
    (
        "bad-recipient",
        _rule(actions=_email(to=["manager"])),
        ['spec.actions[0].notify.to[0]: Invalid value: "manager"'],
    ),
    (
        "duplicate-recipient",
        _rule(actions=_email(to=["owner", "owner"])),
        {
            SERVER_SIDE: ['.spec.actions[0].notify.to: duplicate entries for key [="owner"]'],
            CLIENT_SIDE: ['spec.actions[0].notify.to[1]: Duplicate value: "owner"'],
        },
    ),
    (
        "secret-ref-without-key",
        _rule(actions=_webhook(url=HOOK, secretRef={"name": "hook-secret"})),
        ["spec.actions[0].notify.secretRef.key: Required value"],
    ),
    (
        "oversize-description",
        _rule(description="x" * 1025),
        ["spec.description: Too long: may not be more than 1024"],
    ),
    (
        "oversize-subject",
        _rule(actions=_email(to=["owner"], subject="s" * 513)),
        ["spec.actions[0].notify.subject: Too long: may not be more than 512"],
    ),
    (
        "oversize-condition",
        _rule(match={"condition": "true && " * 600 + "true"}),
        ["spec.match.condition: Too long: may not be more than 4096"],
    ),
    (
        "too-many-labels",
        _rule(match={"labels": [f"l{i}" for i in range(17)]}),
        ["spec.match.labels: Too many: 17: must have at most 16 items"],
    ),
    (
        "bad-priority",
        _rule(match={"priorities": ["critical"]}),
        ['spec.match.priorities[0]: Unsupported value: "critical"'],
    ),
    (
        "negative-max-per-hour",
        _rule(throttle={"maxPerHour": -1}),
        ["spec.throttle.maxPerHour: Invalid value: -1", "greater than or equal to 1"],
    ),
    (
        "too-large-max-per-hour",
        _rule(throttle={"maxPerHour": 100001}),
        ["spec.throttle.maxPerHour: Invalid value: 100001", "less than or equal to 10000"],
    ),
    (
        "enabled-not-boolean",
        _rule(enabled="yes"),
        {
            SERVER_SIDE: [".spec.enabled: expected boolean"],
            CLIENT_SIDE: ['spec.enabled: Invalid value: "string"', "must be of type boolean"],
        },
    ),
    (
        "unknown-spec-field",
        _rule(triggers={"event": "TaskCreated"}),
        {
            SERVER_SIDE: [".spec.triggers: field not declared in schema"],
            CLIENT_SIDE: ['unknown field "spec.triggers"'],
        },
    ),
    (
        "unknown-notify-field",
        _rule(actions=_email(to=["owner"], cc=["a@example.com"])),
        {
            SERVER_SIDE: [".spec.actions[0].notify.cc: field not declared in schema"],
            CLIENT_SIDE: ['unknown field "spec.actions[0].notify.cc"'],
        },
    ),
]


@pytest.mark.parametrize("mode", APPLY_MODES)
@pytest.mark.parametrize(("rule", "fragments"), [pytest.param(r, f, id=i) for i, r, f in BAD_RULES])
def test_bad_rule_is_refused_naming_the_field(
    k8s: ControlPlane,
    automationrule_crd: str,
    namespace: str,
    rule: Rule,
    fragments: Fragments,
    mode: str,
) -> None:
    proc = _apply(k8s, namespace, copy.deepcopy(rule), mode)

    assert proc.returncode != 0, f"accepted: {json.dumps(rule)}"
    for fragment in fragments[mode] if isinstance(fragments, dict) else fragments:
        assert fragment in proc.stderr
    stored = k8s.kubectl("get", "ar", "-n", namespace, "-o", "name").stdout
    assert stored.strip() == ""


GOOD_EDGE_RULES: list[tuple[str, Rule]] = [
    ("compound-duration", _rule(trigger={"event": "DeadlineApproaching", "before": "1d12h"})),
    ("repeat-on-overdue", _rule(trigger={"event": "TaskOverdue", "repeat": "90m"})),
    (
        "schedule-macro",
        _rule(trigger={"event": "Schedule", "schedule": "@daily", "timeZone": "UTC"}),
    ),
    ("http-webhook", _rule(actions=_webhook(url="http://hooks.internal:8080/x"))),
    ("email-addresses", _rule(actions=_email(to=["owner", "ops@example.com"]))),
    ("sixteen-labels", _rule(match={"labels": [f"l{i}" for i in range(16)]})),
    ("max-per-hour-bounds", _rule(throttle={"maxPerHour": 10000})),
    ("disabled", _rule(enabled=False)),
    ("eight-actions", _rule(actions=_email(to=["owner"]) + _webhook(url=HOOK) * 7)),
]


@pytest.mark.parametrize("mode", APPLY_MODES)
@pytest.mark.parametrize("rule", [pytest.param(r, id=i) for i, r in GOOD_EDGE_RULES])
def test_rule_at_the_limits_is_accepted(
    k8s: ControlPlane, automationrule_crd: str, namespace: str, rule: Rule, mode: str
) -> None:
    proc = _apply(k8s, namespace, copy.deepcopy(rule), mode)

    assert proc.returncode == 0, proc.stderr
