"""The scenarios with every component as its own process (cluster mode, no containers)."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import scenarios
from tests.e2e.cluster import ClusterPlatform
from tests.fixtures.webhook import WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.k8s, pytest.mark.rabbitmq, pytest.mark.slow]


async def test_task_deadline_reaches_the_engine_schedule(cluster: ClusterPlatform) -> None:
    await scenarios.deadline_is_scheduled(cluster)


async def test_overdue_rule_emails_the_owner_once_within_two_seconds(
    cluster: ClusterPlatform,
) -> None:
    await scenarios.overdue_email_once(cluster)
    # The operator's Prometheus endpoint counts the firing and how late it was.
    async with httpx.AsyncClient() as client:
        answer = await client.get(cluster.metrics_urls["operator"])
    assert answer.status_code == 200
    samples: Counter[tuple[str, str | None]] = Counter()
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, sample.labels.get("trigger"))] += sample.value
    assert samples[("smarttasks_engine_firings_total", "TaskOverdue")] >= 1
    assert samples[("smarttasks_engine_firing_lateness_seconds_count", "TaskOverdue")] >= 1
    assert samples[("smarttasks_engine_notifications_requested_total", None)] >= 1


async def test_completed_task_calls_the_signed_webhook(
    cluster: ClusterPlatform, webhook_receiver: WebhookReceiver
) -> None:
    await scenarios.completed_task_webhook(cluster, webhook_receiver)
