"""Delivery workers: exactly-once claiming across workers, wake-ups, leases, hostile templates."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text, update

from smarttasks.core.db import create_engine, create_sessionmaker, unit_of_work
from smarttasks.notifications.models import Delivery
from smarttasks.notifications.worker import OutcomeWriter, Recorded
from tests.fixtures.smtp import Harness, SmtpServer, notification

pytestmark = pytest.mark.integration


async def test_concurrent_workers_send_every_delivery_exactly_once(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    settings = harness.settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, worker_count=3, worker_batch_size=7
    )
    requests = [notification() for _ in range(60)]
    async with contextlib.AsyncExitStack() as stack:
        # Two "replicas" of three workers each, over the same table.
        await stack.enter_async_context(harness.workers(settings))
        await stack.enter_async_context(harness.workers(settings))
        ids = [i for r in requests for i in await harness.submit(r)]
        for delivery_id in ids:
            assert await harness.watcher.until(delivery_id, {"sent", "dead", "failed"}) == "sent"
    received = await smtp_server.sink.wait_for(60)
    assert len(received) == 60
    message_ids = sorted(r.message["Message-ID"] for r in received)
    assert message_ids == sorted(f"<{r.id}@smarttasks.local>" for r in requests)
    assert all(len(harness.watcher.outcomes[i]) == 1 for i in ids)


async def test_an_idle_worker_is_woken_by_a_new_delivery_not_by_polling(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    settings = harness.settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, worker_idle_seconds=300
    )
    async with harness.workers(settings):
        for _ in range(3):  # each one arrives while the worker sleeps with nothing due
            [delivery_id] = await harness.submit(notification())
            assert await harness.watcher.until(delivery_id, {"sent"}, timeout=5) == "sent"


async def test_a_delivery_whose_worker_died_is_sent_when_its_lease_ends(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    [delivery_id] = await harness.submit(notification())
    async with unit_of_work(harness.sessions) as session:
        # As a worker leaves it when it dies mid-send: claimed, lease about to end.
        await session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(
                status="sending",
                attempts=1,
                next_attempt_at=datetime.now(UTC) + timedelta(milliseconds=300),
            )
        )
    settings = harness.settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, worker_idle_seconds=300
    )
    async with harness.workers(settings):
        assert await harness.watcher.until(delivery_id, {"sent"}, timeout=10) == "sent"
    [attempt] = await harness.attempts(delivery_id)
    assert attempt.number == 2


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("{{ cycler.__init__.__globals__.os.environ }}", "unsafe"),
        ("{{ task.__class__ }}", "unsafe"),
        ("{{ self._TemplateReference__context }}", "unsafe"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
         "limited to 1000"),
        ("{{ task.labels.append('x') }}", "unsafe"),
        ("{{ task.title", "does not compile"),
        ("{{ task.no_such_field }}", "no_such_field"),
        ("{{ 'x' * 200000 }}", "more than 100000 characters"),
    ],
)  # fmt: skip
async def test_hostile_or_broken_templates_fail_that_delivery_only(
    harness: Harness, smtp_server: SmtpServer, template: str, reason: str
) -> None:
    settings = harness.settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)
    async with harness.workers(settings):
        [bad] = await harness.submit(notification(body=template))
        [good] = await harness.submit(notification())
        assert await harness.watcher.until(bad, {"failed", "sent", "pending"}) == "failed"
        assert await harness.watcher.until(good, {"failed", "sent", "pending"}) == "sent"
    delivery = await harness.delivery(bad)
    assert delivery.last_error is not None and reason in delivery.last_error
    assert "body template" in delivery.last_error
    [received] = await smtp_server.sink.wait_for(1)
    assert b"object" not in received.data and b"environ" not in received.data


async def test_workers_start_and_stop_cleanly_and_pick_up_what_is_due(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    settings = harness.settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)
    for _ in range(3):
        async with harness.workers(settings) as pool:
            assert len(pool.workers) == 1
    # Recorded while no worker runs: the next worker to start sends it.
    [delivery_id] = await harness.submit(notification())
    async with harness.workers(settings):
        assert await harness.watcher.until(delivery_id, {"sent"}) == "sent"


def sent_outcome(delivery_id: uuid.UUID) -> Recorded:
    now = datetime.now(UTC)
    update = {
        "id": delivery_id,
        "status": "sent",
        "address": "ada@example.com",
        "next_attempt_at": now,
        "sent_at": now,
        "last_error": None,
        "detail": "accepted",
        "updated_at": now,
    }
    attempt = {
        "delivery_id": delivery_id,
        "number": 1,
        "started_at": now,
        "duration_ms": 1.0,
        "outcome": "sent",
        "status_code": None,
        "error": None,
    }
    return update, attempt


async def test_an_outcome_writer_whose_kept_connection_died_writes_on_a_new_one(
    harness: Harness,
) -> None:
    [first] = await harness.submit(notification())
    [second] = await harness.submit(notification())
    # The writer on an engine of its own, so that its connection alone can be found and
    # ended (the shared pool keeps other connections that ran the same statement).
    name = f"outcome-writer-{uuid.uuid4().hex[:8]}"
    engine = create_engine(harness.database_url, connect_args={"application_name": name})
    writer = OutcomeWriter(create_sessionmaker(engine), observer=harness.watcher)
    try:
        await writer.write([sent_outcome(first)])
        async with unit_of_work(harness.sessions) as session:
            # As a database restart or a proxy's idle timeout leaves the kept connection.
            killed = await session.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": name},
            )
            assert killed.scalars().all() == [True]
        await writer.write([sent_outcome(second)])  # the outcome is not dropped
    finally:
        await writer.aclose()
        await engine.dispose()
    for delivery_id in (first, second):
        assert (await harness.delivery(delivery_id)).status == "sent"
        assert len(await harness.attempts(delivery_id)) == 1
