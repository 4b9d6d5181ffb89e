"""Prometheus metrics of the engine, observed after the commit of what they count."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram

from smarttasks.automation.engine.firings import Recorded

FIRINGS = Counter(
    "smarttasks_engine_firings_total",
    "Firings committed (each rule fires once per key), by trigger; throttled ones send nothing.",
    ["trigger", "throttled"],
)
NOTIFICATIONS_REQUESTED = Counter(
    "smarttasks_engine_notifications_requested_total",
    "notification.requested messages written to the engine's outbox.",
)
FIRING_LATENESS = Histogram(
    "smarttasks_engine_firing_lateness_seconds",
    "From the moment a time trigger was due (deadline, reminder, schedule) to the commit of "
    "its firing.",
    ["trigger"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


def observe(recorded: Iterable[Recorded], *, now: datetime | None = None) -> None:
    """Count committed firings and, for time triggers, how late they fired."""
    committed_at = now or datetime.now(UTC)
    messages = 0
    for item in recorded:
        firing = item.firing
        trigger = firing.key.trigger.value
        FIRINGS.labels(trigger, "true" if item.throttled else "false").inc()
        messages += item.messages
        if firing.due_at is not None:
            lateness = (committed_at - firing.due_at).total_seconds()
            FIRING_LATENESS.labels(trigger).observe(max(lateness, 0.0))
    if messages:
        NOTIFICATIONS_REQUESTED.inc(messages)
