"""Which firings task events and due schedule entries produce (pure, no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from smarttasks.automation.engine.messages import build_requests, message_id, resolve
from smarttasks.automation.engine.projection import latest_states, needs_wake
from smarttasks.automation.engine.testing import Tasks, index, rule
from smarttasks.automation.engine.throttle import over_limit
from smarttasks.automation.engine.triggers import (
    DueEntry,
    ScheduleKind,
    activated_triggers,
    event_firings,
    kind_of,
    kinds_in_use,
    occurrence,
    process_entry,
)
from smarttasks.automation.rules.model import TriggerEvent
from smarttasks.core.events import TaskSnapshot

T = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
EMAIL = {"notify": {"channel": "email", "to": ["assignee", "owner", "ops@example.com"]}}


def spec(event: str, **trigger: Any) -> dict[str, Any]:
    return {"trigger": {"event": event, **trigger}, "actions": [EMAIL]}


def test_updates_of_every_kind_activate_task_updated() -> None:
    tasks = Tasks()
    created = tasks.created()
    task_id = created.data.id
    assert activated_triggers(created) == (TriggerEvent.TASK_CREATED,)
    assert activated_triggers(tasks.updated(task_id, title="x")) == (TriggerEvent.TASK_UPDATED,)
    assigned = tasks.updated(task_id, assignee_id=uuid.uuid4())
    assert activated_triggers(assigned) == (TriggerEvent.TASK_UPDATED, TriggerEvent.TASK_ASSIGNED)
    done = tasks.updated(task_id, status="done")
    assert activated_triggers(done) == (TriggerEvent.TASK_UPDATED, TriggerEvent.TASK_COMPLETED)
    assert activated_triggers(tasks.deleted(task_id)) == (TriggerEvent.TASK_DELETED,)


def test_assignment_counts_at_creation_and_alongside_completion_but_not_unassignment() -> None:
    tasks = Tasks()
    created = tasks.created(assignee_id=uuid.uuid4())
    assert TriggerEvent.TASK_ASSIGNED in activated_triggers(created)
    task_id = created.data.id
    both = tasks.updated(task_id, status="done", assignee_id=uuid.uuid4())
    assert TriggerEvent.TASK_ASSIGNED in activated_triggers(both)
    unassigned = tasks.updated(task_id, assignee_id=None)
    assert TriggerEvent.TASK_ASSIGNED not in activated_triggers(unassigned)


def test_event_firings_use_the_event_id_as_occurrence() -> None:
    created_rule = rule(spec("TaskCreated"))
    tasks = Tasks()
    event = tasks.created()
    firings, errors = event_firings(event, index(created_rule, rule(spec("TaskDeleted"))))
    assert errors == []
    [firing] = firings
    assert firing.key.rule_uid == created_rule.uid
    assert firing.key.task_id == event.data.id
    assert firing.key.occurrence == str(event.id)


def test_rules_created_after_an_event_ignore_it() -> None:
    tasks = Tasks()
    event = tasks.created(at=T)
    later = rule(spec("TaskCreated"), created_at=T + timedelta(seconds=1))
    assert event_firings(event, index(later)) == ([], [])


def test_a_condition_failing_at_runtime_is_reported_and_other_rules_still_fire() -> None:
    tasks = Tasks()
    task_id = tasks.created(labels=["ops"]).data.id
    renamed = tasks.updated(task_id, title="Renamed")
    plain = rule(spec("TaskUpdated"))
    dividing = rule({**spec("TaskUpdated"), "match": {"condition": "1 / (task.version - 2) > 0"}})
    missing = rule({**spec("TaskUpdated"), "match": {"condition": "changes.status[1] == 'done'"}})

    firings, errors = event_firings(renamed, index(plain, dividing, missing))

    assert [f.rule for f in firings] == [plain]
    reported = {failed.uid: message for failed, message in errors}
    assert reported.keys() == {dividing.uid, missing.uid}
    assert reported[dividing.uid].startswith("condition failed: division by zero")
    assert reported[missing.uid] == "condition failed: no such key 'status'"


def test_kinds_group_rules_by_trigger_and_offset() -> None:
    a = rule(spec("DeadlineApproaching", before="1h"), created_at=T)
    b = rule(spec("DeadlineApproaching", before="60m"), created_at=T - timedelta(days=1))
    c = rule(spec("TaskOverdue"))
    d = rule(spec("TaskOverdue", repeat="1d"))
    assert kind_of(a) == kind_of(b) == ScheduleKind(TriggerEvent.DEADLINE_APPROACHING, 3600)
    assert kind_of(c) == ScheduleKind(TriggerEvent.TASK_OVERDUE, 0)
    assert kind_of(d) == ScheduleKind(TriggerEvent.TASK_OVERDUE, 86400)
    assert kind_of(rule(spec("TaskCreated"))) is None
    kinds = kinds_in_use([a, b, c, d])
    assert kinds[ScheduleKind(TriggerEvent.DEADLINE_APPROACHING, 3600)] == T - timedelta(days=1)
    assert len(kinds) == 3


def task(**fields: Any) -> TaskSnapshot:
    return Tasks().created(due_at=T, **fields).data


def entry(kind: ScheduleKind, slot: int = 0) -> DueEntry:
    return DueEntry(uuid.uuid4(), kind, T, slot, kind.first_due(T))


def test_overdue_entry_fires_matching_rules_once_and_is_spent() -> None:
    kind = ScheduleKind(TriggerEvent.TASK_OVERDUE, 0)
    urgent = rule({**spec("TaskOverdue"), "match": {"priorities": ["urgent"]}})
    anything = rule(spec("TaskOverdue"))
    other_kind = rule(spec("TaskOverdue", repeat="1h"))
    outcome = process_entry(entry(kind), task(), [urgent, anything, other_kind], T)
    assert [f.rule for f in outcome.firings] == [anything]
    assert outcome.firings[0].key.occurrence == occurrence(T)
    assert outcome.next_at is None


def test_repeat_slots_advance_and_late_processing_skips_to_the_latest_slot() -> None:
    kind = ScheduleKind(TriggerEvent.TASK_OVERDUE, 3600)
    repeating = rule(spec("TaskOverdue", repeat="1h"))
    first = process_entry(entry(kind), task(), [repeating], T)
    assert (first.slot, first.next_at) == (0, T + timedelta(hours=1))
    late = process_entry(
        entry(kind, slot=1), task(), [repeating], T + timedelta(hours=4, minutes=5)
    )
    assert (late.slot, late.next_at) == (4, T + timedelta(hours=5))
    assert late.firings[0].key.occurrence == f"{T.isoformat()}#4"
    assert late.firings[0].due_at == T + timedelta(hours=4)


def test_approaching_fires_before_the_deadline_but_not_once_it_has_passed() -> None:
    kind = ScheduleKind(TriggerEvent.DEADLINE_APPROACHING, 3600)
    soon = rule(spec("DeadlineApproaching", before="1h"))
    on_time = process_entry(entry(kind), task(), [soon], T - timedelta(minutes=59))
    assert len(on_time.firings) == 1
    assert on_time.firings[0].due_at == T - timedelta(hours=1)
    assert process_entry(entry(kind), task(), [soon], T + timedelta(seconds=1)).firings == []


def test_a_due_entry_reports_a_condition_failing_at_runtime() -> None:
    kind = ScheduleKind(TriggerEvent.TASK_OVERDUE, 0)
    dividing = rule({**spec("TaskOverdue"), "match": {"condition": "1 / (task.version - 1) > 0"}})
    plain = rule(spec("TaskOverdue"))

    outcome = process_entry(entry(kind), task(), [dividing, plain], T)

    assert [f.rule for f in outcome.firings] == [plain]
    [(failed, message)] = outcome.errors
    assert failed is dividing and "division by zero" in message


@pytest.mark.parametrize("status", ["done", "cancelled"])
def test_closed_tasks_never_fire(status: str) -> None:
    kind = ScheduleKind(TriggerEvent.TASK_OVERDUE, 0)
    closed = task(status=status)
    assert process_entry(entry(kind), closed, [rule(spec("TaskOverdue"))], T).firings == []


def test_rules_never_fire_for_moments_before_they_existed() -> None:
    kind = ScheduleKind(TriggerEvent.TASK_OVERDUE, 3600)
    newer = rule(spec("TaskOverdue", repeat="1h"), created_at=T + timedelta(minutes=1))
    later = process_entry(entry(kind, slot=3), task(), [newer], T + timedelta(hours=3))
    assert later.firings == []


def test_recipients_resolve_roles_to_user_ids_and_drop_missing_ones() -> None:
    owner, assignee = uuid.uuid4(), uuid.uuid4()
    snapshot = task(owner_id=owner, assignee_id=assignee)
    assert resolve(["assignee", "owner", "x@example.com", "owner"], snapshot) == [
        f"user:{assignee}",
        f"user:{owner}",
        "x@example.com",
    ]
    assert resolve(["assignee"], task(owner_id=owner)) == []


def test_requests_render_templates_and_have_stable_ids() -> None:
    templated = rule(
        {
            "trigger": {"event": "TaskOverdue"},
            "actions": [
                {
                    "notify": {
                        "channel": "email",
                        "to": ["owner"],
                        "subject": "Overdue: {{ task.title }}",
                        "body": "{{ task.title }} was due {{ task.due_at }}",
                    }
                }
            ],
        }
    )
    snapshot = task(title="Ship it")
    kind = ScheduleKind(TriggerEvent.TASK_OVERDUE, 0)
    [firing] = process_entry(entry(kind), snapshot, [templated], T).firings
    first, errors = build_requests(firing, T)
    again, _ = build_requests(firing, T + timedelta(minutes=1))
    assert errors == []
    assert first[0].subject == "Overdue: Ship it" and first[0].rendered
    assert "Ship it was due 2030-01-07" in first[0].body
    assert first[0].id == again[0].id == message_id(first[0].dedup_key)


def test_a_template_failing_at_render_time_is_reported_and_other_actions_still_go() -> None:
    # Renders for the compiler's sample task (it has a deadline), fails for one without.
    fragile = rule(
        {
            "trigger": {"event": "TaskCreated"},
            "actions": [
                {
                    "notify": {
                        "channel": "email",
                        "to": ["owner"],
                        "subject": "Due {{ task.due_at.strftime('%d %B') }}",
                    }
                },
                {"notify": {"channel": "webhook", "url": "https://hooks.example.com/x"}},
            ],
        }
    )
    [firing], _ = event_firings(Tasks().created(), index(fragile))
    requests, errors = build_requests(firing, T)
    assert [r.channel for r in requests] == ["webhook"]
    assert len(errors) == 1 and "action 1 (email)" in errors[0]


@pytest.mark.parametrize(
    ("limit", "counted", "new", "excess"),
    [(5, 3, 3, 0), (2, 5, 5, 3), (2, 4, 1, 1), (10, 12, 4, 2), (1, 1, 1, 0)],
)
def test_over_limit(limit: int, counted: int, new: int, excess: int) -> None:
    assert over_limit(limit, counted, new) == excess


def test_arming_wakes_the_loops_only_for_an_entry_before_every_other() -> None:
    now = T - timedelta(hours=1)
    assert needs_wake(T, None, now)  # nothing else scheduled
    assert needs_wake(T, T + timedelta(minutes=1), now)  # earlier than the earliest
    assert not needs_wake(T + timedelta(minutes=1), T, now)  # the loop wakes by T anyway
    # The earliest entry is (nearly) due: it may be firing and spent right now.
    assert needs_wake(T + timedelta(minutes=1), now + timedelta(seconds=1), now)


def test_of_several_states_of_a_task_the_newest_is_applied() -> None:
    tasks = Tasks()
    a = tasks.created().data
    b = tasks.created().data
    a2 = tasks.updated(a.id, title="Second").data
    a3 = tasks.updated(a.id, title="Third").data

    latest = latest_states([(a3, False), (b, False), (a, False), (a2, False)])

    assert latest == [(a3, False), (b, False)]
    # At equal versions the deletion wins, whichever comes first: as the version guard does.
    assert latest_states([(a3, True), (a3, False)]) == [(a3, True)]
    assert latest_states([(a3, False), (a3, True)]) == [(a3, True)]
