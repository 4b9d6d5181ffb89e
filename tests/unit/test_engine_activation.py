"""The operator's engine starts only when its replica leads and its rule index is complete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from smarttasks.automation.activation import expected_rules, leads
from smarttasks.automation.handlers.state import OperatorState
from smarttasks.automation.operator_settings import OperatorSettings

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def peer(priority: int, *, seen_ago: float = 5.0, lifetime: int = 60) -> dict[str, Any]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat(),
    }


def test_the_highest_live_priority_leads() -> None:
    status = {"me": peer(500), "other": peer(100)}
    assert leads(status, priority=500, now=NOW)
    assert not leads(status, priority=100, now=NOW)


def test_a_dead_peer_of_higher_priority_does_not_hold_a_replica_back() -> None:
    status = {"me": peer(100), "gone": peer(900, seen_ago=120)}
    assert leads(status, priority=100, now=NOW)


def test_equal_priorities_pause_every_one_of_them_as_kopf_does() -> None:
    status = {"me": peer(100), "twin": peer(100)}
    assert not leads(status, priority=100, now=NOW)


def test_an_empty_or_malformed_status_leaves_this_replica_leading() -> None:
    assert leads({}, priority=1, now=NOW)
    assert leads({"x": "garbage", "y": {"priority": 9}}, priority=1, now=NOW)


def _rule(name: str, **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    body["metadata"].update({"namespace": "team", "uid": f"uid-{name}", "generation": 1, **meta})
    return body


def test_expected_rules_are_those_that_compile_and_are_not_being_deleted() -> None:
    state = OperatorState(config=OperatorSettings())
    broken = _rule("overdue-high-priority")
    broken["metadata"]["name"] = "broken"
    broken["metadata"]["uid"] = "uid-broken"
    broken["spec"]["match"] = {"condition": "task.priority == "}
    items = [
        _rule("deadline-approaching"),
        _rule("overdue-high-priority"),
        _rule("weekday-digest", deletionTimestamp="2026-11-26T11:00:00Z"),
        broken,
    ]
    assert expected_rules(items, state) == {
        "team/deadline-approaching",
        "team/overdue-high-priority",
    }
