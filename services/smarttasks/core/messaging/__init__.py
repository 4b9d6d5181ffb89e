"""The event backbone: outbox relay, RabbitMQ topology, idempotent consumers, embedded delivery.

Producers write events into their outbox in the transaction of the change
(`smarttasks.core.outbox.add_to_outbox`). In cluster mode `run_relay` publishes them to
RabbitMQ and each consuming service runs its `Consumer` definitions with
`ConsumerRunner` / `run_consumers`; in embedded mode `LocalRelay` hands the same rows to
the same consumers in process. See docs/events.md.
"""

from smarttasks.core.messaging.consumer import ConsumerRunner, run_consumers
from smarttasks.core.messaging.envelope import Envelope, MalformedMessage, UnprocessableMessage
from smarttasks.core.messaging.inbox import Outcome, Settlement, SettlementHook
from smarttasks.core.messaging.local import LocalRelay, LocalSink
from smarttasks.core.messaging.relay import (
    AmqpPublisher,
    BatchResult,
    Delivery,
    OutboxRelay,
    OutboxRow,
    Sink,
    run_relay,
)
from smarttasks.core.messaging.retry import RetryPolicy
from smarttasks.core.messaging.routing import Consumer, Handler, Route, topic_matches
from smarttasks.core.messaging.settings import MessagingSettings

__all__ = [
    "AmqpPublisher",
    "BatchResult",
    "Consumer",
    "ConsumerRunner",
    "Delivery",
    "Envelope",
    "Handler",
    "LocalRelay",
    "LocalSink",
    "MalformedMessage",
    "MessagingSettings",
    "Outcome",
    "OutboxRelay",
    "OutboxRow",
    "RetryPolicy",
    "Route",
    "Settlement",
    "SettlementHook",
    "Sink",
    "UnprocessableMessage",
    "run_consumers",
    "run_relay",
    "topic_matches",
]
