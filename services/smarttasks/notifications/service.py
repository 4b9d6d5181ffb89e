"""Logic of the notification service: turning requests into deliveries, and the delivery log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from smarttasks.core.auth import Principal
from smarttasks.core.errors import Conflict, NotFound
from smarttasks.core.events import USER_PREFIX, NotificationRequested
from smarttasks.notifications.channels.factory import CHANNELS, WEBHOOK
from smarttasks.notifications.channels.targets import MAX_URL_LENGTH
from smarttasks.notifications.models import RETRYABLE_STATUSES, Attempt, Delivery, DeliveryStatus
from smarttasks.notifications.pagination import Cursor
from smarttasks.notifications.repository import DeliveryRepository

log = structlog.get_logger()

ROLE_OWNER = "owner"
ROLE_ASSIGNEE = "assignee"
"""`user:<id>`: a user whose address the users service knows (the engine's form of a role)."""
MAX_RECIPIENT_LENGTH = 320


@dataclass(frozen=True, slots=True)
class Planned:
    """A delivery a request asks for; `error` makes it fail at once, visibly, in the log."""

    recipient: str
    user_id: uuid.UUID | None = None
    address: str | None = None
    error: str | None = None


def plan_deliveries(request: NotificationRequested) -> list[Planned]:
    """One delivery per distinct recipient.

    Recipients take three forms: `user:<id>` (what the automation engine sends for a
    task's owner or assignee), the roles `owner`/`assignee` themselves (resolved here from
    the task snapshot, all tasks of a digest), and literal email addresses. A user named
    both ways gets one delivery; users' addresses are looked up when sending.

    A webhook is one delivery to its URL. What cannot be sent still gets a (failed)
    delivery, so the log shows why nothing arrived.
    """
    if request.channel == WEBHOOK:
        if not request.url:
            return [Planned(recipient=WEBHOOK, error="webhook request without a URL")]
        if len(request.url) > MAX_URL_LENGTH:
            error = f"webhook URL longer than {MAX_URL_LENGTH} characters"
            return [Planned(recipient=WEBHOOK, error=error)]
        return [Planned(recipient=WEBHOOK, address=request.url)]
    snapshots = [request.task] if request.task is not None else list(request.tasks)
    planned: dict[str, Planned] = {}
    for entry in request.recipients:
        role = entry.strip().lower()
        if role in (ROLE_OWNER, ROLE_ASSIGNEE):
            for task in snapshots:
                user_id = task.owner_id if role == ROLE_OWNER else task.assignee_id
                if user_id is not None:
                    key = f"{USER_PREFIX}{user_id}"
                    planned.setdefault(key, Planned(recipient=key, user_id=user_id))
            continue
        if role.startswith(USER_PREFIX):
            user = _user_recipient(entry.strip())
            planned.setdefault(user.recipient, user)
            continue
        address = entry.strip()
        if len(address) > MAX_RECIPIENT_LENGTH:
            key = f"email:{address[:MAX_RECIPIENT_LENGTH]}"
            planned.setdefault(key, Planned(recipient=key, error="recipient address too long"))
            continue
        key = f"email:{address.lower()}"
        planned.setdefault(key, Planned(recipient=key, address=address))
    if not planned:
        reason = "no recipients" if not request.recipients else "no recipient resolved"
        return [Planned(recipient="none", error=f"{reason} (recipients: {request.recipients!r})")]
    if request.channel not in CHANNELS:
        # Still one per recipient, so each person's log shows what was meant for them.
        known = ", ".join(CHANNELS)
        error = f"unknown channel {request.channel[:20]!r}; known: {known}"
        return [replace(p, error=error) for p in planned.values()]
    return list(planned.values())


def _user_recipient(entry: str) -> Planned:
    """`user:<id>` as a user delivery, keyed by the canonical id (so the same user written
    in upper or lower case is one delivery); a malformed id is a visible failure."""
    value = entry[len(USER_PREFIX) :].strip()
    try:
        user_id = uuid.UUID(value)
    except ValueError:
        key = f"{USER_PREFIX}{value[:MAX_RECIPIENT_LENGTH]}"
        return Planned(recipient=key, error=f"recipient {entry[:80]!r} is not a user id")
    return Planned(recipient=f"{USER_PREFIX}{user_id}", user_id=user_id)


async def record_request(session: AsyncSession, request: NotificationRequested) -> int:
    """Record the deliveries a request asks for; a redelivered request records nothing new.

    Returns how many deliveries were new. Workers are woken when the transaction commits.
    """
    now = datetime.now(UTC)
    body = request.model_dump(mode="json")
    task_id = request.task.id if request.task is not None else None
    rows: list[dict[str, Any]] = []
    for p in plan_deliveries(request):
        rows.append(
            {
                # Derived, not random: the same request always names the same deliveries.
                "id": uuid.uuid5(request.id, p.recipient),
                "notification_id": request.id,
                "recipient": p.recipient,
                "recipient_user_id": p.user_id,
                "address": p.address,
                "channel": request.channel[:20],
                "status": (DeliveryStatus.FAILED if p.error else DeliveryStatus.PENDING).value,
                "attempts": 0,
                "attempts_offset": 0,
                "next_attempt_at": now,
                "last_error": p.error,
                "rule_namespace": request.rule.namespace,
                "rule_name": request.rule.name,
                "task_id": task_id,
                "dedup_key": request.dedup_key[:500],
                "request": body,
                "created_at": now,
                "updated_at": now,
            }
        )
    repo = DeliveryRepository(session)
    inserted = await repo.add_new(rows)
    if inserted:
        await repo.wake_workers()
    log.info(
        "notification_recorded",
        notification_id=str(request.id),
        rule=f"{request.rule.namespace}/{request.rule.name}",
        channel=request.channel,
        deliveries=len(rows),
        new=len(inserted),
    )
    return len(inserted)


async def list_deliveries(
    session: AsyncSession,
    *,
    principal: Principal,
    statuses: Sequence[str],
    cursor: str | None,
    limit: int,
) -> tuple[Sequence[Delivery], str | None]:
    """A page of the caller's deliveries (all of them for administrators), newest first."""
    after = Cursor.decode(cursor) if cursor else None
    rows = await DeliveryRepository(session).page(
        principal, statuses=statuses, cursor=after, limit=limit + 1
    )
    items = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = Cursor(last.created_at, last.id).encode()
    return items, next_cursor


async def get_delivery(
    session: AsyncSession, *, delivery_id: uuid.UUID, principal: Principal
) -> tuple[Delivery, list[Attempt]]:
    """A delivery with its attempts; 404 when it is not the caller's (existence not revealed)."""
    repo = DeliveryRepository(session)
    delivery = await repo.get_visible(delivery_id, principal)
    if delivery is None:
        raise NotFound("Delivery not found")
    return delivery, await repo.attempts_of(delivery_id)


async def retry_delivery(
    session: AsyncSession, *, delivery_id: uuid.UUID, principal: Principal
) -> Delivery:
    """Queue a failed or dead delivery again, with a fresh attempt budget."""
    repo = DeliveryRepository(session)
    delivery = await repo.get_visible(delivery_id, principal, for_update=True)
    if delivery is None:
        raise NotFound("Delivery not found")
    if delivery.status not in RETRYABLE_STATUSES:
        raise Conflict(
            f"Only failed or dead deliveries can be retried; this one is {delivery.status}"
        )
    await repo.requeue(delivery)
    log.info("delivery_requeued", delivery_id=str(delivery.id), by=str(principal.user_id))
    return delivery
