"""Email delivery against a real SMTP server (aiosmtpd on 127.0.0.1) and the real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from email.header import decode_header, make_header
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from smarttasks.automation.engine.messages import resolve
from smarttasks.core.events import NotificationRequested
from smarttasks.notifications.directory import Contact, HttpUserDirectory, static_token
from tests.fixtures.api import ApiUser, UserFactory
from tests.fixtures.smtp import (
    Credentials,
    Harness,
    SmtpServer,
    SmtpSink,
    TlsFiles,
    notification,
    snapshot,
)

pytestmark = pytest.mark.integration


async def test_email_has_both_parts_encoded_headers_and_a_stable_message_id(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    owner = uuid.uuid4()
    harness.contacts[owner] = Contact(owner, "zoe@example.com", "Zoë Ångström")
    request = notification(
        task=snapshot(owner_id=owner, title="Prüfung <fällig> & 期限"),
        recipients=["owner", "ops@example.com"],
        subject="Überfällig: {{ task.title }}\r\nBcc: victim@example.com",
        body="Hallo {{ recipient.name }},\n{{ task.title }} ist überfällig.",
    )
    settings = harness.settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)
    async with harness.workers(settings):
        ids = await harness.submit(request)
        assert len(ids) == 2
        for delivery_id in ids:
            assert await harness.watcher.until(delivery_id, {"sent", "failed", "dead"}) == "sent"
    received = await smtp_server.sink.wait_for(2)
    by_rcpt = {r.rcpt_tos[0]: r for r in received}
    assert set(by_rcpt) == {"zoe@example.com", "ops@example.com"}
    for r in received:
        assert r.rcpt_tos == [r.rcpt_tos[0]], "one recipient per message: addresses stay private"

    zoe = by_rcpt["zoe@example.com"]
    raw_headers = zoe.data.split(b"\r\n\r\n", 1)[0]
    assert raw_headers.isascii(), "non-ASCII headers must be RFC 2047 encoded"
    msg = zoe.message
    # The subject's line break became a space: "Bcc" stays inside the (folded) subject.
    assert not any(line.startswith(b"Bcc") for line in raw_headers.split(b"\r\n"))
    assert msg["Bcc"] is None
    assert str(make_header(decode_header(msg["Subject"]))) == (
        "Überfällig: Prüfung <fällig> & 期限 Bcc: victim@example.com"
    )
    assert msg["To"].addresses[0].display_name == "Zoë Ångström"
    assert msg["To"].addresses[0].addr_spec == "zoe@example.com"
    assert msg["Message-ID"] == f"<{request.id}@smarttasks.local>"
    assert by_rcpt["ops@example.com"].message["Message-ID"] == msg["Message-ID"]
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    text_part = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    assert text_part is not None and html_part is not None
    assert text_part.get_content().replace("\r\n", "\n") == (
        "Hallo Zoë Ångström,\nPrüfung <fällig> & 期限 ist überfällig.\n"
    )
    html = html_part.get_content()
    assert "Prüfung &lt;fällig&gt; &amp; 期限 ist überfällig." in html
    assert "<fällig>" not in html
    for delivery_id in ids:
        delivery = await harness.delivery(delivery_id)
        assert delivery.detail is not None and delivery.detail.startswith("accepted by 127.0.0.1")


async def test_smtp_down_then_back_delivers_exactly_once(harness: Harness) -> None:
    server = SmtpServer(SmtpSink())
    await server.start()
    await server.stop()  # the port is known, nothing listens on it
    settings = harness.settings(smtp_host=server.host, smtp_port=server.port)
    try:
        async with harness.workers(settings):
            [delivery_id] = await harness.submit(notification())
            assert await harness.watcher.until(delivery_id, {"pending"}) == "pending"
            assert server.sink.messages == []
            await server.start()
            await server.sink.wait_for(1)
            assert await harness.watcher.until(delivery_id, {"sent", "dead"}) == "sent"
    finally:
        await server.stop()
    assert len(server.sink.messages) == 1
    attempts = await harness.attempts(delivery_id)
    assert [a.outcome for a in attempts][-1] == "sent"
    assert all(a.outcome == "temporary" for a in attempts[:-1]) and len(attempts) >= 2
    assert "unavailable" in (attempts[0].error or "")


async def test_kept_open_connection_dropped_by_the_server_is_reopened(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    settings = harness.settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, smtp_pool_size=1
    )
    async with harness.workers(settings):
        [first] = await harness.submit(notification())
        assert await harness.watcher.until(first, {"sent", "pending"}) == "sent"
        # The server restarts: the kept-open connection is dead, the port serves again.
        await smtp_server.stop()
        await smtp_server.start()
        [second] = await harness.submit(notification())
        assert await harness.watcher.until(second, {"sent", "pending"}) == "sent"
    assert len(await smtp_server.sink.wait_for(2)) == 2
    assert len(await harness.attempts(second)) == 1


@pytest.mark.parametrize("connections", [1, 3])
async def test_a_connection_sends_again_only_once_its_last_outcome_is_committed(
    harness: Harness, smtp_server: SmtpServer, connections: int
) -> None:
    # A worker killed after the server accepted a message sends that message again; each
    # connection waiting for its outcome to be committed bounds that to one per connection.
    committed_at_arrival: list[int] = []
    smtp_server.sink.on_message = lambda _: committed_at_arrival.append(
        sum(len(seen) for seen in harness.watcher.outcomes.values())
    )
    count = 24
    requests = [notification() for _ in range(count)]
    for request in requests:
        await harness.submit(request)
    settings = harness.settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, smtp_pool_size=connections
    )
    async with harness.workers(settings):
        await smtp_server.sink.wait_for(count)
    assert len(committed_at_arrival) == count
    for arrived, committed in enumerate(committed_at_arrival):
        unrecorded = arrived - committed  # sent earlier, outcome not yet committed
        assert unrecorded < connections, (arrived, committed_at_arrival)


async def test_smtp_550_fails_once_without_retries(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    # A NUL in the reply (PostgreSQL text cannot hold one) must not lose the outcome.
    smtp_server.sink.refuse_recipients_with = "550 5.1.1 No such user\x00here"
    settings = harness.settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)
    async with harness.workers(settings):
        [delivery_id] = await harness.submit(notification(recipients=["nobody@example.com"]))
        assert await harness.watcher.until(delivery_id, {"failed", "sent", "pending"}) == "failed"
        # Once final, nothing claims it again: the worker goes idle with this row failed.
        await harness.submit(notification())  # a second, successful batch passes through
    attempts = await harness.attempts(delivery_id)
    assert len(attempts) == 1
    assert attempts[0].outcome == "permanent" and attempts[0].status_code == 550
    delivery = await harness.delivery(delivery_id)
    assert delivery.status == "failed" and "550" in (delivery.last_error or "")
    assert "No such user\ufffdhere" in (delivery.last_error or "")


async def test_smtp_4xx_is_retried_then_dead_lettered(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    smtp_server.sink.refuse_recipients_with = "451 4.3.0 Try again later"
    settings = harness.settings(
        smtp_host=smtp_server.host, smtp_port=smtp_server.port, max_attempts=3
    )
    async with harness.workers(settings):
        [delivery_id] = await harness.submit(notification())
        assert await harness.watcher.until(delivery_id, {"dead", "failed", "sent"}) == "dead"
    attempts = await harness.attempts(delivery_id)
    assert [a.number for a in attempts] == [1, 2, 3]
    assert {a.outcome for a in attempts} == {"temporary"}
    assert all(a.duration_ms >= 0 and a.started_at is not None for a in attempts)
    delivery = await harness.delivery(delivery_id)
    assert delivery.last_error is not None and "gave up after 3 attempts" in delivery.last_error


async def test_starttls_and_auth(harness: Harness, tls_files: TlsFiles) -> None:
    server = SmtpServer(
        SmtpSink(),
        tls_context=tls_files.server_context(),
        credentials=Credentials("smarttasks", "s3cret"),
    )
    await server.start()
    try:
        settings = harness.settings(
            smtp_host=server.host,
            smtp_port=server.port,
            smtp_security="starttls",
            smtp_username="smarttasks",
            smtp_password="s3cret",
        )
        # The channel must verify the test certificate: give it the test CA.
        async with harness.workers(settings) as pool:
            channels = pool.workers[0]._dispatcher.channels  # noqa: SLF001
            channels.get("email")._tls_context = tls_files.client_context()  # type: ignore[attr-defined]  # noqa: SLF001
            [delivery_id] = await harness.submit(notification())
            assert await harness.watcher.until(delivery_id, {"sent", "pending"}) == "sent"
        [received] = await server.sink.wait_for(1)
        assert received.tls and received.login == "smarttasks"
    finally:
        await server.stop()


async def test_wrong_smtp_password_is_a_temporary_failure(
    harness: Harness, tls_files: TlsFiles
) -> None:
    server = SmtpServer(
        SmtpSink(),
        tls_context=tls_files.server_context(),
        credentials=Credentials("smarttasks", "s3cret"),
    )
    await server.start()
    try:
        settings = harness.settings(
            smtp_host=server.host,
            smtp_port=server.port,
            smtp_security="starttls",
            smtp_validate_certs=False,
            smtp_username="smarttasks",
            smtp_password="wrong",
            max_attempts=2,
        )
        async with harness.workers(settings):
            [delivery_id] = await harness.submit(notification())
            assert await harness.watcher.until(delivery_id, {"dead", "sent", "failed"}) == "dead"
        attempts = await harness.attempts(delivery_id)
        assert [a.outcome for a in attempts] == ["temporary", "temporary"]
        assert "authentication failed" in (attempts[0].error or "")
        assert "wrong" not in (attempts[0].error or "")
        assert server.sink.messages == []
    finally:
        await server.stop()


async def test_without_smtp_server_emails_are_written_as_eml_files(
    harness: Harness, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    settings = harness.settings(smtp_host="", outbox_dir=str(outbox))
    async with harness.workers(settings):
        request = notification(subject="Hello {{ task.title }}")
        [delivery_id] = await harness.submit(request)
        assert await harness.watcher.until(delivery_id, {"sent", "failed"}) == "sent"
    path = outbox / f"{delivery_id}.eml"
    assert path.read_bytes().startswith(b"Subject: Hello Renew the TLS certificate")
    delivery = await harness.delivery(delivery_id)
    assert delivery.detail == f"no SMTP server configured: written to {path}"
    assert list(outbox.iterdir()) == [path]


async def test_text_the_engine_rendered_is_sent_as_written(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    # A task titled with template syntax: the engine already rendered it into the text.
    request = notification(
        subject="Overdue: Budget {{ 6 * 7 }}", body="Budget {{ unbalanced {% x", rendered=True
    )
    settings = harness.settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)
    async with harness.workers(settings):
        [delivery_id] = await harness.submit(request)
        assert await harness.watcher.until(delivery_id, {"sent", "failed", "dead"}) == "sent"
    [received] = await smtp_server.sink.wait_for(1)
    assert received.message["Subject"] == "Overdue: Budget {{ 6 * 7 }}"
    text = received.message.get_body(("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == "Budget {{ unbalanced {% x\n"


async def test_redelivered_request_records_no_second_delivery(
    harness: Harness, smtp_server: SmtpServer
) -> None:
    request = notification()
    first = await harness.submit(request)
    second = await harness.submit(request)  # the broker delivered it again
    assert first == second and len(first) == 1
    settings = harness.settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)
    async with harness.workers(settings):
        assert await harness.watcher.until(first[0], {"sent"}) == "sent"
    assert len(smtp_server.sink.messages) == 1


FINAL = {"sent", "skipped", "failed", "dead"}


@pytest.fixture
async def users_api(app: FastAPI, make_user: UserFactory) -> AsyncIterator[HttpUserDirectory]:
    """The users service's API as the notification service reads it, with its account."""
    service_account = await make_user(admin=True, name="notifications-service")
    directory = HttpUserDirectory(
        base_url="http://testserver",
        token=static_token(service_account.access_token),
        transport=httpx.ASGITransport(app=app),
    )
    yield directory
    await directory.aclose()


async def update_me(client: httpx.AsyncClient, user: ApiUser, **changes: object) -> None:
    response = await client.patch("/api/v1/users/me", headers=user.headers, json=changes)
    assert response.status_code == 200, response.text


async def deliver(
    harness: Harness,
    smtp_server: SmtpServer,
    directory: HttpUserDirectory,
    *requests: NotificationRequested,
) -> list[list[uuid.UUID]]:
    """Submit the requests and run workers until each delivery is final; ids per request."""
    settings = harness.settings(smtp_host=smtp_server.host, smtp_port=smtp_server.port)
    async with harness.workers(settings, directory=directory):
        ids = [await harness.submit(request) for request in requests]
        for delivery_id in (i for per_request in ids for i in per_request):
            await harness.watcher.until(delivery_id, FINAL)
    return ids


async def test_recipients_resolved_through_the_users_api_and_their_preference_honoured(
    harness: Harness,
    smtp_server: SmtpServer,
    users_api: HttpUserDirectory,
    client: httpx.AsyncClient,
    make_user: UserFactory,
) -> None:
    owner = await make_user(name="owner")
    assignee = await make_user(name="assignee")
    await update_me(client, owner, email_notifications=False)
    await update_me(client, assignee, display_name="Ana Núñez")
    request = notification(
        task=snapshot(owner_id=owner.id, assignee_id=assignee.id),
        recipients=["owner", "assignee", "Assignee"],
    )
    deleted_user = notification(task=snapshot(owner_id=uuid.uuid4()), recipients=["owner"])
    ids, [gone_id] = await deliver(harness, smtp_server, users_api, request, deleted_user)
    assert len(ids) == 2  # owner and assignee; "Assignee" is the same role
    deliveries = {d.recipient_user_id: d for d in [await harness.delivery(i) for i in ids]}
    assert deliveries[owner.id].status == "skipped"
    assert deliveries[owner.id].detail == "the recipient turned email notifications off"
    assert deliveries[assignee.id].status == "sent"
    assert deliveries[assignee.id].address == assignee.email
    assert (await harness.delivery(gone_id)).status == "skipped"
    [received] = await smtp_server.sink.wait_for(1)
    assert received.rcpt_tos == [assignee.email]
    assert received.message["To"].addresses[0].display_name == "Ana Núñez"


async def test_engine_user_recipients_are_looked_up_and_delivered(
    harness: Harness,
    smtp_server: SmtpServer,
    users_api: HttpUserDirectory,
    client: httpx.AsyncClient,
    make_user: UserFactory,
) -> None:
    owner = await make_user(name="owner")
    assignee = await make_user(name="assignee")
    await update_me(client, assignee, email_notifications=False)
    task = snapshot(owner_id=owner.id, assignee_id=assignee.id)
    # Exactly what the automation engine puts in `notification.requested`.
    recipients = resolve(["owner", "assignee", "ops@example.com"], task)
    assert recipients[:2] == [f"user:{owner.id}", f"user:{assignee.id}"]
    request = notification(task=task, recipients=recipients)
    [ids] = await deliver(harness, smtp_server, users_api, request)
    deliveries = {d.recipient: d for d in [await harness.delivery(i) for i in ids]}
    assert set(deliveries) == {f"user:{owner.id}", f"user:{assignee.id}", "email:ops@example.com"}
    sent_to_owner = deliveries[f"user:{owner.id}"]
    assert sent_to_owner.status == "sent" and sent_to_owner.recipient_user_id == owner.id
    assert sent_to_owner.address == owner.email
    skipped = deliveries[f"user:{assignee.id}"]
    assert skipped.status == "skipped"
    assert skipped.detail == "the recipient turned email notifications off"
    assert deliveries["email:ops@example.com"].status == "sent"
    received = await smtp_server.sink.wait_for(2)
    assert sorted(r.rcpt_tos[0] for r in received) == sorted([owner.email, "ops@example.com"])
    to_owner = next(r for r in received if r.rcpt_tos == [owner.email])
    assert to_owner.message["To"].addresses[0].addr_spec == owner.email
    assert to_owner.message["Message-ID"] == f"<{request.id}@smarttasks.local>"
    # The owner sees the delivery as theirs in the delivery log.
    mine = await client.get("/api/v1/notifications", headers=owner.headers)
    assert mine.status_code == 200, mine.text
    assert [item["id"] for item in mine.json()["items"]] == [str(sent_to_owner.id)]


async def test_request_with_nul_characters_is_refused_for_dead_lettering(
    harness: Harness,
) -> None:
    from smarttasks.notifications.consumers import InvalidNotificationRequest

    with pytest.raises(InvalidNotificationRequest, match="NUL"):
        await harness.submit(notification(recipients=["a\x00b@example.com"]))
