"""Exchanges and queues on RabbitMQ, declared idempotently by whoever starts first.

Per consumer `c`:

- `c`: the work queue (quorum), bound to the consumer's exchange by each pattern. A
  message delivered more than the delivery limit without an ack (the consumer died on
  it each time) is dead-lettered by the broker itself to `c.dead`.
- `c.retry.<delay>ms`: one quorum queue per retry delay. Its TTL dead-letters messages
  back to `c` (through the default exchange), so a failed message returns after the delay.
- `c.dead`: the dead-letter queue; messages keep the failure reason in their headers.

Messages no queue is bound for go to `smarttasks.unrouted` (the exchanges' alternate
exchange), bounded and kept for a day, instead of vanishing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

UNROUTED_EXCHANGE = "smarttasks.unrouted"
UNROUTED_QUEUE = "smarttasks.unrouted"
_UNROUTED_MAX_LENGTH = 10_000
_UNROUTED_TTL_MS = 24 * 3600 * 1000

_QUORUM = {"x-queue-type": "quorum"}
# Dead-lettering out of a quorum queue is at-most-once unless asked otherwise; the
# at-least-once strategy needs reject-publish overflow (the queues have no length limit).
_SAFE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


@dataclass(frozen=True)
class ConsumerQueues:
    """Names of one consumer's queues."""

    work: str
    dead: str
    retries: dict[float, str]

    def retry_queue(self, delay: float) -> str:
        return self.retries[delay]


def retry_queue_name(consumer: str, delay: float) -> str:
    # The delay is part of the name: a queue's TTL cannot change once declared, and a new
    # schedule then gets new queues while old ones drain back into the work queue.
    return f"{consumer}.retry.{round(delay * 1000)}ms"


def consumer_queues(consumer: str, delays: Iterable[float]) -> ConsumerQueues:
    return ConsumerQueues(
        work=consumer,
        dead=f"{consumer}.dead",
        retries={delay: retry_queue_name(consumer, delay) for delay in delays},
    )


async def declare_exchange(channel: AbstractChannel, name: str) -> AbstractExchange:
    """A durable topic exchange whose unroutable messages go to `smarttasks.unrouted`."""
    unrouted = await channel.declare_exchange(UNROUTED_EXCHANGE, ExchangeType.FANOUT, durable=True)
    queue = await channel.declare_queue(
        UNROUTED_QUEUE,
        durable=True,
        arguments={
            **_QUORUM,
            "x-max-length": _UNROUTED_MAX_LENGTH,
            "x-message-ttl": _UNROUTED_TTL_MS,
        },
    )
    await queue.bind(unrouted)
    return await channel.declare_exchange(
        name,
        ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": UNROUTED_EXCHANGE},
    )


async def declare_consumer_queues(
    channel: AbstractChannel,
    *,
    consumer: str,
    exchange: str,
    patterns: Sequence[str],
    retry_delays: Sequence[float],
    delivery_limit: int,
) -> AbstractQueue:
    """Declare (idempotently) and bind one consumer's queues; returns the work queue."""
    names = consumer_queues(consumer, retry_delays)
    source = await declare_exchange(channel, exchange)
    await channel.declare_queue(names.dead, durable=True, arguments=dict(_QUORUM))
    work = await channel.declare_queue(
        names.work,
        durable=True,
        arguments={
            **_QUORUM,
            **_SAFE_DEAD_LETTERING,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": names.dead,
            "x-delivery-limit": delivery_limit,
        },
    )
    for delay, name in names.retries.items():
        await channel.declare_queue(
            name,
            durable=True,
            arguments={
                **_QUORUM,
                **_SAFE_DEAD_LETTERING,
                "x-message-ttl": round(delay * 1000),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": names.work,
            },
        )
    for pattern in patterns:
        await work.bind(source, routing_key=pattern)
    return work
