"""The consumer runner against the real RabbitMQ: dedupe, retries, dead letters, poison messages."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import BaseModel
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from smarttasks.core.events import EVENTS_EXCHANGE
from smarttasks.core.messaging import (
    Consumer,
    ConsumerRunner,
    Envelope,
    Outcome,
    Settlement,
    SettlementHook,
    UnprocessableMessage,
)
from smarttasks.core.messaging.envelope import (
    HEADER_ATTEMPT,
    HEADER_CONSUMER,
    HEADER_DEAD_REASON,
    HEADER_ERROR,
    HEADER_ROUTING_KEY,
)
from smarttasks.core.messaging.topology import declare_consumer_queues, declare_exchange
from tests.fixtures.amqp import (
    EventSchema,
    SettlementLog,
    consuming,
    event_body,
    messaging_settings,
    recording_handler,
)

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

TIMEOUT = 30.0


class Greeting(BaseModel):
    id: uuid.UUID
    text: str


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


@pytest.fixture
def topic() -> str:
    """A routing-key prefix of this test only, so tests never see each other's messages."""
    return f"t{secrets.token_hex(4)}"


@dataclass
class Kit:
    """What a consumer test needs: the database, the broker, a schema and a topic of its own."""

    engine: AsyncEngine
    database_url: str
    amqp_url: str
    schema: EventSchema
    channel: AbstractChannel
    topic: str

    def runner(
        self, consumer: Consumer, on_settled: SettlementHook, **settings: Any
    ) -> ConsumerRunner:
        return ConsumerRunner(
            consumer,
            engine=self.engine,
            settings=messaging_settings(self.database_url, self.amqp_url, **settings),
            on_settled=on_settled,
        )


@pytest.fixture
def kit(
    engine: AsyncEngine,
    database_url: str,
    amqp_url: str,
    event_schema: EventSchema,
    channel: AbstractChannel,
    topic: str,
) -> Kit:
    return Kit(engine, database_url, amqp_url, event_schema, channel, topic)


async def publish(
    channel: AbstractChannel, routing_key: str, body: bytes | Mapping[str, Any]
) -> None:
    exchange = await declare_exchange(channel, EVENTS_EXCHANGE)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    await exchange.publish(
        aio_pika.Message(raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=routing_key,
    )


async def next_dead_letter(channel: AbstractChannel, consumer: str) -> AbstractIncomingMessage:
    """The next message of the consumer's dead-letter queue (acknowledged)."""
    queue: AbstractQueue = await channel.declare_queue(
        f"{consumer}.dead", durable=True, arguments={"x-queue-type": "quorum"}
    )
    async with asyncio.timeout(TIMEOUT), queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            return message
    raise AssertionError("the dead-letter queue iterator ended")


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    """Messages in `queue` not yet handed to a consumer."""
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def applied_count(engine: AsyncEngine, schema: EventSchema, consumer: str) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(schema.applied)
            .where(schema.applied.c.consumer == consumer)
        )
    return int(count or 0)


async def test_a_redelivered_event_is_acknowledged_without_being_applied_again(kit: Kit) -> None:
    engine, event_schema, channel, topic = kit.engine, kit.schema, kit.channel, kit.topic
    name = f"{topic}-dedupe"
    consumer = event_schema.consumer(name)
    consumer.add(f"{topic}.#", recording_handler(event_schema, name))
    log = SettlementLog()
    runner = kit.runner(consumer, log)
    event_id = uuid.uuid4()

    async with consuming(runner):
        for _ in range(3):
            await publish(channel, f"{topic}.greeted", event_body(event_id, n=1))
        await log.wait_until(lambda: len(log.items) == 3, timeout=TIMEOUT)

    assert Counter(item.outcome for item in log.items) == {
        Outcome.APPLIED: 1,
        Outcome.DUPLICATE: 2,
    }
    assert await applied_count(engine, event_schema, name) == 1


async def test_poison_messages_are_dead_lettered_with_their_reason_and_the_consumer_goes_on(
    kit: Kit,
) -> None:
    engine, event_schema, channel, topic = kit.engine, kit.schema, kit.channel, kit.topic
    name = f"{topic}-poison"
    consumer = event_schema.consumer(name)

    async def greet(session: AsyncSession, message: Envelope[Greeting]) -> None:
        await session.execute(
            event_schema.applied.insert().values(
                consumer=name, event_id=message.id, routing_key=message.routing_key
            )
        )

    async def refuse(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
        raise UnprocessableMessage("refunds are not supported")

    consumer.add(f"{topic}.greeted", greet, schema=Greeting)
    consumer.add(f"{topic}.refunded", refuse)
    log = SettlementLog()
    runner = kit.runner(consumer, log)
    good = uuid.uuid4()

    async with consuming(runner):
        await publish(channel, f"{topic}.greeted", b"\x00not json{")
        await publish(channel, f"{topic}.greeted", {"id": str(uuid.uuid4()), "txt": "typo"})
        await publish(channel, f"{topic}.greeted", {"text": "no id"})
        await publish(channel, f"{topic}.refunded", {"id": str(uuid.uuid4())})
        await publish(channel, f"{topic}.greeted", {"id": str(good), "text": "hello"})
        await log.wait_until(lambda: len(log.items) == 5, timeout=TIMEOUT)
        dead = [await next_dead_letter(channel, name) for _ in range(4)]

    by_body = {message.body: message.headers for message in dead}
    not_json = by_body[b"\x00not json{"]  # kept byte for byte
    assert not_json[HEADER_DEAD_REASON] == "malformed"
    assert "not JSON" in str(not_json[HEADER_ERROR])
    no_id = by_body[json.dumps({"text": "no id"}).encode()]
    assert no_id[HEADER_DEAD_REASON] == "malformed"
    assert "no UUID `id`" in str(no_id[HEADER_ERROR])
    [typo] = [h for body, h in by_body.items() if b"typo" in body]
    assert typo[HEADER_DEAD_REASON] == "invalid"
    assert "text" in str(typo[HEADER_ERROR])  # pydantic names the missing field
    [refund] = [h for h in by_body.values() if h[HEADER_DEAD_REASON] == "rejected"]
    assert "refunds are not supported" in str(refund[HEADER_ERROR])
    assert refund[HEADER_ROUTING_KEY] == f"{topic}.refunded"
    assert {headers[HEADER_CONSUMER] for headers in by_body.values()} == {name}
    # Nothing was retried: none of these can succeed later. The good one still went through.
    assert log.counts[Outcome.RETRIED] == 0
    assert log.applied == {good}
    assert await applied_count(engine, event_schema, name) == 1


async def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered(kit: Kit) -> None:
    engine, event_schema, channel, topic = kit.engine, kit.schema, kit.channel, kit.topic
    name = f"{topic}-failing"
    consumer = event_schema.consumer(name)
    record = recording_handler(event_schema, name)
    attempts: dict[int, list[float]] = {}
    loop = asyncio.get_running_loop()

    async def fail_for_odd(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
        attempts.setdefault(message.event["n"], []).append(loop.time())
        if message.event["n"] % 2:
            raise RuntimeError(f"cannot handle {message.event['n']}")
        await record(session, message)

    consumer.add(f"{topic}.#", fail_for_odd)
    log = SettlementLog()
    runner = kit.runner(
        consumer, log, consumer_retry_delays_seconds=[0.2, 0.5], consumer_max_attempts=3
    )

    async with consuming(runner):
        await publish(channel, f"{topic}.counted", event_body(uuid.uuid4(), n=1))
        await publish(channel, f"{topic}.counted", event_body(uuid.uuid4(), n=2))
        dead = await next_dead_letter(channel, name)
        await log.wait_until(lambda: log.counts[Outcome.APPLIED] == 1, timeout=TIMEOUT)

    assert dead.headers[HEADER_DEAD_REASON] == "max_attempts"
    assert dead.headers[HEADER_ATTEMPT] == 3
    assert dead.headers[HEADER_ERROR] == "RuntimeError: cannot handle 1"
    assert json.loads(dead.body)["n"] == 1
    # Three attempts, spaced by the retry queues' delays (0.2 s, then 0.5 s).
    first, second, third = attempts[1]
    assert second - first >= 0.2
    assert third - second >= 0.5
    assert [item.attempt for item in log.of(Outcome.RETRIED)] == [1, 2]
    # The healthy message was not held up by the failing one.
    assert len(attempts[2]) == 1
    assert await applied_count(engine, event_schema, name) == 1


async def test_a_handler_that_recovers_applies_the_event_once(kit: Kit) -> None:
    engine, event_schema, channel, topic = kit.engine, kit.schema, kit.channel, kit.topic
    name = f"{topic}-flaky"
    consumer = event_schema.consumer(name)
    record = recording_handler(event_schema, name)
    failures_left = 2

    async def flaky(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
        nonlocal failures_left
        await record(session, message)  # rolled back with the failure below
        if failures_left:
            failures_left -= 1
            raise ConnectionResetError("the mail server hung up")

    consumer.add(f"{topic}.#", flaky)
    log = SettlementLog()
    runner = kit.runner(consumer, log, consumer_max_attempts=5)
    event_id = uuid.uuid4()

    async with consuming(runner):
        await publish(channel, f"{topic}.sent", event_body(event_id, n=7))
        await log.wait_until(lambda: log.counts[Outcome.APPLIED] == 1, timeout=TIMEOUT)

    assert [(item.outcome, item.attempt) for item in log.items] == [
        (Outcome.RETRIED, 1),
        (Outcome.RETRIED, 2),
        (Outcome.APPLIED, 3),
    ]
    assert await applied_count(engine, event_schema, name) == 1


async def test_queues_are_declared_idempotently_and_a_second_consumer_shares_the_work(
    kit: Kit,
) -> None:
    engine, event_schema, channel, topic = kit.engine, kit.schema, kit.channel, kit.topic
    name = f"{topic}-shared"
    consumer = event_schema.consumer(name)
    consumer.add(f"{topic}.#", recording_handler(event_schema, name))
    log = SettlementLog()
    per_runner: Counter[str] = Counter()

    def counted(runner: str) -> SettlementHook:
        def settle(settlement: Settlement) -> None:
            per_runner[runner] += 1
            log(settlement)

        return settle

    first = kit.runner(consumer, counted("a"), consumer_prefetch=1)
    second = kit.runner(consumer, counted("b"), consumer_prefetch=1)

    async with consuming(first), consuming(second):
        for n in range(20):
            await publish(channel, f"{topic}.shared", event_body(uuid.uuid4(), n=n))
        await log.wait_until(lambda: log.counts[Outcome.APPLIED] == 20, timeout=TIMEOUT)

    assert per_runner["a"] > 0
    assert per_runner["b"] > 0
    assert await applied_count(engine, event_schema, name) == 20


async def test_a_message_that_keeps_killing_its_consumer_is_dead_lettered_by_the_broker(
    channel: AbstractChannel, topic: str
) -> None:
    """A process that dies on a message never acks it; the delivery limit ends the loop."""
    name = f"{topic}-crashing"
    work = await declare_consumer_queues(
        channel,
        consumer=name,
        exchange=EVENTS_EXCHANGE,
        patterns=[f"{topic}.#"],
        retry_delays=[1.0],
        delivery_limit=2,
    )
    await publish(channel, f"{topic}.fatal", event_body(uuid.uuid4()))
    deliveries = 0
    async with asyncio.timeout(TIMEOUT), work.iterator() as messages:
        async for message in messages:
            deliveries += 1
            await message.nack(requeue=True)  # what a dying consumer's channel amounts to
            if deliveries == 3:
                break

    dead = await next_dead_letter(channel, name)
    deaths = dead.headers["x-death"]
    assert isinstance(deaths, list)
    death = deaths[0]
    assert isinstance(death, dict)
    assert (death["reason"], death["queue"]) == ("delivery_limit", name)


async def test_waiting_messages_share_a_transaction_and_a_failure_unbatches_only_its_batch(
    kit: Kit,
) -> None:
    engine, event_schema, channel, topic = kit.engine, kit.schema, kit.channel, kit.topic
    name = f"{topic}-batch"
    consumer = event_schema.consumer(name)
    released = asyncio.Event()
    poison = uuid.uuid4()

    async def record(session: AsyncSession, message: Envelope[Mapping[str, Any]]) -> None:
        if not released.is_set():
            await released.wait()  # hold the lane while the rest queue up behind it
        if message.id == poison:
            raise UnprocessableMessage("cannot greet this one")
        txid = await session.scalar(text("SELECT txid_current()"))
        await session.execute(
            event_schema.applied.insert().values(
                consumer=name, event_id=message.id, n=txid, routing_key=message.routing_key
            )
        )

    consumer.add(f"{topic}.#", record)
    log = SettlementLog()
    runner = kit.runner(consumer, log, consumer_concurrency=1, consumer_batch_size=10)
    ids = [uuid.uuid4() for _ in range(40)]
    ids[4] = poison  # in the second batch: it rolls back and goes one by one
    ids[30] = ids[29]  # a redelivery inside a batch

    async with consuming(runner):
        for event_id in ids:
            await publish(channel, f"{topic}.greeted", event_body(event_id))
        # Every message is with the consumer (none ready in the queue) before the first ends.
        async with asyncio.timeout(TIMEOUT):
            while (
                await channel.declare_queue(name, passive=True)
            ).declaration_result.message_count:
                await asyncio.sleep(0.05)
        released.set()
        await log.wait_until(lambda: len(log.items) == len(ids), timeout=TIMEOUT)

    good = set(ids) - {poison}
    assert log.applied == good
    assert log.counts[Outcome.DEAD_LETTERED] == 1 and log.counts[Outcome.DUPLICATE] == 1
    assert log.counts[Outcome.RETRIED] == 0
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(event_schema.applied.c.event_id, event_schema.applied.c.n).where(
                    event_schema.applied.c.consumer == name
                )
            )
        ).all()
    assert sorted(str(r.event_id) for r in rows) == sorted(str(i) for i in good)
    # Fewer transactions than events: the batches without the poison committed together.
    assert len({r.n for r in rows}) < len(rows)
