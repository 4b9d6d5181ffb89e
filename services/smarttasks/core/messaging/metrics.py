"""Prometheus metrics of the event backbone: outbox backlog, publish latency, consumer health."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

OUTBOX_BACKLOG = Gauge(
    "smarttasks_outbox_backlog",
    "Outbox rows not yet handed to the broker (or to in-process subscribers).",
    ["outbox"],
)
OUTBOX_OLDEST_AGE = Gauge(
    "smarttasks_outbox_oldest_unsent_age_seconds",
    "Age of the oldest unsent outbox row; grows while the relay is stuck.",
    ["outbox"],
)
OUTBOX_PRUNED = Counter(
    "smarttasks_outbox_pruned_total",
    "Sent outbox rows deleted after their retention.",
    ["outbox"],
)
RELAY_DELIVERED = Counter(
    "smarttasks_relay_delivered_total",
    "Outbox rows published with a confirm (or delivered in-process) and marked sent.",
    ["outbox", "mode"],
)
RELAY_FAILURES = Counter(
    "smarttasks_relay_failures_total",
    "Relay batches that failed, by cause (broker, database).",
    ["outbox", "cause"],
)
RELAY_CONFIRM_SECONDS = Histogram(
    "smarttasks_relay_confirm_seconds",
    "Time from publishing a batch to its last publisher confirm.",
    ["outbox"],
    buckets=_LATENCY_BUCKETS,
)
RELAY_BATCH_SIZE = Histogram(
    "smarttasks_relay_batch_rows",
    "Rows per relay batch.",
    ["outbox"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
CONSUMER_MESSAGES = Counter(
    "smarttasks_consumer_messages_total",
    "Messages settled by a consumer, by outcome (applied, duplicate, retried, dead_lettered).",
    ["consumer", "outcome"],
)
CONSUMER_RETRIES = Counter(
    "smarttasks_consumer_retries_total",
    "Failed attempts scheduled for a retry.",
    ["consumer"],
)
CONSUMER_DEAD_LETTERS = Counter(
    "smarttasks_consumer_dead_letters_total",
    "Messages given up on and dead-lettered, by reason.",
    ["consumer", "reason"],
)
CONSUMER_LAG = Histogram(
    "smarttasks_consumer_lag_seconds",
    "Time from the event's outbox commit to the consumer's commit of it.",
    ["consumer"],
    buckets=_LAG_BUCKETS,
)
CONSUMER_HANDLE_SECONDS = Histogram(
    "smarttasks_consumer_handle_seconds",
    "Time to apply one message: inbox check, handler and commit.",
    ["consumer"],
    buckets=_LATENCY_BUCKETS,
)
