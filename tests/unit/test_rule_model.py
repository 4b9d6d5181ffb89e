"""The pydantic spec model says what the CRD says: same fields, bounds, enums and rules."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from smarttasks.automation.rules.model import RuleSpec, is_http_url

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "automationrules.smarttasks.io.yaml"
SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))
RULE_SAMPLES = [p for p in SAMPLES if yaml.safe_load(p.read_text())["kind"] == "AutomationRule"]

EMAIL = {"notify": {"channel": "email", "to": ["owner"]}}


def _spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"trigger": {"event": "TaskCreated"}, "actions": [EMAIL]}
    spec.update(overrides)
    return spec


def _crd_spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Unwrap pydantic's $ref and `anyOf [X, null]` for optional fields."""
    while True:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            assert len(options) == 1, node
            node = options[0]
        else:
            return node


def _pairs(
    crd: dict[str, Any], model: dict[str, Any], defs: dict[str, Any], path: str
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    model = _resolve(model, defs)
    yield path, crd, model
    for name, child in crd.get("properties", {}).items():
        assert name in model.get("properties", {}), f"{path}.{name} is missing from the model"
        yield from _pairs(child, model["properties"][name], defs, f"{path}.{name}")
    if "items" in crd:
        yield from _pairs(crd["items"], model["items"], defs, f"{path}[]")


def test_model_has_the_crds_fields_bounds_and_enums() -> None:
    model_schema = RuleSpec.model_json_schema(by_alias=True)
    defs = model_schema.get("$defs", {})
    checked = 0
    for path, crd, model in _pairs(_crd_spec_schema(), model_schema, defs, "spec"):
        for keyword, model_keyword in (
            ("maxLength", "maxLength"),
            ("minLength", "minLength"),
            ("maxItems", "maxItems"),
            ("minItems", "minItems"),
            ("minimum", "minimum"),
            ("maximum", "maximum"),
            ("pattern", "pattern"),
            ("enum", "enum"),
        ):
            if keyword in crd:
                assert model.get(model_keyword) == crd[keyword], f"{path}: {keyword}"
                checked += 1
        model_props = set(model.get("properties", {}))
        assert model_props == set(crd.get("properties", {})), f"{path}: fields differ"
        assert set(model.get("required", [])) == set(crd.get("required", [])), path
    assert checked > 30


@pytest.mark.parametrize("path", RULE_SAMPLES, ids=lambda p: p.name)
def test_samples_parse_and_round_trip(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())["spec"]

    parsed = RuleSpec.from_manifest(spec)

    assert parsed.to_manifest() == {"enabled": True, **spec}


@pytest.mark.parametrize(
    ("spec", "loc", "message"),
    [
        (
            _spec(trigger={"event": "TaskCreated", "before": "1h"}),
            ("trigger", "before"),
            "before is only allowed when event is DeadlineApproaching",
        ),
        (
            _spec(trigger={"event": "DeadlineApproaching"}),
            ("trigger", "before"),
            "before is required when event is DeadlineApproaching",
        ),
        (
            _spec(trigger={"event": "DeadlineApproaching", "before": "0h0m"}),
            ("trigger", "before"),
            "before must be longer than zero",
        ),
        (
            _spec(trigger={"event": "TaskOverdue", "repeat": "00d"}),
            ("trigger", "repeat"),
            "repeat must be longer than zero",
        ),
        (
            _spec(trigger={"event": "TaskCreated", "repeat": "1d"}),
            ("trigger", "repeat"),
            "repeat is only allowed when event is TaskOverdue",
        ),
        (
            _spec(trigger={"event": "Schedule"}),
            ("trigger", "schedule"),
            "schedule is required when event is Schedule",
        ),
        (
            _spec(trigger={"event": "TaskCreated", "timeZone": "UTC"}),
            ("trigger", "timeZone"),
            "timeZone is only allowed when event is Schedule",
        ),
        (
            _spec(trigger={"event": "TaskCreated", "fields": ["status"]}),
            ("trigger", "fields"),
            "fields is only allowed when event is TaskUpdated",
        ),
        (
            _spec(actions=[{"notify": {"channel": "webhook"}}]),
            ("actions", 0, "notify", "url"),
            "a webhook action requires url",
        ),
        (
            _spec(actions=[{"notify": {"channel": "email"}}]),
            ("actions", 0, "notify", "to"),
            "an email action requires at least one recipient in to",
        ),
        (
            _spec(
                actions=[{"notify": {"channel": "email", "to": ["owner"], "url": "https://x.io"}}]
            ),
            ("actions", 0, "notify", "url"),
            "url is only allowed for webhook actions",
        ),
        (
            _spec(actions=[{"notify": {"channel": "webhook", "url": "ftp://x.io/"}}]),
            ("actions", 0, "notify", "url"),
            "url must be an absolute http:// or https:// URL",
        ),
        (
            _spec(
                actions=[{"notify": {"channel": "webhook", "url": "https://x.io", "to": ["a@b.c"]}}]
            ),
            ("actions", 0, "notify", "to"),
            "to is only allowed for email actions",
        ),
        (
            _spec(
                actions=[
                    {
                        "notify": {
                            "channel": "email",
                            "to": ["owner"],
                            "secretRef": {"name": "s", "key": "k"},
                        }
                    }
                ]
            ),
            ("actions", 0, "notify", "secretRef"),
            "secretRef is only allowed for webhook actions",
        ),
        (
            _spec(match={"labels": ["a", "a"]}),
            ("match", "labels"),
            "labels lists 'a' more than once",
        ),
        (_spec(actions=[]), ("actions",), "at least 1 item"),
        (_spec(throttle={"maxPerHour": 0}), ("throttle", "maxPerHour"), "greater than or equal"),
        (_spec(trigger={"event": "TaskRenamed"}), ("trigger", "event"), "TaskCreated"),
        (_spec(match={"priorities": ["critical"]}), ("match", "priorities", 0), "urgent"),
        (_spec(match={"conditon": "true"}), ("match", "conditon"), "Extra inputs"),
        (
            _spec(trigger={"event": "DeadlineApproaching", "before": "1 hour"}),
            ("trigger", "before"),
            "must be a duration such as 30m, 1h, 2d or 1d12h",
        ),
        (
            _spec(trigger={"event": "Schedule", "schedule": "every day"}),
            ("trigger", "schedule"),
            "must be a five-field cron expression",
        ),
        (
            _spec(actions=[{"notify": {"channel": "email", "to": ["boss"]}}]),
            ("actions", 0, "notify", "to", 0),
            "must be assignee, owner or an email address",
        ),
    ],
)
def test_invalid_specs_name_the_field(
    spec: dict[str, Any], loc: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        RuleSpec.model_validate(spec)

    errors = {tuple(e["loc"]): e["msg"] for e in caught.value.errors()}
    assert loc in errors, errors
    assert message in errors[loc]


def test_camel_case_and_snake_case_both_accepted_and_camel_case_written() -> None:
    spec = _spec(
        trigger={"event": "Schedule", "schedule": "@daily", "time_zone": "Europe/Berlin"},
        throttle={"max_per_hour": 5},
    )

    manifest = RuleSpec.model_validate(spec).to_manifest()

    assert manifest["trigger"]["timeZone"] == "Europe/Berlin"
    assert manifest["throttle"] == {"maxPerHour": 5}


def test_parsing_does_not_change_the_input() -> None:
    spec = _spec(match={"labels": ["a"]})
    before = copy.deepcopy(spec)

    RuleSpec.model_validate(spec)

    assert spec == before


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.com/x?y=1", True),
        ("http://10.0.0.1:8080/", True),
        ("https://", False),
        ("mailto:a@b.c", False),
        ("https://exa mple.com/", False),
        ("https://example.com:notaport/", False),
        ("/relative", False),
    ],
)
def test_webhook_urls(url: str, ok: bool) -> None:
    assert is_http_url(url) is ok
