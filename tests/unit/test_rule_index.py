"""RuleIndex: an event meets only the rules that can match it, and never misses one that does."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.rules import (
    CompiledRule,
    RuleIndex,
    TriggerEvent,
    bucket_keys,
    compile_rule,
    matches,
)
from smarttasks.automation.rules.index import BucketKey

OWNERS = [uuid.UUID(int=i) for i in range(1, 4)]
PROJECTS = ["apollo", "gemini", "mercury"]
LABELS = ["customer", "ops", "vip"]
PRIORITIES = ["low", "normal", "high", "urgent"]
EVENTS = [TriggerEvent.TASK_CREATED, TriggerEvent.TASK_UPDATED, TriggerEvent.TASK_OVERDUE]


def make_rule(
    name: str,
    event: TriggerEvent = TriggerEvent.TASK_CREATED,
    *,
    match: dict[str, Any] | None = None,
    owner: uuid.UUID | None = None,
    enabled: bool = True,
    generation: int = 1,
) -> CompiledRule:
    spec: dict[str, Any] = {
        "enabled": enabled,
        "trigger": {"event": event.value},
        "actions": [{"notify": {"channel": "email", "to": ["owner"]}}],
    }
    if match:
        spec["match"] = match
    labels = {OWNER_LABEL: str(owner)} if owner else None
    return compile_rule(
        spec,
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        generation=generation,
        labels=labels,
    )


def task(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "title": "t",
        "status": "todo",
        "priority": "normal",
        "labels": [],
        "project": None,
        "owner_id": str(OWNERS[0]),
        "created_at": "2026-11-30T09:00:00Z",
        "updated_at": "2026-11-30T09:00:00Z",
        "version": 1,
    }
    return {**base, **fields}


def test_an_event_only_meets_rules_of_its_trigger_and_buckets() -> None:
    index = RuleIndex()
    apollo = make_rule("apollo", match={"projects": ["apollo"]})
    gemini = make_rule("gemini", match={"projects": ["gemini"]})
    vip = make_rule("vip", match={"labels": ["vip"]})
    urgent = make_rule("urgent", match={"priorities": ["urgent"]})
    everything = make_rule("everything")
    overdue = make_rule("overdue", TriggerEvent.TASK_OVERDUE)
    for r in (apollo, gemini, vip, urgent, everything, overdue):
        index.put(r)

    met = index.candidates(TriggerEvent.TASK_CREATED, task(project="apollo", labels=["ops"]))

    assert [r.name for r in met] == ["apollo", "everything"]


def test_owned_rules_are_only_met_by_their_owners_tasks() -> None:
    index = RuleIndex()
    for i, owner in enumerate(OWNERS):
        index.put(make_rule(f"mine-{i}", owner=owner))

    met = index.candidates(TriggerEvent.TASK_CREATED, task(owner_id=str(OWNERS[1])))

    assert [r.name for r in met] == ["mine-1"]


def test_put_replaces_the_previous_generation_and_discard_removes() -> None:
    index = RuleIndex()
    index.put(make_rule("r", match={"projects": ["apollo"]}, generation=1))
    index.put(make_rule("r", match={"projects": ["gemini"]}, generation=2))

    assert index.candidates(TriggerEvent.TASK_CREATED, task(project="apollo")) == []
    (found,) = index.candidates(TriggerEvent.TASK_CREATED, task(project="gemini"))
    assert found.generation == 2
    assert index.get("uid-r") is found and index.by_key("ns/r") is found

    index.discard("ns/r")

    assert index.rules() == [] and index.get("uid-r") is None and len(index) == 0
    index.discard("ns/r")  # absent: nothing happens


def test_disabled_rules_are_never_met_but_can_be_looked_up() -> None:
    index = RuleIndex()
    index.put(make_rule("off", enabled=False))

    assert index.candidates(TriggerEvent.TASK_CREATED, task()) == []
    assert index.rules(TriggerEvent.TASK_CREATED) == []
    off = index.by_key("ns/off")
    assert off is not None and not off.enabled


def test_rules_and_for_trigger_list_every_enabled_rule_of_a_time_trigger() -> None:
    index = RuleIndex()
    index.put(make_rule("a", TriggerEvent.TASK_OVERDUE, match={"projects": ["apollo"]}))
    index.put(make_rule("b", TriggerEvent.TASK_OVERDUE, owner=OWNERS[0]))
    index.put(make_rule("c", TriggerEvent.TASK_CREATED))

    assert [r.name for r in index.for_trigger(TriggerEvent.TASK_OVERDUE)] == ["a", "b"]
    assert [r.name for r in index.rules()] == ["a", "b", "c"]


def test_a_view_over_a_bucket_mapping_reads_like_the_owned_index() -> None:
    rules = [make_rule("a", match={"labels": ["ops", "vip"]}), make_rule("b")]
    buckets: dict[BucketKey, list[CompiledRule]] = {}
    for r in rules:  # what the kopf index holds: {bucket: [rules]}
        for key in bucket_keys(r):
            buckets.setdefault(key, []).append(r)
    view = RuleIndex(buckets)

    met = view.candidates(TriggerEvent.TASK_CREATED, task(labels=["ops", "vip"]))

    assert [r.name for r in met] == ["a", "b"]  # "a" once, though filed under two labels
    with pytest.raises(TypeError):
        view.put(rules[0])


def test_matching_applies_matches_to_the_candidates() -> None:
    index = RuleIndex()
    index.put(make_rule("cond", match={"projects": ["apollo"], "condition": "task.version > 1"}))

    assert index.matching(TriggerEvent.TASK_CREATED, task(project="apollo", version=1)) == []
    assert index.matching(TriggerEvent.TASK_CREATED, task(project="apollo", version=2))


rule_specs = st.fixed_dictionaries(
    {
        "event": st.sampled_from(EVENTS),
        "owner": st.none() | st.sampled_from(OWNERS),
        "enabled": st.booleans(),
        "projects": st.none() | st.lists(st.sampled_from(PROJECTS), min_size=1, unique=True),
        "labels": st.none() | st.lists(st.sampled_from(LABELS), min_size=1, unique=True),
        "priorities": st.none() | st.lists(st.sampled_from(PRIORITIES), min_size=1, unique=True),
    }
)
tasks = st.builds(
    task,
    owner_id=st.sampled_from([str(o) for o in OWNERS]),
    project=st.none() | st.sampled_from(PROJECTS),
    labels=st.lists(st.sampled_from(LABELS), unique=True),
    priority=st.sampled_from(PRIORITIES),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(rule_specs, max_size=12), the_task=tasks, event=st.sampled_from(EVENTS))
def test_the_index_finds_exactly_the_rules_that_match(
    specs: list[dict[str, Any]], the_task: dict[str, Any], event: TriggerEvent
) -> None:
    rules = []
    for i, spec in enumerate(specs):
        match = {k: spec[k] for k in ("projects", "labels", "priorities") if spec[k]}
        rules.append(
            make_rule(
                f"r{i:02d}",
                spec["event"],
                match=match,
                owner=spec["owner"],
                enabled=spec["enabled"],
            )
        )
    index = RuleIndex()
    for r in rules:
        index.put(r)

    expected = [r.name for r in rules if r.trigger is event and matches(r, the_task)]

    assert [r.name for r in index.matching(event, the_task)] == expected
    candidates = index.candidates(event, the_task)
    assert {r.name for r in candidates} >= set(expected)
    assert all(r.trigger is event and r.enabled for r in candidates)
