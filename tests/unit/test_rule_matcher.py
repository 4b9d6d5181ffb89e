"""matches(): each criterion of a rule, owner scoping, changes, conditions that fail at runtime,
one task prepared once for many rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.rules import (
    CompiledRule,
    ConditionError,
    compile_rule,
    explain,
    matches,
    task_document,
)
from smarttasks.automation.rules.matcher import MatchSubject, evaluate
from smarttasks.core.events import TaskSnapshot

OWNER = uuid.UUID("22222222-2222-4222-8222-222222222222")
TASK: dict[str, Any] = {
    "id": "11111111-1111-4111-8111-111111111111",
    "title": "Ship the release",
    "status": "todo",
    "priority": "high",
    "labels": ["customer", "ops"],
    "project": "apollo",
    "owner_id": str(OWNER),
    "assignee_id": None,
    "due_at": "2026-12-04T16:00:00Z",
    "created_at": "2026-11-30T09:00:00Z",
    "updated_at": "2026-11-30T09:00:00Z",
    "version": 1,
}


def rule(
    event: str = "TaskCreated",
    *,
    match: dict[str, Any] | None = None,
    enabled: bool = True,
    labels: dict[str, str] | None = None,
    **trigger: Any,
) -> CompiledRule:
    spec: dict[str, Any] = {
        "enabled": enabled,
        "trigger": {"event": event, **trigger},
        "actions": [{"notify": {"channel": "email", "to": ["owner"]}}],
    }
    if match is not None:
        spec["match"] = match
    return compile_rule(spec, namespace="ns", name="r", labels=labels)


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (None, True),
        ({"projects": ["apollo", "gemini"]}, True),
        ({"projects": ["gemini"]}, False),
        ({"labels": ["customer"]}, True),
        ({"labels": ["vip", "ops"]}, True),
        ({"labels": ["vip"]}, False),
        ({"priorities": ["high", "urgent"]}, True),
        ({"priorities": ["low"]}, False),
        ({"condition": "task.assignee == null"}, True),
        ({"condition": "task.assignee != null"}, False),
        ({"condition": '"customer" in task.labels && task.version == 1'}, True),
        ({"projects": ["apollo"], "labels": ["customer"], "priorities": ["low"]}, False),
        ({"projects": ["apollo"], "labels": ["customer"], "condition": "true"}, True),
    ],
)
def test_criteria(match: dict[str, Any] | None, expected: bool) -> None:
    assert matches(rule(match=match), TASK) is expected


def test_a_task_without_project_does_not_match_a_project_rule() -> None:
    assert not matches(rule(match={"projects": ["apollo"]}), {**TASK, "project": None})


def test_a_disabled_rule_matches_nothing() -> None:
    disabled = rule(enabled=False)

    assert not matches(disabled, TASK)
    assert explain(disabled, TASK)[0].detail == "the rule is disabled"


def test_an_owned_rule_matches_only_its_owners_tasks() -> None:
    owned = rule(labels={OWNER_LABEL: str(OWNER)})

    assert matches(owned, TASK)
    assert not matches(owned, {**TASK, "owner_id": str(uuid.uuid4())})


def test_task_updated_fields_need_one_of_them_in_changes() -> None:
    on_status = rule("TaskUpdated", fields=["status", "priority"])

    assert matches(on_status, TASK, {"priority": ["normal", "high"]})
    assert not matches(on_status, TASK, {"title": ["a", "b"]})
    assert not matches(on_status, TASK)
    assert matches(rule("TaskUpdated"), TASK, {"title": ["a", "b"]})


def test_changes_and_now_are_visible_to_the_condition() -> None:
    moved_to_done = rule(
        "TaskUpdated", match={"condition": "'status' in changes && changes.status[1] == 'done'"}
    )
    overdue = rule(match={"condition": "task.due_at < now"})

    assert matches(moved_to_done, TASK, {"status": ["todo", "done"]})
    assert not matches(moved_to_done, TASK, {"status": ["done", "todo"]})
    assert not matches(moved_to_done, TASK, {})
    assert matches(overdue, TASK, now=datetime(2026, 12, 5, tzinfo=UTC))
    assert not matches(overdue, TASK, now=datetime(2026, 12, 3, tzinfo=UTC))


def test_the_assignee_alias_follows_assignee_id_also_in_changes() -> None:
    assigned_to_someone = rule(
        "TaskUpdated", match={"condition": "task.assignee != null && changes.assignee[0] == null"}
    )
    someone = str(uuid.uuid4())

    assert matches(
        assigned_to_someone, {**TASK, "assignee_id": someone}, {"assignee_id": [None, someone]}
    )


def test_a_condition_that_fails_at_runtime_does_not_match_and_explain_says_why() -> None:
    due_soon = rule(match={"condition": "task.due_at < now"})
    no_deadline = {**TASK, "due_at": None}

    assert not matches(due_soon, no_deadline)
    (check,) = explain(due_soon, no_deadline)
    assert check.name == "condition" and not check.passed
    assert check.detail.startswith("could not be evaluated")


def test_explain_lists_every_criterion_without_stopping() -> None:
    strict = rule(match={"projects": ["gemini"], "labels": ["ops"], "priorities": ["high"]})

    checks = explain(strict, TASK)

    assert [(c.name, c.passed) for c in checks] == [
        ("projects", False),
        ("labels", True),
        ("priorities", True),
    ]


@pytest.mark.parametrize(
    "task",
    [
        TASK,
        TaskSnapshot.model_validate(TASK),
        task_document(TASK),
        {**TASK, "due_at": datetime(2026, 12, 4, 16, 0)},  # naive: taken as UTC
    ],
    ids=["json", "snapshot", "document", "naive-datetime"],
)
def test_every_task_shape_is_accepted(task: Any) -> None:
    due = rule(match={"condition": "task.due_at == timestamp('2026-12-04T16:00:00Z')"})

    assert matches(due, task)


def test_a_subject_prepared_once_answers_for_every_rule_as_matching_alone() -> None:
    changes = {"status": ["todo", "in_progress"]}
    rules = [
        rule(match={"condition": "task.assignee == null"}),
        rule(match={"condition": "1 / (task.version - 1) >= 0"}),  # fails: division by zero
        rule("TaskUpdated", match={"condition": "changes.status[1] == 'in_progress'"}),
        rule(match={"condition": "changes.priority[1] == 'high'"}),  # fails: no such key
        rule(match={"projects": ["gemini"], "condition": "true"}),
        rule(match={"condition": '"ops" in task.labels && task.due_at < now'}),
    ]
    now = datetime(2026, 12, 5, tzinfo=UTC)
    subject = MatchSubject(TASK, changes, now=now)

    shared = [matches(r, subject) for r in rules]

    assert shared == [matches(r, TASK, changes, now=now) for r in rules]
    assert shared == [True, False, True, False, False, True]


def test_evaluate_raises_what_matches_counts_as_no_match() -> None:
    dividing = rule(match={"condition": "1 / (task.version - 1) >= 0"})
    missing = rule(match={"condition": "changes.priority[1] == 'high'"})

    with pytest.raises(ConditionError, match="division by zero"):
        evaluate(dividing, MatchSubject(TASK))
    with pytest.raises(ConditionError, match="no such key 'priority'"):
        missing.matches(TASK, {"status": ["todo", "done"]})
    assert not matches(dividing, TASK)
    assert evaluate(rule(match={"condition": "size(task.labels) == 2"}), MatchSubject(TASK))


def test_a_compiled_rule_names_itself_the_same_way_every_time() -> None:
    compiled = compile_rule(
        {
            "trigger": {"event": "TaskCreated"},
            "actions": [{"notify": {"channel": "webhook", "url": "https://x.io"}}],
        },
        namespace="team-a",
        name="hook",
        uid="u-1",
        generation=4,
    )

    assert compiled.key == "team-a/hook"
    assert compiled.ref is compiled.ref
    assert compiled.ref.model_dump() == {
        "namespace": "team-a",
        "name": "hook",
        "uid": "u-1",
        "generation": 4,
    }
