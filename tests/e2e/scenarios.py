"""The end-to-end scenarios, written once and run against each platform."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.e2e.platforms import (
    WAIT,
    Account,
    Platform,
    firings_of,
    log_in,
    new_account,
    projected_task,
    register,
    rest_rule,
    schedule_entries,
    until,
)
from tests.fixtures.webhook import WebhookReceiver

DELIVERED_WITHIN = 2.0
"""Seconds from a deadline to the owner's email, at most (the product's promise)."""
DEADLINE_AHEAD = 5.0
"""How far ahead the overdue scenario's deadline is: time for the task event to reach the
engine before it, on two busy cores (it takes a fraction of a second when idle)."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_task(
    client: httpx.AsyncClient, owner: Account, **fields: Any
) -> tuple[dict[str, Any], str]:
    """Create a task; returns it and its ETag."""
    response = await client.post("/api/v1/tasks", headers=owner.headers, json=fields)
    assert response.status_code == 201, response.text
    return response.json(), response.headers["ETag"]


async def patch_task(
    client: httpx.AsyncClient, owner: Account, task_id: str, etag: str, **fields: Any
) -> tuple[dict[str, Any], str]:
    response = await client.patch(
        f"/api/v1/tasks/{task_id}", headers={**owner.headers, "If-Match": etag}, json=fields
    )
    assert response.status_code == 200, response.text
    return response.json(), response.headers["ETag"]


async def deliveries_of(
    client: httpx.AsyncClient, reader: Account, task_id: str
) -> list[dict[str, Any]]:
    """The delivery log entries about one task that `reader` may see."""
    response = await client.get("/api/v1/notifications", headers=reader.headers)
    assert response.status_code == 200, response.text
    return [d for d in response.json()["items"] if d["task_id"] == task_id]


async def settled_delivery(
    client: httpx.AsyncClient, reader: Account, task_id: str
) -> dict[str, Any]:
    """The one delivery about a task, once its outcome is recorded (the worker commits it
    after the receiver answered, so the log may still say `sending` for a moment)."""

    async def settled() -> dict[str, Any] | None:
        found = await deliveries_of(client, reader, task_id)
        assert len(found) <= 1, found
        if found and found[0]["status"] not in ("pending", "sending"):
            return found[0]
        return None

    found: dict[str, Any] = await until(settled, what=f"the delivery about task {task_id}")
    return found


def iso(moment: datetime) -> str:
    return moment.isoformat()


# ----------------------------------------------------------------------------- scenario 1


async def deadline_is_scheduled(platform: Platform) -> None:
    """A person registers, logs in, adds a reminder rule and creates a task with a deadline;
    the engine learns of the task from its event and arms the reminder in its schedule, and
    moves it when the deadline moves."""
    async with platform.client() as api:
        address, password = await register(api, name="ada")
        ada = await log_in(api, address, password)
        project = unique("apollo")
        await rest_rule(
            api,
            ada,
            unique("due-soon"),
            {
                "trigger": {"event": "DeadlineApproaching", "before": "30m"},
                "match": {"projects": [project]},
                "actions": [{"notify": {"channel": "email", "to": ["owner"]}}],
            },
        )
        due = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
        task, etag = await create_task(
            api, ada, title="Renew the TLS certificate", project=project, due_at=iso(due)
        )
        task_id = uuid.UUID(task["id"])

        async def armed_for(deadline: datetime) -> Any:
            entries = await schedule_entries(platform.database, task_id)
            mine = [
                e
                for e in entries
                if e["trigger"] == "DeadlineApproaching" and e["offset_s"] == 30 * 60
            ]
            return mine if mine and mine[0]["deadline"] == deadline else None

        [entry] = await until(lambda: armed_for(due), what="the reminder armed")
        assert entry["next_at"] == due - timedelta(minutes=30)
        assert entry["slot"] == 0
        projected = await projected_task(platform.database, task_id)
        assert projected is not None
        assert (projected["version"], projected["status"], projected["due_at"]) == (1, "todo", due)

        # A moved deadline moves the reminder (the update travels the same way).
        later = due + timedelta(hours=1)
        await patch_task(api, ada, task["id"], etag, due_at=iso(later))
        [entry] = await until(lambda: armed_for(later), what="the reminder moved")
        assert entry["next_at"] == later - timedelta(minutes=30)
    platform.check_alive()


# ----------------------------------------------------------------------------- scenario 2


async def overdue_email_once(platform: Platform) -> None:
    """An overdue rule emails the task's owner within two seconds of the deadline, once; the
    delivery log and the rule's status show it."""
    async with platform.client() as api:
        owner = await new_account(api, name="owner")
        project = unique("ops")
        rule = await platform.add_rule(
            owner,
            unique("overdue"),
            {
                "description": "Email the owner when a task is overdue",
                "trigger": {"event": "TaskOverdue"},
                "match": {"projects": [project]},
                "actions": [
                    {
                        "notify": {
                            "channel": "email",
                            "to": ["owner"],
                            "subject": "Overdue: {{ task.title }}",
                            "body": '"{{ task.title }}" was due {{ task.due_at }}.',
                        }
                    }
                ],
            },
        )
        title = f"Rotate the keys {uuid.uuid4().hex[:6]}"
        due = datetime.now(UTC) + timedelta(seconds=DEADLINE_AHEAD)
        task, _ = await create_task(
            api, owner, title=title, project=project, priority="high", due_at=iso(due)
        )
        task_id = uuid.UUID(task["id"])

        async def armed() -> Any:
            entries = await schedule_entries(platform.database, task_id)
            return [e for e in entries if e["trigger"] == "TaskOverdue" and e["offset_s"] == 0]

        [entry] = await until(armed, timeout=DEADLINE_AHEAD, what="the overdue entry armed")
        assert entry["next_at"] == due
        armed_at = time.time()
        assert armed_at < due.timestamp(), "the task event reached the engine after the deadline"

        try:
            mail = await platform.wait_for_email(owner.email, timeout=DEADLINE_AHEAD + WAIT)
        except TimeoutError as exc:
            firings = await firings_of(platform.database, task_id)
            deliveries = await deliveries_of(api, owner, task["id"])
            raise AssertionError(f"{exc}; firings: {firings}; deliveries: {deliveries}") from None
        late = mail.arrived_at - due.timestamp()
        assert 0 <= late <= DELIVERED_WITHIN, f"email arrived {late:.3f}s after the deadline"
        assert [a.addr_spec for a in mail.message["To"].addresses] == [owner.email]
        assert mail.message["Subject"] == f"Overdue: {title}"
        assert title in mail.message.get_body(preferencelist=("plain",)).get_content()

        delivery = await settled_delivery(api, owner, task["id"])
        assert delivery["channel"] == "email"
        assert delivery["status"] == "sent", delivery
        assert delivery["address"] == owner.email
        assert delivery["recipient_user_id"] == str(owner.id)
        assert delivery["attempt_count"] == 1
        assert delivery["rule"]["name"] == rule.name
        assert mail.message["Message-ID"].startswith(f"<{delivery['notification_id']}@")

        status = await platform.wait_fired(rule, 1)
        assert status.fired_count == 1
        assert status.last_fired_at is not None
        assert due <= status.last_fired_at <= datetime.fromtimestamp(mail.arrived_at, UTC)

        # Once: one firing, one delivery, one email, also after the status flush.
        firings = await firings_of(platform.database, task_id)
        assert [(f["rule_name"], f["trigger"], f["throttled"]) for f in firings] == [
            (rule.name, "TaskOverdue", False)
        ]
        assert len(await deliveries_of(api, owner, task["id"])) == 1
        assert len(await platform.emails_to(owner.email)) == 1
    platform.check_alive()


# ----------------------------------------------------------------------------- scenario 3


async def completed_task_webhook(platform: Platform, receiver: WebhookReceiver) -> None:
    """A webhook rule on TaskCompleted POSTs the completed task, signed per Standard Webhooks
    with the key its secretRef names; the receiver verifies it."""
    async with platform.client() as api:
        owner = await new_account(api, name="owner")
        project = unique("crm")
        secret_ref, key = await platform.webhook_secret()
        rule = await platform.add_rule(
            owner,
            unique("completed-hook"),
            {
                "description": "POST completed tasks to the CRM",
                "trigger": {"event": "TaskCompleted"},
                "match": {"projects": [project]},
                "actions": [
                    {"notify": {"channel": "webhook", "url": receiver.url, "secretRef": secret_ref}}
                ],
            },
        )
        task, etag = await create_task(api, owner, title="Ship the order", project=project)
        assert receiver.requests == []  # created, not completed: nothing to say yet
        await patch_task(api, owner, task["id"], etag, status="done")

        try:
            [request] = await receiver.wait_for(1, timeout=WAIT)
        except TimeoutError:
            firings = await firings_of(platform.database, uuid.UUID(task["id"]))
            deliveries = await deliveries_of(api, platform.admin, task["id"])
            raise AssertionError(
                f"no webhook request within {WAIT:.0f}s; firings: {firings}; "
                f"deliveries: {deliveries}"
            ) from None
        assert request.method == "POST"
        payload = Webhook(key).verify(request.body, request.headers)
        assert payload["type"] == "notification.requested"
        data = payload["data"]
        assert data["task"]["id"] == task["id"]
        assert data["task"]["status"] == "done"
        assert data["rule"]["name"] == rule.name
        # The signature is over this body with this key: another key does not verify it.
        other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(request.body, request.headers)
        tampered = json.dumps({**payload, "type": "something.else"}).encode()
        with pytest.raises(WebhookVerificationError):
            Webhook(key).verify(tampered, request.headers)

        delivery = await settled_delivery(api, platform.admin, task["id"])
        assert delivery["channel"] == "webhook"
        assert delivery["address"] == receiver.url
        assert delivery["status"] == "sent", delivery
        assert delivery["attempt_count"] == 1
        assert delivery["notification_id"] == request.headers["webhook-id"]
        # The owner is not the recipient of a webhook: it is not in their log.
        assert await deliveries_of(api, owner, task["id"]) == []

        status = await platform.wait_fired(rule, 1)
        assert status.fired_count == 1
        assert len(receiver.requests) == 1
    platform.check_alive()
