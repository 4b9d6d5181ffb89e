"""One attempt at one delivery: resolve the recipient, render, hand to the channel."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from pydantic import ValidationError

from smarttasks.core.events import NotificationRequested
from smarttasks.notifications.channels import (
    EMAIL,
    WEBHOOK,
    ChannelSet,
    OutboundMessage,
    OutcomeReceipt,
    Result,
    UnknownChannel,
)
from smarttasks.notifications.directory import DirectoryUnavailable, UserDirectory
from smarttasks.notifications.repository import Claimed
from smarttasks.notifications.secretrefs import SecretRef
from smarttasks.notifications.templates import Renderer, TemplateError, literal

log = structlog.get_logger()

WEBHOOK_EVENT_TYPE = "notification.requested"


class Attempted:
    """The result of an attempt and the address it went to (resolved for user recipients)."""

    __slots__ = ("address", "result")

    def __init__(self, result: Result, address: str | None) -> None:
        self.result = result
        self.address = address


class Dispatcher:
    """Turns a claimed delivery into a message and sends it; never raises for bad input."""

    def __init__(
        self, *, channels: ChannelSet, directory: UserDirectory, renderer: Renderer | None = None
    ) -> None:
        self.channels = channels
        self.directory = directory
        self.renderer = renderer or Renderer()

    async def attempt(self, delivery: Claimed, receipt: OutcomeReceipt | None = None) -> Attempted:
        address = delivery.address
        try:
            request = NotificationRequested.model_validate_json(delivery.request)
        except ValidationError as exc:
            return Attempted(Result.permanent(f"stored request is invalid: {exc}"), address)
        try:
            channel = self.channels.get(delivery.channel)
        except UnknownChannel as exc:
            return Attempted(Result.permanent(str(exc)), address)
        name: str | None = None
        if delivery.channel == EMAIL and delivery.recipient_user_id is not None:
            try:
                contact = await self.directory.get(delivery.recipient_user_id)
            except DirectoryUnavailable as exc:
                return Attempted(Result.temporary(str(exc)), address)
            if contact is None:
                return Attempted(
                    Result.skipped(f"user {delivery.recipient_user_id} no longer exists"), address
                )
            address, name = contact.email, contact.display_name
            if not contact.email_notifications:
                return Attempted(
                    Result.skipped("the recipient turned email notifications off"), address
                )
        try:
            secret_ref = _secret_ref(request)
        except ValueError as exc:
            return Attempted(Result.permanent(str(exc)), address)
        html = delivery.channel == EMAIL
        # Templates and webhook payloads read the context; rendered email text does not.
        context = (
            _context(request, address=address, name=name, user_id=delivery.recipient_user_id)
            if delivery.channel == WEBHOOK or not request.rendered
            else {}
        )
        if request.rendered:
            rendered = literal(subject=request.subject, body=request.body, html=html)
        else:
            try:
                rendered = self.renderer.render(
                    subject=request.subject, body=request.body, context=context, html=html
                )
            except TemplateError as exc:
                return Attempted(Result.permanent(str(exc)), address)
        message = OutboundMessage(
            notification_id=delivery.notification_id,
            delivery_id=delivery.id,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            to_address=address if delivery.channel == EMAIL else None,
            to_name=name,
            url=address if delivery.channel == WEBHOOK else None,
            secret_ref=secret_ref,
            payload=_webhook_payload(request, context, subject=rendered.subject, text=rendered.text)
            if delivery.channel == WEBHOOK
            else {},
            receipt=receipt,
        )
        return Attempted(await channel.send(message), address)


def _context(
    request: NotificationRequested,
    *,
    address: str | None,
    name: str | None,
    user_id: uuid.UUID | None,
) -> dict[str, Any]:
    return {
        "task": request.task.model_dump(mode="json") if request.task is not None else None,
        "tasks": [t.model_dump(mode="json") for t in request.tasks],
        "rule": request.rule.model_dump(mode="json"),
        "recipient": {
            "address": address,
            "name": name or "",
            "user_id": str(user_id) if user_id else None,
        },
    }


def _secret_ref(request: NotificationRequested) -> SecretRef | None:
    ref = request.secret_ref
    if not ref:
        return None
    name, key = ref.get("name"), ref.get("key")
    if not name or not key:
        raise ValueError("secretRef must name a Secret and a key in it")
    # Always the rule's own namespace: a rule cannot borrow another team's key.
    return SecretRef(namespace=request.rule.namespace, name=name, key=key)


def _webhook_payload(
    request: NotificationRequested, context: dict[str, Any], *, subject: str, text: str
) -> dict[str, Any]:
    # The Standard Webhooks payload shape: type, timestamp, data.
    return {
        "type": WEBHOOK_EVENT_TYPE,
        "timestamp": request.occurred_at.isoformat(),
        "data": {
            "notification_id": str(request.id),
            "rule": context["rule"],
            "task": context["task"],
            "tasks": context["tasks"],
            "subject": subject,
            "body": text,
            "dedup_key": request.dedup_key,
        },
    }
