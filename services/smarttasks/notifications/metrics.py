"""Prometheus metrics of deliveries, labelled by channel."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SENT = Counter(
    "smarttasks_notifications_sent_total",
    "Deliveries sent (accepted by the SMTP server, answered 2xx, or written as .eml).",
    ["channel"],
)
FAILED = Counter(
    "smarttasks_notifications_failed_total",
    "Deliveries given up: `permanent` error, or attempts `exhausted` (dead-lettered).",
    ["channel", "reason"],
)
RETRIED = Counter(
    "smarttasks_notifications_retried_total",
    "Attempts that failed temporarily and were scheduled again.",
    ["channel"],
)
SKIPPED = Counter(
    "smarttasks_notifications_skipped_total",
    "Deliveries not sent on purpose (recipient opted out or no longer exists).",
    ["channel"],
)
SEND_SECONDS = Histogram(
    "smarttasks_notifications_send_duration_seconds",
    "Duration of one send attempt, by channel and outcome.",
    ["channel", "outcome"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LATENCY = Histogram(
    "smarttasks_notifications_delivery_latency_seconds",
    "From the request being recorded to the delivery being sent, retries included.",
    ["channel"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0),
)
