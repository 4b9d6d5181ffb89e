"""Channels without I/O: email composition, signatures, target checks, malformed input."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import uuid
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from smarttasks.notifications.channels import OutboundMessage, Outcome
from smarttasks.notifications.channels.email import SmtpChannel
from smarttasks.notifications.channels.eml import EmlFileChannel
from smarttasks.notifications.channels.mime import (
    Composer,
    InvalidEmail,
    parse_address,
    parse_mailbox,
)
from smarttasks.notifications.channels.targets import (
    TargetRefused,
    is_public,
    parse_url,
    resolve_target,
)
from smarttasks.notifications.channels.webhook import (
    InvalidSecret,
    WebhookChannel,
    decode_secret,
    encode_body,
    sign,
)
from smarttasks.notifications.secretrefs import SecretRef, StaticSecretResolver

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
SENDER = parse_mailbox("SmartTasks <notifications@smarttasks.local>")


def message(**fields: object) -> OutboundMessage:
    values: dict[str, object] = {
        "notification_id": uuid.UUID("00000000-0000-4000-8000-000000000001"),
        "delivery_id": uuid.uuid4(),
        "subject": "Subject",
        "text": "Body",
        "html": "<p>Body</p>",
        "to_address": "ada@example.com",
    }
    values.update(fields)
    return OutboundMessage(**values)  # type: ignore[arg-type]


def test_signature_matches_the_standard_webhooks_reference() -> None:
    body = encode_body({"title": "Café ☕", "n": 1})
    signature = sign(KEY, msg_id="msg_1", timestamp=1_700_000_000, body=body)
    reference = Webhook(SECRET).sign(
        "msg_1", datetime.fromtimestamp(1_700_000_000, UTC), body.decode()
    )
    assert signature == reference
    assert body == '{"title":"Café ☕","n":1}'.encode()


@pytest.mark.parametrize(
    "secret",
    ["", "whsec_", "whsec_!!!notbase64", "abc", "whsec_" + base64.b64encode(b"short").decode()],
)
def test_malformed_secrets_are_refused(secret: str) -> None:
    with pytest.raises(InvalidSecret):
        decode_secret(secret)


def test_compose_encodes_non_ascii_and_derives_message_id() -> None:
    composed = Composer(sender=SENDER, message_id_domain="example.org").compose(
        message(subject="Größe\r\nX-Evil: 1", to_name="Zoë\nBcc: x@y.z")
    )
    headers = composed.data.split(b"\r\n\r\n", 1)[0]
    assert headers.isascii()
    email = message_from_bytes(composed.data, policy=policy.default)
    assert email["Message-ID"] == "<00000000-0000-4000-8000-000000000001@example.org>"
    assert email["X-Evil"] is None and email["Bcc"] is None
    assert email["Subject"] == "Größe X-Evil: 1"
    assert email["To"].addresses[0].display_name == "Zoë Bcc: x@y.z"
    assert (composed.sender, composed.recipient) == (
        "notifications@smarttasks.local",
        "ada@example.com",
    )


@pytest.mark.parametrize(
    "address",
    ["", "plain", "a b@example.com", "x@y\nBcc: z@example.com", "@example.com", "a@", "a@localhost",
     "a" * 250 + "@example.com", "a@exa\x00mple.com"],
)  # fmt: skip
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidEmail):
        parse_address(address)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"to_address": None}, "no recipient"),
        ({"to_address": "not-an-address"}, "not a valid email address"),
        ({"subject": " \r\n "}, "empty subject"),
        ({"text": ""}, "empty body"),
    ],
)
async def test_email_channels_refuse_malformed_messages_permanently(
    fields: dict[str, object], reason: str, tmp_path: Path
) -> None:
    # Neither channel gets as far as the network or the disk.
    smtp = SmtpChannel(
        host="192.0.2.1", port=25, sender="n@smarttasks.local", message_id_domain="x"
    )
    eml = EmlFileChannel(tmp_path / "out", sender="n@smarttasks.local", message_id_domain="x")
    for channel in (smtp, eml):
        result = await channel.send(message(**fields))
        assert result.outcome is Outcome.PERMANENT and reason in result.detail
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False), ("169.254.169.254", False),
     ("100.64.0.1", False), ("::1", False), ("fe80::1", False), ("::ffff:127.0.0.1", False),
     ("fd00::1", False), ("2606:4700::1111", True), ("224.0.0.1", False), ("0.0.0.0", False)],
)  # fmt: skip
def test_only_public_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "http://u:p@example.com/", "http:///x", "javascript:alert(1)",
     "http://exa mple.com/", "http://example.com/\r\nX: y", "https://[::1"],
)  # fmt: skip
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        parse_url(url)


async def test_literal_private_addresses_are_refused_without_dns() -> None:
    for url in ("http://127.0.0.1:9/", "http://[::1]/", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(TargetRefused, match="non-public"):
            await resolve_target(url, allow_private=False)
    target = await resolve_target("http://127.0.0.1:9/x", allow_private=True)
    assert str(target.url) == "http://127.0.0.1:9/x" and target.host_header == "127.0.0.1:9"


async def test_webhook_channel_statuses_and_malformed_input() -> None:
    answers = iter([200, 500, 429, 404, 301, 408])
    seen: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = next(answers)
        headers = {"Retry-After": "7"} if status == 429 else {}
        return httpx.Response(status, headers=headers)

    secrets = StaticSecretResolver({"team-a/hook/key": SECRET})
    async with httpx.MockTransport(reply) as transport:
        channel = WebhookChannel(
            transport=transport, secrets=secrets, allow_private=True, clock=lambda: 1e9
        )
        ref = SecretRef("team-a", "hook", "key")
        good = message(url="http://127.0.0.1:8080/hook", secret_ref=ref, payload={"a": "ü"})
        results = [await channel.send(good) for _ in range(6)]
        assert [r.outcome for r in results] == [
            Outcome.SENT, Outcome.TEMPORARY, Outcome.TEMPORARY,
            Outcome.PERMANENT, Outcome.PERMANENT, Outcome.TEMPORARY,
        ]  # fmt: skip
        assert results[2].retry_after == 7.0
        assert "redirects are not followed" in results[4].detail
        headers = dict(seen[0].headers)
        assert headers["webhook-id"] == "00000000-0000-4000-8000-000000000001"
        assert headers["webhook-timestamp"] == "1000000000"
        expected = sign(KEY, msg_id=headers["webhook-id"], timestamp=10**9, body=seen[0].content)
        assert headers["webhook-signature"] == expected
        assert SECRET not in str(headers)

        for bad, reason in [
            (message(url=None), "no URL"),
            (message(url="file:///etc/passwd"), "http or https"),
            (message(url="http://127.0.0.1/", payload={"x": object()}), "not JSON"),
        ]:
            result = await channel.send(bad)
            assert result.outcome is Outcome.PERMANENT and reason in result.detail
        assert len(seen) == 6


def test_retry_after_dates_are_understood() -> None:
    from smarttasks.notifications.channels.webhook import _retry_after

    later = (datetime.now(UTC) + timedelta(seconds=120)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    response = httpx.Response(503, headers={"Retry-After": later})
    assert 100 < (_retry_after(response) or 0) <= 120
    assert _retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None


async def test_requests_to_one_host_are_limited_and_signed_when_sent() -> None:
    active, peak = 0, 0
    full, gate = asyncio.Event(), asyncio.Event()
    stamps: list[str] = []
    clock = iter(range(1_000, 2_000))

    async def reply(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        stamps.append(request.headers["webhook-timestamp"])
        if active == 3:
            full.set()
        await gate.wait()
        active -= 1
        return httpx.Response(204)

    async with httpx.MockTransport(reply) as transport:
        channel = WebhookChannel(transport=transport, secrets=StaticSecretResolver(),
                                 allow_private=True, per_host=3,
                                 clock=lambda: float(next(clock)))  # fmt: skip
        sends = [
            asyncio.create_task(channel.send(message(url="http://127.0.0.1:9/h")))
            for _ in range(10)
        ]
        await full.wait()
        assert active == 3
        # The other seven wait for a slot and are timestamped (signed) only once they get one.
        assert stamps == ["1000", "1001", "1002"] and next(clock) == 1003
        gate.set()
        results = await asyncio.gather(*sends)
    assert peak == 3 and {r.outcome for r in results} == {Outcome.SENT}
    assert len(stamps) == 10 and stamps[3] == "1004"
