"""Fault drill: ten thousand deadlines fall due within two minutes while the operator, the
notification service and the relay are each killed (SIGKILL) and restarted, and RabbitMQ is
stopped and started; every overdue email still arrives, with at most as many duplicates as
there were faults (see MAX_DUPLICATES).

Each fault waits until the engine has fired a share of the tasks, so it strikes while
deadlines fall due and deliveries flow. The drill runs on a cluster of its own, before the
other scenarios of the package (see `conftest.py`): its faults must not reach their shared
cluster, and it needs the machine to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bench.load.stats import percentile
from sqlalchemy import text

from smarttasks.gateway.embedded_db import EmbeddedPostgres
from smarttasks.notifications.settings import NotificationsSettings
from tests.e2e.cluster import ClusterPlatform, running_cluster
from tests.e2e.faults import Arrival, CountingSink, create_in_bulk
from tests.e2e.platforms import WAIT, new_account, until
from tests.fixtures.amqp import RabbitNode
from tests.fixtures.k8s import ControlPlane

DRILL_TIMEOUT = 390.0
"""Hard stop of the whole drill, cluster start included. On two cores shared with other work
it takes four to six minutes, most of it the notification service working off its backlog
after the window; its own waits give up before this."""
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.k8s,
    pytest.mark.rabbitmq,
    pytest.mark.timeout(DRILL_TIMEOUT),
]

TASKS = 10_000
WINDOW = 120.0
"""Seconds between the first and the last deadline."""
LEAD = 20.0
"""Seconds from the start of task creation to the first deadline. The tasks are created in
deadline order, about 500 a second, far ahead of the 83 a second falling due. The engine
learns of them from their events in that order, which on two shared cores takes it one to
three minutes while it already fires: the last tasks of the window may fire late."""
OWNERS = 5
"""A few owners, so that the notification service's user lookups are mostly cached."""
PER_TRANSACTION = 500
FAULTS = (
    (0.15, "notifications"),
    (0.35, "relay"),
    (0.55, "rabbitmq"),
    (0.75, "operator"),
)
"""What fails, once each, when the engine has fired that share of the tasks (or that share
of the deadlines has passed): while deadlines fall due and deliveries flow."""
SMTP_CONNECTIONS = int(NotificationsSettings.model_fields["smtp_pool_size"].default)
MAX_DUPLICATES = len(FAULTS)
"""At most one duplicate email per crash, as the drill's brief asks. The relay's, the
operator's and RabbitMQ's faults cost none (redeliveries meet the consumers' inboxes and
the engine's firing records). The notification service's kill costs at most one per SMTP
connection: a connection sends its next message only once the last one's outcome is
committed, so each has at most one message the server accepted and the killed worker had
not recorded, which is sent again. The exact count and when each duplicated email first
arrived are printed and recorded."""
assert SMTP_CONNECTIONS <= MAX_DUPLICATES, "more connections than the drill's bound allows"
BROKER = "rabbitmq"
LEASE = float(NotificationsSettings.model_fields["worker_lease_seconds"].default)
"""Deliveries a killed worker had claimed are sent again when their lease ends."""
SETTLE = 150.0
"""Allowance for the last deliveries after the last deadline or the end of the killed
worker's lease, whichever is later. On two cores shared with other work the notification
service sends 40 to 60 emails a second while it also takes requests, fewer than fall due
(83 a second), so the backlog takes up to two minutes after the window."""
POLL_SQL = 0.5
SUBJECT = re.compile(r"^Overdue (?P<task>[0-9a-f-]{36})$")


class TooManyDuplicates(AssertionError):
    """More emails were sent twice than the faults can explain (see MAX_DUPLICATES)."""


@dataclass
class Fault:
    """One fault as it happened; times in seconds after the first deadline."""

    target: str
    at: float
    emails_before: int
    back_after: float
    """Seconds from the kill (or the broker's stop) until it was ready again."""


@pytest.fixture
async def cluster(
    postgres: EmbeddedPostgres,
    rabbitmq: RabbitNode,
    k8s: ControlPlane,
    automationrule_crd: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ClusterPlatform]:
    """A cluster of its own, with an SMTP sink made for ten thousand messages."""
    async with running_cluster(
        server_url=postgres.url,
        rabbitmq=rabbitmq,
        k8s=k8s,
        workdir=tmp_path_factory.mktemp("e2e-faults"),
        sink=CountingSink(),
    ) as platform:
        try:
            yield platform
        finally:
            # The node is the session's: whatever happened, leave it running.
            if not rabbitmq.running:
                await asyncio.to_thread(rabbitmq.start)


async def count_sql(
    cluster: ClusterPlatform, query: str, **params: object
) -> list[tuple[Any, ...]]:
    async with cluster.database.connect() as conn:
        return [tuple(row) for row in (await conn.execute(text(query), params)).all()]


async def pipeline_state(cluster: ClusterPlatform, sink: CountingSink) -> dict[str, object]:
    """Where the drill's work stands, stage by stage (for failure messages)."""
    [row] = await count_sql(
        cluster,
        """
        SELECT (SELECT count(*) FROM tasks.outbox WHERE sent_at IS NULL),
               (SELECT count(*) FROM automation.inbox),
               (SELECT count(*) FROM automation.tasks),
               (SELECT count(*) FROM automation.firings),
               (SELECT count(*) FROM automation.outbox WHERE sent_at IS NULL),
               (SELECT count(*) FROM notifications.inbox),
               (SELECT count(*) FROM notifications.deliveries WHERE status = 'sent')
        """,
    )
    stages = (
        "task_events_unsent",
        "task_events_applied",
        "tasks_projected",
        "firings",
        "requests_unsent",
        "requests_recorded",
        "deliveries_sent",
    )
    return dict(zip(stages, row, strict=True)) | {"emails": len(sink.received)}


@contextlib.asynccontextmanager
async def explain_timeouts(cluster: ClusterPlatform, sink: CountingSink) -> AsyncIterator[None]:
    """A wait that times out says where the work stands."""
    try:
        yield
    except TimeoutError as exc:
        state = await pipeline_state(cluster, sink)
        raise AssertionError(f"{exc}; pipeline: {state}") from None


async def test_every_overdue_email_arrives_through_crashes_and_a_broker_restart(
    cluster: ClusterPlatform,
    rabbitmq: RabbitNode,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = cluster.smtp
    assert isinstance(sink, CountingSink)
    suffix = uuid.uuid4().hex[:8]
    project = f"drill-{suffix}"
    async with cluster.client() as api:
        owners = await asyncio.gather(*(new_account(api, name=f"owner{n}") for n in range(OWNERS)))
    rule = await cluster.add_rule(
        owners[0],
        f"drill-overdue-{suffix}",
        {
            "description": "Email the owner when a drill task is overdue",
            "trigger": {"event": "TaskOverdue"},
            "match": {"projects": [project]},
            "actions": [
                {
                    "notify": {
                        "channel": "email",
                        "to": ["owner"],
                        "subject": "Overdue {{ task.id }}",
                        "body": '"{{ task.title }}" was due {{ task.due_at }}.',
                    }
                }
            ],
        },
    )

    # The tasks, deadlines evenly spread over the window, the earliest created first.
    creating = time.time()
    first = datetime.now(UTC) + timedelta(seconds=LEAD)
    deadlines = [first + timedelta(seconds=WINDOW * n / (TASKS - 1)) for n in range(TASKS)]
    created = await create_in_bulk(
        cluster.database.url.render_as_string(hide_password=False),
        owners,
        deadlines,
        project=project,
        per_transaction=PER_TRANSACTION,
    )
    created_in = time.time() - creating
    assert len(created) == TASKS
    tasks = {str(c.id): c for c in created}
    first_due, last_due = first.timestamp(), deadlines[-1].timestamp()

    async with explain_timeouts(cluster, sink):
        # The faults, one at a time, each while deadlines fall due and deliveries flow.
        faults: list[Fault] = []
        for share, target in FAULTS:
            threshold, falls_due = int(share * TASKS), first_due + share * WINDOW

            async def struck_now(threshold: int = threshold, falls_due: float = falls_due) -> bool:
                # Once the engine fired that share, or at the latest when it fell due (an
                # engine lagging behind its deadlines does not move the faults out of them).
                if time.time() >= falls_due:
                    return True
                [(count,)] = await count_sql(cluster, "SELECT count(*) FROM automation.firings")
                return int(count) >= threshold

            await until(
                struck_now,
                timeout=max(falls_due - time.time(), 0.0) + WAIT,
                what=f"the moment to fail {target}",
                interval=POLL_SQL,
            )
            struck, emails_before = time.time(), len(sink.received)
            if target == BROKER:
                await asyncio.to_thread(rabbitmq.stop)
                await asyncio.to_thread(rabbitmq.start)
            else:
                await cluster.kill(target)
                await cluster.restart(target)
            faults.append(Fault(target, struck - first_due, emails_before, time.time() - struck))
        killed_workers_at = next(f.at for f in faults if f.target == "notifications") + first_due

        # Every notification arrives; the killed worker's leased deliveries come back last.
        settle_by = max(last_due, killed_workers_at + LEASE) + SETTLE
        await sink.wait_distinct(
            TASKS, timeout=max(settle_by - time.time(), 0.0), what="distinct emails"
        )

        async def settled() -> list[tuple[Any, ...]] | None:
            rows = await count_sql(
                cluster,
                "SELECT status, count(*) FROM notifications.deliveries WHERE rule_name = :rule "
                "GROUP BY status ORDER BY status",
                rule=rule.name,
            )
            return rows if rows == [("sent", TASKS)] else None

        # Once every delivery is recorded `sent`, nothing more is sent: the count is final.
        await until(
            settled,
            timeout=max(settle_by - time.time(), 0.0) + WAIT,
            what="every delivery sent",
            interval=POLL_SQL,
        )
    cluster.check_alive()

    [(firings, fired_tasks)] = await count_sql(
        cluster,
        "SELECT count(*), count(DISTINCT task_id) FROM automation.firings WHERE rule_name = :rule",
        rule=rule.name,
    )
    # When the engine knew the last task, and how late it fired (it fires on time if it
    # keeps up, and late what fell due while it was down).
    [(projected, fired_late_p50, fired_late_p99, fired_late_max)] = await count_sql(
        cluster,
        """
        SELECT (SELECT EXTRACT(EPOCH FROM max(updated_at)) FROM automation.tasks
                WHERE project = :project),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY late),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY late),
               max(late)
        FROM (SELECT EXTRACT(EPOCH FROM fired_at - due_at) AS late FROM automation.firings
              WHERE rule_name = :rule) AS f
        """,
        project=project,
        rule=rule.name,
    )
    [(resent,)] = await count_sql(
        cluster,
        "SELECT count(*) FROM notifications.deliveries WHERE rule_name = :rule AND attempts > 1",
        rule=rule.name,
    )

    by_task: dict[str, list[Arrival]] = defaultdict(list)
    for arrival in sink.received:
        match = SUBJECT.match(arrival.subject)
        by_task[match["task"] if match else arrival.subject].append(arrival)
    duplicates = len(sink.received) - len(by_task)
    lateness = [
        min(a.arrived_at for a in arrivals) - tasks[task_id].due_at
        for task_id, arrivals in by_task.items()
        if task_id in tasks
    ]
    ordered_lateness = sorted(lateness)
    last_email = max(a.arrived_at for a in sink.received)
    per_10s = [0] * (int((last_email - first_due) // 10) + 1)
    for arrival in sink.received:
        per_10s[max(int((arrival.arrived_at - first_due) // 10), 0)] += 1
    figures = {
        "tasks": TASKS,
        "window_s": WINDOW,
        "created_in_s": round(created_in, 1),
        "last_task_projected_s_after_first_deadline": round(float(projected) - first_due, 1),
        "firing_late_p50_s": round(float(fired_late_p50), 2),
        "firing_late_p99_s": round(float(fired_late_p99), 2),
        "firing_late_max_s": round(float(fired_late_max), 2),
        "faults": [
            asdict(f) | {"at": round(f.at, 1), "back_after": round(f.back_after, 1)} for f in faults
        ],
        "emails": len(sink.received),
        "duplicates": duplicates,
        "duplicates_first_sent_s_from_first_deadline": sorted(
            round(min(a.arrived_at for a in arrivals) - first_due, 1)
            for arrivals in by_task.values()
            if len(arrivals) > 1
        ),
        "deliveries_attempted_more_than_once": resent,
        "last_email_after_last_deadline_s": round(last_email - last_due, 2),
        "lateness_p50_s": round(percentile(ordered_lateness, 50), 2),
        "lateness_p99_s": round(percentile(ordered_lateness, 99), 2),
        "lateness_max_s": round(max(lateness), 2),
        "later_than_2s": sum(1 for late in lateness if late > 2.0),
        "emails_per_10s_from_first_deadline": per_10s,
    }
    record_property("fault_drill", figures)
    with capsys.disabled():  # on the terminal, whatever the outcome
        print(f"\nfault drill: {json.dumps(figures)}")

    # One firing per task, whatever was redelivered or claimed again.
    assert (firings, fired_tasks) == (TASKS, TASKS)
    # Every task's email reached its owner, and nothing else was sent; copies of an email
    # are the same message (same Message-ID), not a second notification.
    assert by_task.keys() == tasks.keys(), (
        f"lost: {len(tasks.keys() - by_task.keys())}, "
        f"strays: {sorted(by_task.keys() - tasks.keys())[:5]}"
    )
    for task_id, arrivals in by_task.items():
        assert {a.recipients for a in arrivals} == {(tasks[task_id].owner,)}, arrivals
        assert len({a.message_id for a in arrivals}) == 1, arrivals
    if duplicates > MAX_DUPLICATES:
        raise TooManyDuplicates(
            f"{duplicates} duplicate emails for {len(FAULTS)} faults "
            f"(at most {MAX_DUPLICATES}: see MAX_DUPLICATES)"
        )
