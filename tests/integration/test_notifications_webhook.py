"""Webhook delivery to a real HTTP receiver (uvicorn on 127.0.0.1), verified independently."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from smarttasks.core.events import NotificationRequested
from smarttasks.notifications.channels import OutboundMessage, Outcome
from smarttasks.notifications.channels.factory import webhook_transport
from smarttasks.notifications.channels.webhook import WebhookChannel
from smarttasks.notifications.secretrefs import SecretRef, StaticSecretResolver
from smarttasks.notifications.settings import NotificationsSettings
from tests.fixtures.smtp import Harness, notification, snapshot
from tests.fixtures.webhook import HANG, WebhookReceiver

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def webhook_request(receiver: WebhookReceiver, **overrides: Any) -> NotificationRequested:
    fields: dict[str, Any] = {
        "channel": "webhook",
        "recipients": [],
        "url": receiver.url,
        "secret_ref": {"name": "hook-secret", "key": "signing-key"},
    }
    return notification(**{**fields, **overrides})


@pytest.fixture
def signed(harness: Harness) -> Harness:
    harness.secrets.set(SecretRef("team-a", "hook-secret", "signing-key"), SECRET)
    return harness


async def test_signed_json_post_verifies_with_standard_webhooks(
    signed: Harness, webhook_receiver: WebhookReceiver
) -> None:
    request = webhook_request(
        webhook_receiver, task=snapshot(title="Café ☕ due"), subject="Due: {{ task.title }}"
    )
    async with signed.workers(signed.settings()):
        [delivery_id] = await signed.submit(request)
        assert await signed.watcher.until(delivery_id, {"sent", "failed", "pending"}) == "sent"
    [received] = await webhook_receiver.wait_for(1)
    assert received.method == "POST" and received.path == "/hooks/smarttasks"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["webhook-id"] == str(request.id)
    assert received.headers["host"] == f"127.0.0.1:{webhook_receiver.port}"
    payload = Webhook(SECRET).verify(received.body, received.headers)
    assert payload["type"] == "notification.requested"
    assert payload["data"]["subject"] == "Due: Café ☕ due"
    assert payload["data"]["task"]["title"] == "Café ☕ due"
    assert payload["data"]["rule"]["namespace"] == "team-a"
    assert "Café ☕".encode() in received.body, "the body is UTF-8, not \\u-escaped"
    assert SECRET not in json.dumps(payload) and "hook-secret" not in received.body.decode()
    with pytest.raises(WebhookVerificationError):
        other = "whsec_" + base64.b64encode(b"another key of 32 bytes.........").decode()
        Webhook(other).verify(received.body, received.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(received.body.replace(b"Caf", b"Cav"), received.headers)


async def test_server_error_is_retried_with_the_same_webhook_id(
    signed: Harness, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.script = [500, 503]
    request = webhook_request(webhook_receiver)
    async with signed.workers(signed.settings()):
        [delivery_id] = await signed.submit(request)
        assert await signed.watcher.until(delivery_id, {"sent", "dead", "failed"}) == "sent"
    received = await webhook_receiver.wait_for(3)
    assert len(received) == 3
    assert {r.headers["webhook-id"] for r in received} == {str(request.id)}
    for r in received:
        Webhook(SECRET).verify(r.body, r.headers)  # every retry is signed afresh
    attempts = await signed.attempts(delivery_id)
    assert [(a.outcome, a.status_code) for a in attempts] == [
        ("temporary", 500),
        ("temporary", 503),
        ("sent", 200),
    ]


async def test_timeout_is_retried_with_the_same_webhook_id(
    signed: Harness, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.script = [HANG]
    request = webhook_request(webhook_receiver)
    async with signed.workers(signed.settings(webhook_timeout_seconds=0.3)):
        [delivery_id] = await signed.submit(request)
        assert await signed.watcher.until(delivery_id, {"sent", "dead", "failed"}) == "sent"
    received = await webhook_receiver.wait_for(2)
    assert [r.headers["webhook-id"] for r in received] == [str(request.id)] * 2
    attempts = await signed.attempts(delivery_id)
    assert [a.outcome for a in attempts] == ["temporary", "sent"]
    assert attempts[0].error == "no response within 0.3 s"
    assert 250 <= attempts[0].duration_ms < 3000


async def test_each_outcome_is_recorded_when_its_send_completes_not_with_its_batch(
    signed: Harness, webhook_receiver: WebhookReceiver
) -> None:
    # One send of the claimed batch hangs; the others are committed meanwhile, so a worker
    # killed now would send again only the one still in flight.
    webhook_receiver.script = [HANG]
    requests = [webhook_request(webhook_receiver) for _ in range(6)]
    ids = [i for r in requests for i in await signed.submit(r)]
    settings = signed.settings(worker_count=1, webhook_timeout_seconds=60.0)
    async with signed.workers(settings):
        await webhook_receiver.wait_for(6)
        hanging = str(webhook_receiver.requests[0].headers["webhook-id"])
        others = [d for d, r in zip(ids, requests, strict=True) if str(r.id) != hanging]
        assert len(others) == 5
        for delivery_id in others:
            assert await signed.watcher.until(delivery_id, {"sent"}, timeout=10) == "sent"
        [stuck] = set(ids) - set(others)
        assert stuck not in signed.watcher.outcomes
        webhook_receiver.release.set()
        assert await signed.watcher.until(stuck, {"sent"}, timeout=10) == "sent"


@pytest.mark.parametrize(("status", "outcome"), [(400, "failed"), (410, "failed"), (302, "failed")])
async def test_client_errors_and_redirects_are_not_retried(
    signed: Harness, webhook_receiver: WebhookReceiver, status: int, outcome: str
) -> None:
    webhook_receiver.script = [status]
    webhook_receiver.location = webhook_receiver.url + "/elsewhere"
    async with signed.workers(signed.settings()):
        [delivery_id] = await signed.submit(webhook_request(webhook_receiver))
        assert await signed.watcher.until(delivery_id, {"sent", "failed", "pending"}) == outcome
    assert len(webhook_receiver.requests) == 1, "a redirect is never followed"
    [attempt] = await signed.attempts(delivery_id)
    assert attempt.status_code == status and attempt.outcome == "permanent"


async def test_429_is_retried(signed: Harness, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.script = [429, 408]
    async with signed.workers(signed.settings()):
        [delivery_id] = await signed.submit(webhook_request(webhook_receiver))
        assert await signed.watcher.until(delivery_id, {"sent", "failed", "dead"}) == "sent"
    assert len(webhook_receiver.requests) == 3


async def test_loopback_target_is_refused_by_default(
    signed: Harness, webhook_receiver: WebhookReceiver
) -> None:
    settings = signed.settings(webhook_allow_private=False)  # the production default
    localhost = webhook_receiver.url.replace("127.0.0.1", "localhost")
    async with signed.workers(settings):
        [by_ip] = await signed.submit(webhook_request(webhook_receiver))
        [by_name] = await signed.submit(
            notification(channel="webhook", recipients=[], url=localhost)
        )
        for delivery_id in (by_ip, by_name):
            assert await signed.watcher.until(delivery_id, {"sent", "failed", "pending"}) == (
                "failed"
            )
    assert webhook_receiver.requests == []
    for delivery_id in (by_ip, by_name):
        delivery = await signed.delivery(delivery_id)
        assert "non-public address 127.0.0.1" in (delivery.last_error or "")
        assert len(await signed.attempts(delivery_id)) == 1


async def test_missing_secret_is_retried_and_malformed_secret_fails(
    harness: Harness, webhook_receiver: WebhookReceiver
) -> None:
    harness.secrets.set(SecretRef("team-a", "bad", "signing-key"), "not-a-whsec-secret")
    async with harness.workers(harness.settings(max_attempts=2)):
        [missing] = await harness.submit(webhook_request(webhook_receiver))
        [bad] = await harness.submit(
            webhook_request(webhook_receiver, secret_ref={"name": "bad", "key": "signing-key"})
        )
        assert await harness.watcher.until(missing, {"dead", "failed", "sent"}) == "dead"
        assert await harness.watcher.until(bad, {"dead", "failed", "sent"}) == "failed"
    assert webhook_receiver.requests == [], "nothing is sent unsigned when a key was asked for"
    bad_delivery = await harness.delivery(bad)
    assert "whsec_" in (bad_delivery.last_error or "")
    assert "not-a-whsec-secret" not in (bad_delivery.last_error or "")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "must be http or https"),
        ("http://user:pw@example.com/hook", "credentials"),
        ("http:///nohost", "no host"),
        ("http://exa mple.com/", "spaces"),
    ],
)
async def test_malformed_urls_fail_permanently(harness: Harness, url: str, reason: str) -> None:
    async with harness.workers(harness.settings()):
        [delivery_id] = await harness.submit(
            notification(channel="webhook", recipients=[], url=url)
        )
        assert await harness.watcher.until(delivery_id, {"failed", "pending", "sent"}) == "failed"
    delivery = await harness.delivery(delivery_id)
    assert reason in (delivery.last_error or "")


async def test_unsendable_requests_are_recorded_as_failed_at_once(harness: Harness) -> None:
    too_long = notification(
        channel="webhook", recipients=[], url="https://example.com/" + "a" * 3000
    )
    no_url = notification(channel="webhook", recipients=[], url=None)
    sms = notification(channel="sms")
    for request, reason in [
        (too_long, "longer than 2048"),
        (no_url, "without a URL"),
        (sms, "unknown channel 'sms'"),
    ]:
        [delivery_id] = await harness.submit(request)
        delivery = await harness.delivery(delivery_id)
        assert delivery.status == "failed" and reason in (delivery.last_error or "")
        assert delivery.attempts == 0


class CountingReceiver:
    """A bare HTTP/1.1 server that counts connections and answers with `answer_bytes` of body
    (and a cookie, which must never come back)."""

    def __init__(self, answer_bytes: int) -> None:
        self.answer_bytes = answer_bytes
        self.connections = 0
        self.requests = 0
        self.cookies_returned = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                self.cookies_returned += b"\r\ncookie:" in head.lower()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nset-cookie: session=planted; Path=/\r\n"
                    b"content-length: %d\r\n\r\n" % self.answer_bytes + b"x" * self.answer_bytes
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> CountingReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.mark.parametrize(("answer_bytes", "reused"), [(0, True), (1000, True), (200_000, False)])
async def test_connections_are_kept_open_unless_the_answer_is_long(
    answer_bytes: int, reused: bool
) -> None:
    # The transport the service sends with (aiohttp's pool, no cookie jar).
    settings = NotificationsSettings(webhook_allow_private=True)
    async with CountingReceiver(answer_bytes) as receiver, webhook_transport(settings) as transport:
        channel = WebhookChannel(
            transport=transport, secrets=StaticSecretResolver(), allow_private=True
        )
        url = f"http://127.0.0.1:{receiver.port}/hook"
        for _ in range(5):
            result = await channel.send(
                OutboundMessage(uuid.uuid4(), uuid.uuid4(), url=url, payload={"n": 1})
            )
            assert result.outcome is Outcome.SENT, result.detail
    assert receiver.requests == 5 and receiver.cookies_returned == 0
    # A long answer is not read to its end: its connection is dropped, not reused.
    assert receiver.connections == (1 if reused else 5)
