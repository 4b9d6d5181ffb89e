"""Email over SMTP (aiosmtplib): kept-open connections, STARTTLS or TLS, text and HTML parts."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib
import structlog

from smarttasks.notifications.channels.base import OutboundMessage, Result
from smarttasks.notifications.settings import SmtpSecurity

log = structlog.get_logger()

MAX_ADDRESS_LENGTH = 254
MAX_SUBJECT_LENGTH = 998


class InvalidEmail(ValueError):
    """The message cannot be turned into a valid email (bad address, no body...)."""


def one_line(text: str) -> str:
    """A header value on one line: CR, LF and other line breaks would start a new header."""
    return " ".join(text.split())


def parse_address(address: str, name: str | None = None) -> Address:
    """An `Address` for a plain addr-spec, or InvalidEmail saying what is wrong with it."""
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidEmail(f"email address must be 1 to {MAX_ADDRESS_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in address):
        raise InvalidEmail(f"email address {address!r} contains spaces or control characters")
    try:
        parsed = Address(display_name=one_line(name or ""), addr_spec=address)
    except (ValueError, TypeError, IndexError, MessageError) as exc:
        raise InvalidEmail(f"not a valid email address: {address!r} ({exc})") from None
    if not parsed.username or not parsed.domain or "." not in parsed.domain.strip("."):
        raise InvalidEmail(f"not a valid email address: {address!r}")
    return parsed


def parse_mailbox(value: str) -> Address:
    """`Name <address>` or a bare address, as the sender setting allows."""
    value = value.strip()
    if value.endswith(">") and "<" in value:
        name, _, rest = value.rpartition("<")
        return parse_address(rest[:-1].strip(), name.strip().strip('"'))
    return parse_address(value)


def compose(message: OutboundMessage, *, sender: Address, message_id_domain: str) -> EmailMessage:
    """The email for one recipient, with the default (RFC 5322/6532-aware) policy.

    Non-ASCII display names and subjects are encoded by the policy (RFC 2047); the
    `Message-ID` is derived from the notification id so a receiver can drop duplicates.
    """
    if message.to_address is None:
        raise InvalidEmail("no recipient address")
    to = parse_address(message.to_address, message.to_name)
    subject = one_line(message.subject)[:MAX_SUBJECT_LENGTH]
    if not subject:
        raise InvalidEmail("empty subject")
    if not message.text.strip():
        raise InvalidEmail("empty body")
    email = EmailMessage()
    email["Subject"] = subject
    email["From"] = sender
    email["To"] = to
    email["Date"] = format_datetime(datetime.now(UTC))
    email["Message-ID"] = f"<{message.notification_id}@{message_id_domain}>"
    # RFC 3834: tells auto-responders (out-of-office) not to answer.
    email["Auto-Submitted"] = "auto-generated"
    email.set_content(message.text)
    if message.html is not None:
        email.add_alternative(message.html, subtype="html")
    return email


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
        self._sender = parse_mailbox(sender)
        self._domain = message_id_domain
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
            email = compose(message, sender=self._sender, message_id_domain=self._domain)
        except (ValueError, MessageError) as exc:
            return Result.permanent(f"cannot build the email: {exc}")
        async with self._slots:
            client = self._idle.pop() if self._idle else self._client()
            try:
                return await self._submit(client, email)
            finally:
                if client.is_connected:
                    self._idle.append(client)

    async def _submit(self, client: aiosmtplib.SMTP, email: EmailMessage) -> Result:
        reused = client.is_connected
        while True:
            try:
                if not client.is_connected:
                    await client.connect()
                _refused, reply = await client.send_message(email)
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
