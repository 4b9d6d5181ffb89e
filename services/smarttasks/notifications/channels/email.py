"""Email over SMTP (aiosmtplib): kept-open connections, STARTTLS or TLS, text and HTML parts."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiosmtplib
import structlog

from smarttasks.notifications.channels.base import OutboundMessage, Outcome, OutcomeReceipt, Result
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

    A connection sends a message's data only once the outcome of the last message it had
    accepted is recorded (its `OutcomeReceipt`): a worker killed at any moment sends again at
    most one email per connection.
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
        self._idle: list[_Connection] = []

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
            connection = self._idle.pop() if self._idle else _Connection(self._client())
            try:
                result = await self._submit(connection, email)
            finally:
                self._idle.append(connection)
            if result.outcome is Outcome.SENT:
                connection.unrecorded = message.receipt
            return result

    async def _submit(self, connection: _Connection, email: ComposedEmail) -> Result:
        client = connection.client
        reused = client.is_connected
        while True:
            try:
                if not client.is_connected:
                    await client.connect()
                reply = await self._transaction(connection, email)
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

    async def _transaction(self, connection: _Connection, email: ComposedEmail) -> str:
        """MAIL, RCPT and DATA; the data goes only once the connection's last message is
        recorded, so a crash sends at most one message per connection twice. The envelope
        commands go first: their round trips overlap the wait."""
        client = connection.client
        size = [f"SIZE={len(email.data)}"] if client.supports_extension("size") else []
        await client.mail(email.sender, options=size)
        try:
            await client.rcpt(email.recipient)
            if connection.unrecorded is not None:
                await self._until_recorded(connection.unrecorded)
                connection.unrecorded = None
            response = await client.data(email.data)
        except aiosmtplib.SMTPResponseException:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.rset()  # a refused envelope must not linger on the connection
            raise
        return response.message

    async def _until_recorded(self, receipt: OutcomeReceipt) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await receipt.recorded()
        except TimeoutError:  # the outcome write is stuck; sending beats stalling forever
            log.warning("smtp_previous_outcome_not_recorded", timeout_s=self._timeout)

    async def aclose(self) -> None:
        """QUIT every kept-open connection."""
        idle, self._idle = self._idle, []
        for connection in idle:
            if not connection.client.is_connected:
                continue
            try:
                await connection.client.quit()
            except (aiosmtplib.SMTPException, OSError):
                connection.client.close()


class _Connection:
    """A pooled SMTP client and the receipt of the last message it had accepted."""

    __slots__ = ("client", "unrecorded")

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.unrecorded: OutcomeReceipt | None = None
