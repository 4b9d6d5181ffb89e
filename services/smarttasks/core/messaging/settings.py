"""Settings of the event backbone: broker, relay and consumer tuning (env prefix `SMARTTASKS_`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from smarttasks.core.settings import Environment, ServiceSettings

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _split(value: Any) -> Any:
    # Lists come from the environment as "a,b,c" (JSON lists are accepted too).
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            import json

            return json.loads(stripped)
        return [part.strip() for part in stripped.split(",") if part.strip()]
    return value


class MessagingSettings(ServiceSettings):
    """How events leave a service's outbox and how consumers take them in.

    Every field can be set as `SMARTTASKS_<FIELD>`; lists as comma-separated values.
    """

    amqp_url: str = Field(
        default=DEFAULT_AMQP_URL,
        description=(
            "RabbitMQ URL (amqp:// or amqps://). Cluster mode only; embedded mode has no broker."
        ),
    )
    amqp_reconnect_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description=(
            "Pause between reconnection attempts after the broker went away, in seconds. "
            "Short, because an outage of the broker stalls every event until it is back."
        ),
    )
    relay_outboxes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["tasks.outbox", "automation.outbox"],
        description=(
            "Outbox tables the relay serves, as schema.table. One relay process can serve "
            "every producing service; each table gets its own loop."
        ),
    )
    relay_batch_size: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description=(
            "Rows claimed per transaction. Their publishes are pipelined and confirmed "
            "together, so bigger batches raise throughput and the duplicates a crash can cause."
        ),
    )
    relay_idle_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Longest sleep of an idle relay, in seconds. Relays wake on the NOTIFY producers "
            "send after their commits; this is the safety net for a notification lost in a "
            "reconnect."
        ),
    )
    relay_confirm_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long to wait for the broker to confirm a publish before giving up.",
    )
    relay_prune_after_seconds: float = Field(
        default=24 * 3600,
        ge=0,
        description="Age after which sent outbox rows are deleted, in seconds (default 1 day).",
    )
    relay_prune_interval_seconds: float = Field(
        default=300,
        gt=0,
        description="How often sent rows are pruned and the backlog gauge refreshed, in seconds.",
    )
    consumer_prefetch: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description=(
            "Unacknowledged messages the broker hands one consumer at a time. Bounds memory "
            "and how many messages a crash returns to the queue."
        ),
    )
    consumer_concurrency: int = Field(
        default=2,
        ge=1,
        le=256,
        description=(
            "Lanes: transactions one consumer runs at once, each with its own database "
            "session. Events of one aggregate always share a lane, so they are applied in "
            "order. A busy lane applies the messages waiting in it together, so a few lanes "
            "keep up by batching; more lanes help only when a transaction mostly waits (a "
            "distant database), and an idle lane takes each message alone, which costs "
            "more CPU per event."
        ),
    )
    consumer_batch_size: int = Field(
        default=20,
        ge=1,
        le=500,
        description=(
            "Messages already waiting in one lane that are applied in one transaction (each "
            "with its inbox row, acknowledged after the commit). If one of them fails, the "
            "transaction rolls back and they are applied one by one. 1 turns batching off."
        ),
    )
    consumer_retry_delays_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [1.0, 10.0, 60.0, 300.0],
        description=(
            "Delay before each retry of a failed message, in seconds, growing; the last one "
            "repeats. Each delay is a retry queue whose TTL returns messages to the work queue."
        ),
    )
    consumer_max_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description=(
            "Attempts (the first one included) before a failing message goes to the "
            "dead-letter queue with the last error in its headers."
        ),
    )
    consumer_delivery_limit: int = Field(
        default=20,
        ge=1,
        description=(
            "Deliveries without an acknowledgement (the consumer process died on it) before "
            "the broker dead-letters a message itself; ends crash loops on a poison message."
        ),
    )
    inbox_retention_seconds: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        description=(
            "How long applied event ids are remembered for deduplication, in seconds. Must "
            "exceed the longest time a message can spend in queues and retries."
        ),
    )
    metrics_port: int = Field(
        default=9102,
        ge=0,
        le=65535,
        description=(
            "Port of the Prometheus endpoint of the processes that serve no API (relay, "
            "operator); 0 turns it off."
        ),
    )

    _split_lists = field_validator(
        "relay_outboxes", "consumer_retry_delays_seconds", mode="before"
    )(_split)

    @field_validator("consumer_retry_delays_seconds")
    @classmethod
    def _positive_delays(cls, value: list[float]) -> list[float]:
        if not value or any(delay <= 0 for delay in value):
            raise ValueError("retry delays must be a non-empty list of positive seconds")
        return value

    @model_validator(mode="after")
    def _refuse_default_broker_in_prod(self) -> MessagingSettings:
        if self.environment is Environment.PROD and self.amqp_url == DEFAULT_AMQP_URL:
            raise ValueError("SMARTTASKS_AMQP_URL must be set in prod (not the guest default)")
        return self
