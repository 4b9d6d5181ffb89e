"""The scenarios against one `smarttasks up` process (embedded mode)."""

from __future__ import annotations

import pytest

from tests.e2e import scenarios
from tests.e2e.embedded import EmbeddedPlatform
from tests.fixtures.webhook import WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_task_deadline_reaches_the_engine_schedule(embedded: EmbeddedPlatform) -> None:
    await scenarios.deadline_is_scheduled(embedded)


async def test_overdue_rule_writes_the_owner_one_email_within_two_seconds(
    embedded: EmbeddedPlatform,
) -> None:
    await scenarios.overdue_email_once(embedded)


async def test_completed_task_calls_the_signed_webhook(
    embedded: EmbeddedPlatform, webhook_receiver: WebhookReceiver
) -> None:
    await scenarios.completed_task_webhook(embedded, webhook_receiver)
