"""The Ready condition and the compile cache: what the operator writes, and when it does not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.rules import CompiledRule, RuleCompileError, compile_rule
from smarttasks.automation.rules.cache import CompileCache
from smarttasks.automation.rules.readiness import describe, status_patch

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
GOOD: dict[str, Any] = {
    "trigger": {"event": "TaskOverdue", "repeat": "24h"},
    "match": {"priorities": ["high", "urgent"], "condition": "true"},
    "actions": [{"notify": {"channel": "email", "to": ["assignee"]}}],
}
BAD: dict[str, Any] = {**GOOD, "match": {"condition": "nope"}}


def outcome(spec: dict[str, Any], generation: int = 1) -> CompiledRule | RuleCompileError:
    try:
        return compile_rule(spec, namespace="ns", name="r", generation=generation)
    except RuleCompileError as exc:
        return exc


def body(spec: dict[str, Any], *, uid: str = "u1", generation: int = 1, **labels: str) -> Any:
    meta = {"namespace": "ns", "name": "r", "uid": uid, "generation": generation, "labels": labels}
    return {"metadata": meta, "spec": spec}


def test_first_report_sets_ready_and_observed_generation() -> None:
    patch = status_patch(None, outcome(GOOD), generation=1, now=NOW)

    assert patch == {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Compiled",
                "message": describe(outcome(GOOD)),  # type: ignore[arg-type]
                "observedGeneration": 1,
                "lastTransitionTime": "2026-12-01T12:00:00Z",
            }
        ],
    }


def test_nothing_is_written_when_the_status_already_says_so() -> None:
    current = status_patch(None, outcome(GOOD), generation=1, now=NOW)

    assert status_patch(current, outcome(GOOD), generation=1, now=LATER) is None


def test_a_new_generation_with_the_same_status_keeps_the_transition_time() -> None:
    current = status_patch(None, outcome(GOOD), generation=1, now=NOW)

    patch = status_patch(current, outcome(GOOD, 2), generation=2, now=LATER)

    assert patch is not None and patch["observedGeneration"] == 2
    (ready,) = patch["conditions"]
    assert ready["lastTransitionTime"] == "2026-12-01T12:00:00Z"
    assert ready["message"].startswith("Generation 2 compiled")


def test_a_flip_to_not_ready_moves_the_transition_time_and_keeps_other_conditions() -> None:
    current = status_patch(None, outcome(GOOD), generation=1, now=NOW) or {}
    current["conditions"].append({"type": "Throttled", "status": "False"})

    patch = status_patch(current, outcome(BAD, 2), generation=2, now=LATER)

    assert patch is not None
    throttled, ready = patch["conditions"]
    assert throttled == {"type": "Throttled", "status": "False"}
    assert ready["status"] == "False" and ready["reason"] == "CompileFailed"
    assert ready["message"].startswith("spec.match.condition: ")
    assert ready["lastTransitionTime"] == "2026-12-01T13:00:00Z"


def test_describe_says_what_the_rule_does() -> None:
    rule = outcome(GOOD)
    assert isinstance(rule, CompiledRule)

    assert describe(rule) == (
        "Generation 1 compiled: fires when overdue (again every 1d) for tasks of priority "
        "high or urgent, matching the condition (1 action)."
    )


def test_the_cache_compiles_once_per_generation_and_owner_label() -> None:
    cache = CompileCache()

    first = cache.outcome(body(GOOD))
    again = cache.outcome(body(GOOD))
    relabelled = cache.outcome(body(GOOD, **{OWNER_LABEL: "0b7e5f3a-2c1d-4e8f-9a6b-3c2d1e0f9a8b"}))
    next_generation = cache.outcome(body(BAD, generation=2))

    assert again is first
    assert isinstance(relabelled, CompiledRule) and relabelled.owner is not None
    assert isinstance(next_generation, RuleCompileError)
    assert cache.compilations == 3 and len(cache) == 1


def test_the_cache_forgets_deleted_rules_and_stays_bounded() -> None:
    cache = CompileCache(max_entries=2)
    for uid in ("a", "b", "c"):
        cache.outcome(body(GOOD, uid=uid))

    assert len(cache) == 2
    cache.forget("c")
    assert len(cache) == 1
    cache.outcome(body(GOOD, uid="b"))
    assert cache.compilations == 3  # "b" was still cached
