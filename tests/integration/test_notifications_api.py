"""The delivery log API: visibility, filters, cursor pagination, attempts, admin retry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from smarttasks.core.http import create_app
from smarttasks.notifications.app import ROUTERS, create_notifications_app
from smarttasks.notifications.directory import Contact, InProcessUserDirectory
from tests.fixtures.api import ApiUser, UserFactory
from tests.fixtures.smtp import Harness, SmtpServer, notification, snapshot

pytestmark = pytest.mark.integration

BASE = "/api/v1/notifications"


@pytest.fixture
async def api(app: FastAPI, harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    """The notification routers in their own app, trusting the users service's tokens."""
    service = create_app(service="notifications", title="SmartTasks notifications", routers=ROUTERS)
    service.state.sessions = harness.sessions
    service.state.verifier = app.state.verifier
    transport = httpx.ASGITransport(app=service, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifications") as c:
        yield c


async def for_user(harness: Harness, user: ApiUser, **fields: object) -> uuid.UUID:
    [delivery_id] = await harness.submit(
        notification(task=snapshot(owner_id=user.id), recipients=["owner"], **fields)
    )
    return delivery_id


async def test_users_see_their_own_deliveries_and_admins_see_all(
    api: httpx.AsyncClient, harness: Harness, make_user: UserFactory
) -> None:
    alice, bob, admin = await make_user(), await make_user(), await make_user(admin=True)
    mine = await for_user(harness, alice)
    theirs = await for_user(harness, bob)

    listed = await api.get(BASE, headers=alice.headers)
    assert listed.status_code == 200, listed.text
    assert [d["id"] for d in listed.json()["items"]] == [str(mine)]
    item = listed.json()["items"][0]
    assert item["recipient"] == f"user:{alice.id}" and item["status"] == "pending"
    assert item["rule"] == {"namespace": "team-a", "name": "overdue"}

    assert (await api.get(f"{BASE}/{theirs}", headers=alice.headers)).status_code == 404
    everything = await api.get(BASE, headers=admin.headers)
    assert {str(mine), str(theirs)} <= {d["id"] for d in everything.json()["items"]}
    assert (await api.get(BASE)).status_code == 401


async def test_detail_lists_every_attempt(
    api: httpx.AsyncClient, harness: Harness, make_user: UserFactory, smtp_server: SmtpServer
) -> None:
    user = await make_user()
    smtp_server.sink.refuse_recipients_with = "451 4.7.1 Greylisted, come back later"
    delivery_id = await for_user(harness, user)
    harness.contacts[user.id] = Contact(user.id, user.email, "User")
    settings = harness.settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, max_attempts=2
    )
    async with harness.workers(settings):
        assert await harness.watcher.until(delivery_id, {"dead", "sent"}) == "dead"
    detail = await api.get(f"{BASE}/{delivery_id}", headers=user.headers)
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["status"] == "dead" and body["attempt_count"] == 2
    assert body["next_attempt_at"] is None and body["address"] == user.email
    assert [a["number"] for a in body["attempts"]] == [1, 2]
    assert all(a["outcome"] == "temporary" and a["status_code"] == 451 for a in body["attempts"])
    assert all(a["duration_ms"] >= 0 and a["started_at"] for a in body["attempts"])
    assert "Greylisted" in body["attempts"][0]["error"]


async def test_status_filter_and_cursor_pagination(
    api: httpx.AsyncClient, harness: Harness, make_user: UserFactory
) -> None:
    user = await make_user()
    pending = [await for_user(harness, user) for _ in range(5)]
    failed = await for_user(harness, user, channel="sms")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2, "status": "pending"}
        if cursor:
            params["cursor"] = cursor
        page = await api.get(BASE, headers=user.headers, params=params)
        assert page.status_code == 200, page.text
        seen += [d["id"] for d in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(i) for i in reversed(pending)]  # newest first, none twice
    only_failed = await api.get(BASE, headers=user.headers, params={"status": "failed"})
    assert [d["id"] for d in only_failed.json()["items"]] == [str(failed)]
    bad = await api.get(BASE, headers=user.headers, params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    wrong = await api.get(BASE, headers=user.headers, params={"status": "nonsense"})
    assert wrong.status_code == 422


async def test_admin_retry_requeues_a_failed_delivery(
    api: httpx.AsyncClient, harness: Harness, make_user: UserFactory
) -> None:
    user, admin = await make_user(), await make_user(admin=True)
    failed = await for_user(harness, user, channel="sms")
    pending = await for_user(harness, user)

    forbidden = await api.post(f"{BASE}/{failed}/retry", headers=user.headers)
    assert forbidden.status_code == 403
    retried = await api.post(f"{BASE}/{failed}/retry", headers=admin.headers)
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "pending" and retried.json()["next_attempt_at"]
    conflict = await api.post(f"{BASE}/{pending}/retry", headers=admin.headers)
    assert conflict.status_code == 409
    missing = await api.post(f"{BASE}/{uuid.uuid4()}/retry", headers=admin.headers)
    assert missing.status_code == 404
    delivery = await harness.delivery(failed)
    assert delivery.status == "pending" and delivery.attempts_offset == delivery.attempts


async def test_retried_dead_delivery_is_sent_with_a_fresh_budget(
    api: httpx.AsyncClient, harness: Harness, make_user: UserFactory, smtp_server: SmtpServer
) -> None:
    admin = await make_user(admin=True)
    smtp_server.sink.refuse_recipients_with = "452 4.2.2 Mailbox full"
    settings = harness.settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, max_attempts=2
    )
    async with harness.workers(settings):
        [delivery_id] = await harness.submit(notification())
        assert await harness.watcher.until(delivery_id, {"dead", "sent"}) == "dead"
        smtp_server.sink.refuse_recipients_with = None
        before = len(harness.watcher.outcomes[delivery_id])
        retried = await api.post(f"{BASE}/{delivery_id}/retry", headers=admin.headers)
        assert retried.status_code == 202
        outcome = await harness.watcher.until(delivery_id, {"dead", "sent"}, after=before)
        assert outcome == "sent"
    detail = (await api.get(f"{BASE}/{delivery_id}", headers=admin.headers)).json()
    assert [a["outcome"] for a in detail["attempts"]] == ["temporary", "temporary", "sent"]
    assert detail["sent_at"] is not None and detail["last_error"] is None


async def test_openapi_documents_the_endpoints(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    for path, method in [(BASE, "get"), (BASE + "/{delivery_id}", "get"),
                         (BASE + "/{delivery_id}/retry", "post")]:  # fmt: skip
        operation = spec["paths"][path][method]
        assert operation["summary"]
        assert "401" in operation["responses"]


async def test_service_app_runs_workers_in_its_lifespan(harness: Harness, tmp_path: Path) -> None:
    settings = harness.settings(worker_count=2, outbox_dir=str(tmp_path / "outbox"))
    service = create_notifications_app(settings, directory=InProcessUserDirectory.of({}))
    async with service.router.lifespan_context(service):
        pool = service.state.delivery_workers
        assert [w.name for w in pool.workers] == ["delivery-worker-1", "delivery-worker-2"]
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://n") as c:
            assert (await c.get("/readyz")).status_code == 200
            assert (await c.get(BASE)).status_code == 401
            metrics = (await c.get("/metrics")).text
            assert "smarttasks_notifications_sent_total" in metrics
