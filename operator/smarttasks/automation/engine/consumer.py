"""The engine's task-event handler: projection, schedule arming and event triggers, in the
consumer runner's transaction (acknowledged after its commit; the runner's batches of
waiting events go to `handle_batch` in one call)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.automation.engine import metrics, projection
from smarttasks.automation.engine.firings import record_firings
from smarttasks.automation.engine.model import Firing, RuleSource
from smarttasks.automation.engine.status import StatusTracker
from smarttasks.automation.engine.tables import dead_letters, inbox
from smarttasks.automation.engine.triggers import RuleError, event_firings
from smarttasks.core.events import EVENTS_EXCHANGE, TaskEvent, TaskEventType
from smarttasks.core.messaging.envelope import Envelope
from smarttasks.core.messaging.routing import Consumer

CONSUMER_NAME = "automation.engine"


def _as_event(message: Envelope[Any] | TaskEvent | Mapping[str, Any]) -> TaskEvent:
    if isinstance(message, TaskEvent):
        return message
    if isinstance(message, Envelope):
        body = message.event
        return body if isinstance(body, TaskEvent) else TaskEvent.model_validate(body)
    return TaskEvent.model_validate(message)


class TaskEventConsumer:
    """Applies task events to the engine; `handle` is the consumer runner's handler.

    Everything it writes (projection, schedule entries, firings, outbox rows) commits or
    rolls back with the runner's transaction and inbox row, so a redelivered event is a
    no-op and a failed one leaves no trace.
    """

    def __init__(
        self,
        rules: RuleSource,
        *,
        tracker: StatusTracker,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._rules = rules
        self._tracker = tracker
        self._clock = clock

    async def handle(
        self, session: AsyncSession, message: Envelope[Any] | TaskEvent | Mapping[str, Any]
    ) -> None:
        """Apply one task event (an `Envelope`, a `TaskEvent` or its JSON object)."""
        await self.handle_batch(session, (message,))

    async def handle_batch(
        self,
        session: AsyncSession,
        messages: Sequence[Envelope[Any] | TaskEvent | Mapping[str, Any]],
    ) -> None:
        """Apply several task events in the caller's one transaction, as `handle` would one
        after the other: the projection keeps each task's newest state, every event's
        triggers fire. The statements are the same whatever the number of events, so a
        runner that commits several messages per transaction pays for them once."""
        events = [_as_event(message) for message in messages]
        if not events:
            return
        now = self._clock()
        applied = await projection.apply_snapshots(
            session, ((event.data, event.type is TaskEventType.DELETED) for event in events)
        )
        if applied.armed_at is not None:
            await projection.wake_scheduler(session, applied.armed_at)
        firings: list[Firing] = []
        errors: list[RuleError] = []
        for event in events:
            fired, failed = event_firings(event, self._rules)
            firings.extend(fired)
            errors.extend(failed)
        recorded = await record_firings(session, firings, now=now, tracker=self._tracker)
        if recorded or errors:
            tracker = self._tracker
            touched = [r.firing.rule.ref for r in recorded]

            def committed(_session: Any) -> None:
                metrics.observe(recorded)
                tracker.touched(touched)
                for rule, message_ in errors:
                    tracker.error(rule.ref, message_)

            sa_event.listen(session.sync_session, "after_commit", committed, once=True)


def task_event_consumer(handler: TaskEventConsumer) -> Consumer:
    """The engine's consumer definition for the runner (RabbitMQ) or the in-process relay."""
    consumer = Consumer(
        CONSUMER_NAME, exchange=EVENTS_EXCHANGE, inbox=inbox, dead_letters=dead_letters
    )
    consumer.add("task.*", handler.handle, schema=TaskEvent, batch=handler.handle_batch)
    return consumer


__all__ = ["CONSUMER_NAME", "TaskEventConsumer", "task_event_consumer"]
