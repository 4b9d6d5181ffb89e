"""The event backbone's pure parts: routing, envelopes, retry schedule, names, settings, SQL."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy import MetaData, Table
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.core.messaging import Consumer, Envelope, MalformedMessage, RetryPolicy
from smarttasks.core.messaging.envelope import decode_payload, describe_error, parse_uuid
from smarttasks.core.messaging.relay import OutboxTable
from smarttasks.core.messaging.retry import Backoff
from smarttasks.core.messaging.routing import topic_matches, validate_pattern
from smarttasks.core.messaging.settings import MessagingSettings
from smarttasks.core.messaging.topology import consumer_queues, retry_queue_name
from smarttasks.core.outbox import inbox_table, outbox_notify_ddl


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("task.created", "task.created", True),
        ("task.created", "task.updated", False),
        ("task.*", "task.updated", True),
        ("task.*", "task", False),
        ("task.*", "task.updated.extra", False),
        ("task.#", "task", True),
        ("task.#", "task.updated.extra", True),
        ("#", "anything.at.all", True),
        ("#.completed", "task.completed", True),
        ("#.completed", "completed", True),
        ("*.completed", "completed", False),
        ("task.#.done", "task.a.b.done", True),
        ("task.#.done", "task.a.b.undone", False),
        ("notification.requested", "notification.requested", True),
    ],
)
def test_topic_patterns_match_like_a_topic_exchange(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


@pytest.mark.parametrize("pattern", ["", "task..created", "task.cre ated", "task.$"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="not a topic pattern"):
        validate_pattern(pattern)


async def _noop(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
    return None


async def _other(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
    return None


def test_the_first_matching_route_wins_and_patterns_are_listed_once() -> None:
    consumer = Consumer("automation.task-events", exchange="smarttasks.events", inbox=_inbox())
    consumer.add("task.completed", _noop)
    consumer.add("task.*", _other)
    consumer.add("task.*", _noop)

    completed = consumer.route("task.completed")
    updated = consumer.route("task.updated")
    assert completed is not None and completed.handler is _noop
    assert updated is not None and updated.handler is _other
    assert consumer.route("notification.requested") is None
    assert consumer.patterns == ("task.completed", "task.*")


def test_the_decorator_registers_a_schema_that_validates_the_body() -> None:
    class Ping(BaseModel):
        id: uuid.UUID
        count: int

    consumer = Consumer("pinger", exchange="smarttasks.events", inbox=_inbox())

    @consumer.on("ping.*", Ping)
    async def handle(session: AsyncSession, message: Envelope[Ping]) -> None:
        return None

    route = consumer.route("ping.sent")
    assert route is not None and route.handler is handle
    event_id = uuid.uuid4()
    assert route.parse({"id": str(event_id), "count": "3"}) == Ping(id=event_id, count=3)
    with pytest.raises(ValidationError):
        route.parse({"id": str(event_id)})


@pytest.mark.parametrize("name", ["", "Upper", "has space", "-leading", "x" * 200])
def test_consumer_names_must_be_queue_friendly(name: str) -> None:
    with pytest.raises(ValueError, match="consumer name"):
        Consumer(name, exchange="smarttasks.events", inbox=_inbox())


def test_a_body_is_decoded_to_its_id_and_object() -> None:
    event_id = uuid.uuid4()
    assert decode_payload(f'{{"id": "{event_id}", "x": [1]}}'.encode()) == (
        event_id,
        {"id": str(event_id), "x": [1]},
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'"text"', "JSON str, not an object"),
        (b"{}", "no UUID `id`"),
        (b'{"id": "nope"}', "no UUID `id`"),
        (b'{"id": 12}', "no UUID `id`"),
    ],
)
def test_unusable_bodies_are_malformed(body: bytes, message: str) -> None:
    with pytest.raises(MalformedMessage, match=message):
        decode_payload(body)


def test_errors_are_described_briefly() -> None:
    assert describe_error(ValueError("bad")) == "ValueError: bad"
    assert len(describe_error(RuntimeError("x" * 10_000))) == 2000


def test_header_uuids_are_parsed_leniently() -> None:
    value = uuid.uuid4()
    assert parse_uuid(str(value)) == value
    assert parse_uuid(str(value).encode()) == value
    assert parse_uuid("garbage") is None
    assert parse_uuid(None) is None


def test_the_retry_schedule_grows_repeats_its_last_delay_and_gives_up() -> None:
    policy = RetryPolicy.of([1, 10, 60], max_attempts=6)
    assert [policy.next_delay(attempt) for attempt in range(1, 7)] == [1, 10, 60, 60, 60, None]
    assert policy.used_delays() == (1.0, 10.0, 60.0)
    short = RetryPolicy.of([1, 10, 60], max_attempts=2)
    assert short.next_delay(1) == 1
    assert short.next_delay(2) is None
    assert short.used_delays() == (1.0,)  # no queue for delays it never uses


@pytest.mark.parametrize(("delays", "attempts"), [((), 3), ((0.0,), 3), ((1.0,), 0)])
def test_a_retry_schedule_must_make_sense(delays: tuple[float, ...], attempts: int) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(delays, attempts)


def test_backoff_grows_to_its_ceiling_with_jitter_and_resets() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    pauses = [backoff.next() for _ in range(8)]
    assert 0.05 <= pauses[0] <= 0.1
    assert all(0 < pause <= 1.0 for pause in pauses)
    assert pauses[-1] >= 0.5
    backoff.reset()
    assert backoff.next() <= 0.1


def test_queue_names_carry_the_delay_so_a_new_schedule_gets_new_queues() -> None:
    queues = consumer_queues("notifications.requests", [0.5, 10])
    assert queues.work == "notifications.requests"
    assert queues.dead == "notifications.requests.dead"
    assert queues.retry_queue(0.5) == "notifications.requests.retry.500ms"
    assert retry_queue_name("c", 300) == "c.retry.300000ms"


def test_settings_read_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTTASKS_RELAY_OUTBOXES", "tasks.outbox, automation.outbox")
    monkeypatch.setenv("SMARTTASKS_CONSUMER_RETRY_DELAYS_SECONDS", "[0.5, 5]")
    monkeypatch.setenv("SMARTTASKS_CONSUMER_PREFETCH", "32")
    settings = MessagingSettings()
    assert settings.relay_outboxes == ["tasks.outbox", "automation.outbox"]
    assert settings.consumer_retry_delays_seconds == [0.5, 5.0]
    assert settings.consumer_prefetch == 32


def test_settings_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="positive"):
        MessagingSettings(consumer_retry_delays_seconds=[1, 0])
    monkeypatch.setenv("SMARTTASKS_ENVIRONMENT", "prod")
    with pytest.raises(ValidationError, match="SMARTTASKS_AMQP_URL"):
        MessagingSettings(database_url="postgresql://db/smarttasks")
    settings = MessagingSettings(
        database_url="postgresql://db/smarttasks", amqp_url="amqps://relay:secret@mq/"
    )
    assert settings.amqp_url == "amqps://relay:secret@mq/"


@pytest.mark.parametrize("name", ["outbox", "Tasks.outbox", "tasks.outbox;drop", "a.b.c", ""])
def test_outbox_names_are_plain_schema_dot_table(name: str) -> None:
    with pytest.raises(ValueError, match="schema.table"):
        OutboxTable(name)


def test_the_claim_query_locks_in_order_and_holds_back_later_events_of_an_aggregate() -> None:
    sql = str(OutboxTable("tasks.outbox").claim)
    assert 'FROM "tasks"."outbox"' in sql
    assert "ORDER BY seq" in sql
    assert "FOR UPDATE SKIP LOCKED" in sql
    assert "o.seq < c.seq" in sql


def test_the_notify_trigger_is_created_per_statement_for_a_quoted_table() -> None:
    create_function, drop_trigger, create_trigger = outbox_notify_ddl("tasks")
    assert 'FUNCTION "tasks"."outbox_notify"()' in create_function
    assert "pg_notify('smarttasks_outbox', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME)" in (
        create_function
    )
    assert drop_trigger == 'DROP TRIGGER IF EXISTS "outbox_notify" ON "tasks"."outbox"'
    assert "AFTER INSERT" in create_trigger and "FOR EACH STATEMENT" in create_trigger
    with pytest.raises(ValueError, match="identifier"):
        outbox_notify_ddl('tasks"; drop table x; --')


def test_the_inbox_is_keyed_by_consumer_and_event() -> None:
    inbox = inbox_table(MetaData(schema="automation"))
    assert [column.name for column in inbox.primary_key.columns] == ["consumer", "event_id"]


def _inbox() -> Table:
    return inbox_table(MetaData(schema="unit"))
