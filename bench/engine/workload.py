"""A realistic rule set and task traffic for the engine benchmarks, and bulk loaders.

1,000 rules across every trigger, as 200 teams and 500 users would have them: most are
scoped to a project (60%) or to one user (30%, rules made through the REST API), 8% to a
label, 2% are global; about a third carry a CEL condition. Tasks spread over 200 projects, 500
owners and 50 labels.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.engine.testing import Tasks
from smarttasks.automation.rules.compiler import CompiledRule, compile_rule
from smarttasks.core.events import TaskEvent

PROJECTS = [f"project-{i}" for i in range(200)]
LABELS = [f"label-{i}" for i in range(50)]
PRIORITIES = ["low", "normal", "high", "urgent"]
CREATED = datetime(2020, 1, 1, tzinfo=UTC)

GLOBAL_CONDITIONS = [
    'task.priority == "urgent" && task.title.contains("outage")',
    '"label-7" in task.labels && task.priority in ["high", "urgent"]',
]
CONDITIONS = [
    'task.assignee != null && !("muted" in task.labels)',
    'task.priority == "urgent" || task.title.contains("outage")',
    "size(task.labels) > 0",
    'task.status != "done"',
    'task.project != null && task.project.startsWith("project-1")',
]

TRIGGER_MIX = [
    ("TaskCreated", 15),
    ("TaskUpdated", 25),
    ("TaskAssigned", 10),
    ("TaskCompleted", 10),
    ("TaskDeleted", 5),
    ("DeadlineApproaching", 15),
    ("TaskOverdue", 15),
    ("Schedule", 5),
]


@dataclass
class Population:
    """Users, and the owner of each generated task, shared by rules and traffic."""

    owners: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(500)])


def _trigger(event: str, rnd: random.Random, *, overdue_only: bool) -> dict[str, Any]:
    trigger: dict[str, Any] = {"event": event}
    if event == "TaskUpdated" and rnd.random() < 0.5:
        trigger["fields"] = rnd.sample(["status", "priority", "assignee_id", "due_at"], 2)
    elif event == "DeadlineApproaching":
        trigger["before"] = rnd.choice(["15m", "1h", "1d"])
    elif event == "TaskOverdue" and not overdue_only and rnd.random() < 0.3:
        trigger["repeat"] = rnd.choice(["1h", "1d"])
    elif event == "Schedule":
        trigger["schedule"] = rnd.choice(["0 9 * * 1-5", "0 */4 * * *", "30 17 * * 5"])
        trigger["timeZone"] = rnd.choice(["Europe/Berlin", "America/New_York", "UTC"])
    return trigger


def rules(
    population: Population, count: int = 1000, *, seed: int = 7, overdue_only: bool = False
) -> list[CompiledRule]:
    """`count` compiled rules in the mix above (`overdue_only`: time rules all TaskOverdue)."""
    rnd = random.Random(seed)
    events = [event for event, weight in TRIGGER_MIX for _ in range(weight)]
    out: list[CompiledRule] = []
    for i in range(count):
        event = rnd.choice(events)
        if overdue_only and event == "DeadlineApproaching":
            event = "TaskOverdue"
        spec: dict[str, Any] = {
            "trigger": _trigger(event, rnd, overdue_only=overdue_only),
            "actions": [{"notify": {"channel": "email", "to": ["assignee", "owner"]}}],
        }
        labels: dict[str, str] = {}
        scope = rnd.random()
        match: dict[str, Any] = {}
        # Most rules belong to a team's project or to one user (made through the REST API);
        # a few label rules, and only 2% global (urgent tasks, or a catch-all condition).
        if scope < 0.60:
            match["projects"] = [rnd.choice(PROJECTS)]
            if rnd.random() < 0.3:
                match["priorities"] = rnd.sample(PRIORITIES, 2)
        elif scope < 0.90:
            labels["smarttasks.io/owner"] = str(rnd.choice(population.owners))
        elif scope < 0.98:
            match["labels"] = [rnd.choice(LABELS)]
        elif scope < 0.99:
            match["priorities"] = ["urgent"]
        else:
            match["condition"] = rnd.choice(GLOBAL_CONDITIONS)
        if "condition" not in match and rnd.random() < 0.33:
            match["condition"] = rnd.choice(CONDITIONS)
        if match:
            spec["match"] = match
        if rnd.random() < 0.1:
            spec["throttle"] = {"maxPerHour": rnd.choice([100, 1000])}
        out.append(
            compile_rule(
                spec,
                namespace=f"team-{i % 20}",
                name=f"rule-{i}",
                uid=str(uuid.UUID(int=rnd.getrandbits(128))),
                generation=1,
                labels=labels,
                created_at=CREATED,
            )
        )
    return out


def traffic(population: Population, count: int, *, seed: int = 11) -> list[TaskEvent]:
    """`count` task events: creations, then updates, assignments, completions, deletions."""
    rnd = random.Random(seed)
    factories = {owner: Tasks(owner) for owner in population.owners}
    live: list[tuple[Tasks, uuid.UUID]] = []
    events: list[TaskEvent] = []
    # Deadlines a day or more ahead, plus a margin: no entry (DeadlineApproaching at most a
    # day early) is due while the events are handled, as with a schedule loop keeping up.
    ahead = datetime.now(UTC) + timedelta(hours=2)
    while len(events) < count:
        roll = rnd.random()
        if roll < 0.30 or len(live) < 50:
            tasks = factories[rnd.choice(population.owners)]
            event = tasks.created(
                title=rnd.choice(["Fix the outage", "Write docs", "Call the customer"]),
                project=rnd.choice(PROJECTS),
                labels=rnd.sample(LABELS, rnd.randint(0, 3)),
                priority=rnd.choice(PRIORITIES),
                assignee_id=rnd.choice(population.owners) if rnd.random() < 0.6 else None,
                due_at=ahead + timedelta(days=rnd.randint(1, 30)),
            )
            live.append((tasks, event.data.id))
        else:
            index = rnd.randrange(len(live))
            tasks, task_id = live[index]
            if roll < 0.70:
                change: dict[str, Any] = rnd.choice(
                    [
                        {"title": f"Renamed {len(events)}"},
                        {"priority": rnd.choice(PRIORITIES)},
                        {"due_at": ahead + timedelta(days=rnd.randint(1, 30))},
                        {"status": "in_progress"},
                    ]
                )
                event = tasks.updated(task_id, **change)
            elif roll < 0.85:
                event = tasks.updated(task_id, assignee_id=rnd.choice(population.owners))
            elif roll < 0.95:
                event = tasks.updated(task_id, status="done")
                live.pop(index)
            else:
                event = tasks.deleted(task_id)
                live.pop(index)
        events.append(event)
    return events


_LOAD = text(
    """
    INSERT INTO automation.tasks
        (task_id, version, status, priority, project, labels, owner_id, assignee_id, due_at,
         snapshot)
    SELECT id, 1, 'todo', priority, project, labels, owner, assignee, due,
           jsonb_build_object(
               'id', id, 'title', 'Task ' || n, 'description', '', 'status', 'todo',
               'priority', priority, 'labels', to_jsonb(labels), 'project', project,
               'owner_id', owner, 'assignee_id', assignee, 'due_at', due,
               'completed_at', NULL, 'created_at', CAST(:created AS timestamptz),
               'updated_at', CAST(:created AS timestamptz),
               'version', 1)
    FROM (
        SELECT n, gen_random_uuid() AS id,
               (ARRAY['low', 'normal', 'high', 'urgent'])[1 + n % 4] AS priority,
               'project-' || (n % 200) AS project,
               ARRAY['label-' || (n % 50)]::varchar[] AS labels,
               (CAST(:owners AS uuid[]))[1 + n % 500] AS owner,
               (CAST(:owners AS uuid[]))[1 + (n * 7) % 500] AS assignee,
               CAST(:start AS timestamptz) + make_interval(secs => random() * :window) AS due
        FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS n
    ) AS generated
    """
)


async def load_tasks(
    sessions: async_sessionmaker[AsyncSession],
    population: Population,
    count: int,
    *,
    start: datetime,
    window: float,
    chunk: int = 100_000,
) -> None:
    """Put `count` open tasks, due uniformly in [start, start + window), into the projection.

    This is the state the engine's handler leaves after those tasks' `task.created` events;
    loading it in bulk keeps the benchmark about the schedule, not about ingesting events.
    """
    owners = [str(owner) for owner in population.owners]
    for first in range(0, count, chunk):
        async with sessions() as session:
            await session.execute(
                _LOAD,
                {
                    "owners": owners,
                    "created": CREATED,
                    "start": start,
                    "window": window,
                    "first": first,
                    "last": min(count, first + chunk) - 1,
                },
            )
            await session.commit()


__all__ = ["Population", "load_tasks", "rules", "traffic"]
