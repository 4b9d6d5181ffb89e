"""The scenarios with every component as its own process (cluster mode, no containers)."""

from __future__ import annotations

import pytest

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


async def test_completed_task_calls_the_signed_webhook(
    cluster: ClusterPlatform, webhook_receiver: WebhookReceiver
) -> None:
    await scenarios.completed_task_webhook(cluster, webhook_receiver)
