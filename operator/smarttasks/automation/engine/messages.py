"""`notification.requested` messages for a firing: recipients, rendering, stable ids (pure)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from smarttasks.automation.engine.model import ROLES, Firing, NotifyAction
from smarttasks.core.events import USER_PREFIX, NotificationRequested, TaskSnapshot

_NAMESPACE = uuid.UUID("5d0c1a7e-2f43-4b8e-9d6a-6f1f3c2b9a10")
DIGEST_MAX_TASKS = 500
"""Most tasks listed in one digest (the earliest deadlines first); bounds the message size."""


def message_id(dedup_key: str) -> uuid.UUID:
    """The same firing always yields the same message id (consumers dedupe on it)."""
    return uuid.uuid5(_NAMESPACE, dedup_key)


"""A recipient `user:<id>` is a user the notification service looks up the address of."""


def resolve(recipients: Sequence[str], task: TaskSnapshot) -> list[str]:
    """Roles become `user:<id>` of the task's owner or assignee (the notification service
    looks up the address); literal addresses stay. An unassigned task simply has no
    `assignee` recipient."""
    out: list[str] = []
    for recipient in recipients:
        if recipient in ROLES:
            user = task.owner_id if recipient == "owner" else task.assignee_id
            value = f"{USER_PREFIX}{user}" if user is not None else None
        else:
            value = recipient
        if value is not None and value not in out:
            out.append(value)
    return out


def _context(firing: Firing, now: datetime, tasks: Sequence[TaskSnapshot]) -> dict[str, Any]:
    task = firing.document if firing.document is not None else firing.task
    return firing.rule.template_context(task=task, tasks=tasks, changes=firing.changes, now=now)


def _request(
    firing: Firing,
    action: NotifyAction,
    *,
    index: int,
    recipients: list[str],
    tasks: Sequence[TaskSnapshot],
    now: datetime,
    suffix: str = "",
) -> NotificationRequested:
    subject, body = action.render(_context(firing, now, tasks))
    dedup = f"{firing.key.dedup}/{index}{suffix}"
    return NotificationRequested(
        id=message_id(dedup),
        occurred_at=now,
        rule=firing.rule.ref,
        task=firing.task,
        tasks=list(tasks) if firing.task is None else [],
        channel=action.channel,
        recipients=recipients,
        subject=subject,
        body=body,
        rendered=True,
        url=action.url,
        secret_ref=dict(action.secret_ref) if action.secret_ref else None,
        dedup_key=dedup,
    )


def iter_requests(
    firing: Firing, now: datetime, errors: list[str]
) -> Iterator[NotificationRequested]:
    """The messages a firing requests, one per action (and, for a digest, per recipient).

    Produced one at a time, so a digest to hundreds of recipients is never all in memory. A
    template that fails to render drops that action's messages and appends the reason to
    `errors` (reported as the rule's error); the other actions still go out.
    """
    for index, action in enumerate(firing.rule.actions):
        audiences: list[tuple[list[str], list[TaskSnapshot], str]]
        if firing.task is not None:
            recipients = resolve(action.to, firing.task) if action.channel == "email" else []
            if action.channel == "email" and not recipients:
                continue
            audiences = [(recipients, [], "")]
        else:
            audiences = list(_digest_audiences(firing, action))
        for recipients, tasks, suffix in audiences:
            try:
                request = _request(
                    firing,
                    action,
                    index=index,
                    recipients=recipients,
                    tasks=tasks,
                    now=now,
                    suffix=suffix,
                )
            except Exception as exc:  # a template error is the rule's problem, not the engine's
                errors.append(f"action {index + 1} ({action.channel}): {exc}")
                break
            yield request


def build_requests(firing: Firing, now: datetime) -> tuple[list[NotificationRequested], list[str]]:
    """`iter_requests` as a list, with the errors."""
    errors: list[str] = []
    requests = list(iter_requests(firing, now, errors))
    return requests, errors


def _digest_audiences(
    firing: Firing, action: NotifyAction
) -> Iterator[tuple[list[str], list[TaskSnapshot], str]]:
    """(recipients, tasks listed, dedup suffix) of each digest message of one action."""
    tasks = sorted(firing.tasks, key=lambda t: (t.due_at is None, t.due_at, str(t.id)))
    if action.channel != "email":
        yield [], tasks[:DIGEST_MAX_TASKS], ""
        return
    # One digest per recipient, listing the tasks that recipient is owner/assignee of (or all
    # of them, for a literal address).
    by_recipient: dict[str, list[TaskSnapshot]] = {}
    for task in tasks:
        for recipient in resolve(action.to, task):
            by_recipient.setdefault(recipient, []).append(task)
    for recipient, listed in sorted(by_recipient.items()):
        yield [recipient], listed[:DIGEST_MAX_TASKS], f"/{recipient}"


__all__ = [
    "DIGEST_MAX_TASKS",
    "USER_PREFIX",
    "build_requests",
    "iter_requests",
    "message_id",
    "resolve",
]
