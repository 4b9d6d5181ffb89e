"""Email over SMTP (aiosmtplib): kept-open connections, STARTTLS or TLS, text and HTML parts."""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib
import structlog

from smarttasks.notifications.channels.base import OutboundMessage, Result
from smarttasks.notifications.channels.mime import (
    ComposedEmail,
    Composer,
    InvalidEmail,
    parse_mailbox,
)
from smarttasks.notifications.settings import SmtpSecurity

log = structlog.get_logger()


def _status(exc: aiosmtplib.SMTPResponseException) -> Result:
    detail = f"SMTP {exc.code}: {exc.message}"
    if 500 <= exc.code < 600:
        return Result.permanent(detail, status_code=exc.code)
    return Result.temporary(detail, status_code=exc.code)


class SmtpChannel:
    """Submits email to one SMTP server over a small pool of connections kept open.

    A connection the server closed while idle is reopened and the message sent again at once;
    any other connection problem is a temporary failure (retried later). Replies 5xx are
    permanent, 4xx temporary, as RFC 5321 defines them. Authentication problems are
    temporary: they are the service's configuration, not the message.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        message_id_domain: str,
        security: SmtpSecurity = SmtpSecurity.STARTTLS,
        username: str = "",
        password: str = "",
        timeout: float = 30.0,
        validate_certs: bool = True,
        pool_size: int = 4,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._composer = Composer(sender=parse_mailbox(sender), message_id_domain=message_id_domain)
        self._security = security
        self._username = username
        self._password = password
        self._timeout = timeout
        self._validate_certs = validate_certs
        self._tls_context = tls_context
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[aiosmtplib.SMTP] = []

    def _client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            username=self._username or None,
            password=self._password or None,
            use_tls=self._security is SmtpSecurity.TLS,
            start_tls=self._security is SmtpSecurity.STARTTLS,
            validate_certs=self._validate_certs,
            tls_context=self._tls_context,
            timeout=self._timeout,
        )

    async def send(self, message: OutboundMessage) -> Result:
        try:
            email = self._composer.compose(message)
        except InvalidEmail as exc:
            return Result.permanent(f"cannot build the email: {exc}")
        async with self._slots:
            client = self._idle.pop() if self._idle else self._client()
            try:
                return await self._submit(client, email)
            finally:
                if client.is_connected:
                    self._idle.append(client)

    async def _submit(self, client: aiosmtplib.SMTP, email: ComposedEmail) -> Result:
        reused = client.is_connected
        while True:
            try:
                if not client.is_connected:
                    await client.connect()
                _refused, reply = await client.sendmail(email.sender, [email.recipient], email.data)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                return _status(exc.recipients[0])
            except aiosmtplib.SMTPAuthenticationError as exc:
                client.close()
                return Result.temporary(f"SMTP authentication failed: {exc.code} {exc.message}")
            except aiosmtplib.SMTPResponseException as exc:
                return _status(exc)
            except (aiosmtplib.SMTPException, OSError) as exc:
                client.close()
                if reused and isinstance(exc, aiosmtplib.SMTPServerDisconnected):
                    reused = False  # the server dropped the idle connection: reconnect once
                    continue
                log.info("smtp_unavailable", host=self._host, error=str(exc))
                return Result.temporary(
                    f"SMTP server {self._host}:{self._port} unavailable: "
                    f"{type(exc).__name__}: {exc}"
                )
            return Result.sent(f"accepted by {self._host}: {reply}")

    async def aclose(self) -> None:
        """QUIT every kept-open connection."""
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
