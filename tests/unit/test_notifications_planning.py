"""Requests into deliveries, retry delays, and the users directory client (mock transport)."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from smarttasks.automation.engine.messages import resolve
from smarttasks.core.events import NotificationRequested, RuleRef, TaskSnapshot
from smarttasks.notifications.consumers import InvalidNotificationRequest, encode, parse_request
from smarttasks.notifications.directory import (
    DirectoryUnavailable,
    HttpUserDirectory,
    static_token,
)
from smarttasks.notifications.retries import RetryPolicy
from smarttasks.notifications.service import plan_deliveries

OWNER, ASSIGNEE = uuid.uuid4(), uuid.uuid4()


def task(**fields: object) -> TaskSnapshot:
    now = datetime.now(UTC)
    values: dict[str, object] = {"id": uuid.uuid4(), "title": "T", "status": "todo",
        "priority": "high", "owner_id": OWNER, "assignee_id": ASSIGNEE, "created_at": now,
        "updated_at": now, "version": 1}  # fmt: skip
    values.update(fields)
    return TaskSnapshot(**values)  # type: ignore[arg-type]


def request(**fields: object) -> NotificationRequested:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "channel": "email",
        "dedup_key": "k",
        "rule": RuleRef(namespace="a", name="r", uid="u", generation=1),
        "task": task(),
    }
    values.update(fields)
    return NotificationRequested(**values)  # type: ignore[arg-type]


def test_roles_and_addresses_become_distinct_recipients() -> None:
    plan = plan_deliveries(
        request(recipients=["owner", "Assignee", "ops@example.com", "OPS@example.com", "owner"])
    )
    assert [p.recipient for p in plan] == [
        f"user:{OWNER}",
        f"user:{ASSIGNEE}",
        "email:ops@example.com",
    ]
    assert [p.user_id for p in plan] == [OWNER, ASSIGNEE, None]
    assert all(p.error is None for p in plan)


def test_owner_who_is_also_assignee_gets_one_delivery() -> None:
    plan = plan_deliveries(request(task=task(assignee_id=OWNER), recipients=["owner", "assignee"]))
    assert [p.recipient for p in plan] == [f"user:{OWNER}"]


def test_user_recipients_become_user_deliveries_whatever_their_spelling() -> None:
    plan = plan_deliveries(
        request(
            recipients=[
                f"user:{OWNER}",
                f"User:{str(ASSIGNEE).upper()}",
                "owner",
                f" user:{ASSIGNEE} ",
            ]
        )  # fmt: skip
    )
    assert [(p.recipient, p.user_id, p.address, p.error) for p in plan] == [
        (f"user:{OWNER}", OWNER, None, None),
        (f"user:{ASSIGNEE}", ASSIGNEE, None, None),
    ]


def test_every_recipient_form_the_engine_emits_is_planned() -> None:
    snapshot = task()
    digest_of = task(owner_id=uuid.uuid4(), assignee_id=None)
    single = resolve(["assignee", "owner", "ops@example.com"], snapshot)
    digest = resolve(["owner"], digest_of)
    assert single == [f"user:{ASSIGNEE}", f"user:{OWNER}", "ops@example.com"]
    plan = plan_deliveries(request(task=snapshot, recipients=single))
    assert [(p.user_id, p.address, p.error) for p in plan] == [
        (ASSIGNEE, None, None),
        (OWNER, None, None),
        (None, "ops@example.com", None),
    ]
    # The same deliveries as for the roles themselves, so a message sent either way (or
    # sent again after an upgrade) records one delivery per person.
    roles = plan_deliveries(
        request(task=snapshot, recipients=["assignee", "owner", "ops@example.com"])
    )
    assert [p.recipient for p in plan] == [p.recipient for p in roles]
    [user] = plan_deliveries(request(task=None, tasks=[digest_of], recipients=digest))
    assert user.user_id == digest_of.owner_id and user.error is None


def test_digest_resolves_roles_across_its_tasks() -> None:
    other = uuid.uuid4()
    digest = request(task=None, tasks=[task(), task(owner_id=other, assignee_id=None)],
                     recipients=["owner"])  # fmt: skip
    assert {p.user_id for p in plan_deliveries(digest)} == {OWNER, other}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"recipients": []}, "no recipients"),
        ({"recipients": ["assignee"], "task": task(assignee_id=None)}, "no recipient resolved"),
        ({"channel": "sms", "recipients": ["owner"]}, "unknown channel 'sms'"),
        ({"channel": "webhook", "url": None}, "without a URL"),
        ({"recipients": ["x" * 400 + "@example.com"]}, "too long"),
        ({"recipients": ["user:ada"]}, "'user:ada' is not a user id"),
        ({"recipients": ["user:"]}, "is not a user id"),
        ({"recipients": ["user:" + "1" * 500]}, "is not a user id"),
        ({"channel": "sms", "recipients": [f"user:{OWNER}"]}, "unknown channel 'sms'"),
    ],
)
def test_unsendable_requests_plan_a_visible_failure(fields: dict[str, object], reason: str) -> None:
    [planned] = plan_deliveries(request(**fields))
    assert planned.error is not None and reason in planned.error
    assert len(planned.recipient) <= 400  # the column's size


def test_messages_parse_from_every_form_and_malformed_ones_are_refused() -> None:
    original = request(recipients=["owner"])
    body = encode(original)
    assert parse_request(body) == parse_request(body.decode()) == original
    assert parse_request(original.model_dump(mode="json")) == original
    for bad in (b"{", b"[]", {"id": "nope"}, "null"):
        with pytest.raises(InvalidNotificationRequest):
            parse_request(bad)


def test_backoff_grows_is_capped_jittered_and_respects_retry_after() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=10, factor=3, max_seconds=100, jitter=0.2)
    exact = RetryPolicy(max_attempts=5, base_seconds=10, factor=3, max_seconds=100, jitter=0)
    assert [exact.delay(n) for n in (1, 2, 3, 4)] == [10, 30, 90, 100]
    draws = {policy.delay(2, rng=random.Random(seed)) for seed in range(20)}
    assert len(draws) > 10 and all(24 <= d <= 30 for d in draws)
    assert exact.delay(1, retry_after=60) == 60 and exact.delay(1, retry_after=10**6) == 100
    assert exact.delay(10_000) == 100  # no overflow
    assert not policy.exhausted(4) and policy.exhausted(5)


async def test_http_directory_caches_and_maps_errors() -> None:
    user_id = uuid.uuid4()
    calls: list[httpx.Request] = []
    answers = {
        user_id: httpx.Response(200, json={"id": str(user_id), "email": "a@example.com",
                                           "display_name": "A", "email_notifications": False}),
    }  # fmt: skip

    async def reply(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        await asyncio.sleep(0)  # let concurrent lookups pile up on the one request
        wanted = uuid.UUID(req.url.path.rsplit("/", 1)[1])
        if wanted.int == 0:
            return httpx.Response(503)
        return answers.get(wanted, httpx.Response(404))

    directory = HttpUserDirectory(base_url="http://users", token=static_token("tok"),
                                  transport=httpx.MockTransport(reply))  # fmt: skip
    try:
        found = await asyncio.gather(*(directory.get(user_id) for _ in range(5)))
        assert {c.email_notifications if c else None for c in found} == {False}
        assert len(calls) == 1 and calls[0].headers["authorization"] == "Bearer tok"
        assert await directory.get(user_id) == found[0] and len(calls) == 1
        assert await directory.get(uuid.UUID("1" * 32)) is None
        with pytest.raises(DirectoryUnavailable, match="503"):
            await directory.get(uuid.UUID("0" * 32))
    finally:
        await directory.aclose()


def test_consumer_runner_envelopes_are_understood() -> None:
    from smarttasks.core.messaging.envelope import Envelope, UnprocessableMessage

    original = request(recipients=["owner"])
    payload = original.model_dump(mode="json")
    where = {"routing_key": "notification.requested", "exchange": "smarttasks.notifications"}
    typed = Envelope(id=original.id, event=original, payload=payload, **where)
    raw = Envelope(id=original.id, event=payload, payload=payload, **where)
    assert parse_request(typed) == parse_request(raw) == original
    with pytest.raises(UnprocessableMessage):  # dead-lettered at once by the runner
        parse_request({"id": str(original.id)})
