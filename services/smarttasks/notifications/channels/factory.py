"""Builds the channels a process sends through, from its settings."""

from __future__ import annotations

import ssl
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from smarttasks.notifications.channels.base import Channel
from smarttasks.notifications.channels.email import SmtpChannel
from smarttasks.notifications.channels.eml import EmlFileChannel
from smarttasks.notifications.channels.webhook import WebhookChannel
from smarttasks.notifications.secretrefs import SecretResolver
from smarttasks.notifications.settings import NotificationsSettings

EMAIL = "email"
WEBHOOK = "webhook"
CHANNELS = (EMAIL, WEBHOOK)
WEBHOOK_KEEPALIVE_SECONDS = 4.0
"""How long an idle webhook connection is kept: under the 5 s after which common servers
(uvicorn, nginx's default is 75 s) close theirs, so a request is not sent on a connection
the receiver is closing."""


class UnknownChannel(LookupError):
    """No channel of that name exists."""


class ChannelSet:
    """The channels by name, and the connections they keep open."""

    def __init__(self, channels: dict[str, Channel], stack: AsyncExitStack) -> None:
        self._channels = channels
        self._stack = stack

    def get(self, name: str) -> Channel:
        try:
            return self._channels[name]
        except KeyError:
            known = ", ".join(CHANNELS)
            raise UnknownChannel(f"unknown channel {name!r}; known: {known}") from None

    @property
    def email_target(self) -> str:
        """Where email goes, for the log: an SMTP server or the `.eml` folder."""
        email = self._channels.get(EMAIL)
        if isinstance(email, EmlFileChannel):
            return "eml files"
        return "smtp"

    async def aclose(self) -> None:
        await self._stack.aclose()


def webhook_transport(settings: NotificationsSettings) -> httpx.AsyncBaseTransport:
    """httpx's transport interface over aiohttp's connection pool.

    httpcore's pool and its anyio streams cost several times aiohttp's CPU per request,
    which bounds webhooks per second on a few cores. The session is bare on purpose: no
    proxy from the environment (which would bypass the target checks), no redirects (the
    channel asks for none) and no cookie jar, so a receiver cannot plant cookies that later
    requests would carry.
    """

    tls = ssl.create_default_context()

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=settings.webhook_max_connections,
            ssl=tls,
            keepalive_timeout=WEBHOOK_KEEPALIVE_SECONDS,
        )
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
        )

    return AiohttpTransport(verify=tls, client=session)


async def build_channels(
    settings: NotificationsSettings,
    *,
    secrets: SecretResolver,
) -> ChannelSet:
    """Email through SMTP when `smtp_host` is set, else to `.eml` files; webhooks over httpx."""
    stack = AsyncExitStack()
    email: Channel
    if settings.smtp_host:
        smtp = SmtpChannel(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.mail_from,
            message_id_domain=settings.message_id_domain,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout_seconds,
            validate_certs=settings.smtp_validate_certs,
            pool_size=settings.smtp_pool_size,
        )
        stack.push_async_callback(smtp.aclose)
        email = smtp
    else:
        email = EmlFileChannel(
            Path(settings.outbox_dir),
            sender=settings.mail_from,
            message_id_domain=settings.message_id_domain,
        )
    transport = await stack.enter_async_context(webhook_transport(settings))
    webhook = WebhookChannel(
        transport=transport,
        secrets=secrets,
        timeout=settings.webhook_timeout_seconds,
        allow_private=settings.webhook_allow_private,
        per_host=settings.webhook_per_host_concurrency,
    )
    return ChannelSet({EMAIL: email, WEBHOOK: webhook}, stack)
