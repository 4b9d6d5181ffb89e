"""Email messages as bytes: addresses checked, headers encoded, text and HTML parts.

Notification emails all have the same shape, so they are written directly rather than
through `email.message.EmailMessage`, whose header objects cost over a millisecond per
message. The result reads the same in any mail parser and stays within RFC 5322 and
2045-2047: 7-bit only (non-ASCII header text as RFC 2047 encoded words, bodies
quoted-printable unless they are short-lined printable ASCII), CRLF line endings, no line
over 998 octets, and line breaks in a subject or a name turned into spaces, so no header
can be injected.
"""

from __future__ import annotations

import binascii
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import MessageError
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime

from smarttasks.notifications.channels.base import OutboundMessage

MAX_ADDRESS_LENGTH = 254
MAX_SUBJECT_LENGTH = 998
# Longest header line written as it is; longer ones are folded (RFC 5322 recommends 78).
_FOLD_AT = 78

# RFC 5322 dot-atom on both sides, ASCII only: nearly every real address. Anything else
# (quoted local parts, internationalised domains) goes through the stdlib parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN_ADDRESS = re.compile(rf"{_DOT_ATOM}@{_ATEXT}(?:\.{_ATEXT})+")
_MESSAGE_ID_DOMAIN = re.compile(_DOT_ATOM)
# A display name that can be written as it is, or inside quotes.
_PLAIN_PHRASE = re.compile(r"[ -~]{1,60}")
_PHRASE_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
# A body part that can go as "7bit": printable ASCII lines of at most 78 characters, and
# never the boundary's prefix (so the boundary cannot occur in it).
_SEVEN_BIT = re.compile(rb"(?:[\t\x20-\x7e]{0,78}\r\n)*")
_BOUNDARY_PREFIX = b"=_"


class InvalidEmail(ValueError):
    """The message cannot be turned into a valid email (bad address, no body...)."""


def one_line(text: str) -> str:
    """A header value on one line: CR, LF and other line breaks would start a new header."""
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A checked ASCII address and an optional display name (any text, one line)."""

    address: str
    name: str = ""

    def header(self, field: str) -> str:
        """The header value naming this mailbox, encoded and folded for a `field:` line."""
        if not self.name:
            return self.address
        if _PLAIN_PHRASE.fullmatch(self.name) and "=?" not in self.name:
            name = self.name
            if _PHRASE_SPECIALS.search(name):
                name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            name = Header(self.name, "utf-8", header_name=field).encode(linesep="\r\n")
        return f"{name} <{self.address}>"


def parse_address(address: str, name: str | None = None) -> Mailbox:
    """A `Mailbox` for a plain addr-spec, or InvalidEmail saying what is wrong with it.

    An internationalised domain is written in its IDNA (`xn--`) form, so the message and
    the envelope stay ASCII; a non-ASCII local part is refused.
    """
    if not address or len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidEmail(f"email address must be 1 to {MAX_ADDRESS_LENGTH} characters")
    display = one_line(name or "")
    if _PLAIN_ADDRESS.fullmatch(address):
        return Mailbox(address, display)
    if any(c.isspace() or not c.isprintable() for c in address):
        raise InvalidEmail(f"email address {address!r} contains spaces or control characters")
    try:
        parsed = Address(addr_spec=address)
    except (ValueError, TypeError, IndexError, MessageError) as exc:
        raise InvalidEmail(f"not a valid email address: {address!r} ({exc})") from None
    if not parsed.username or not parsed.domain or "." not in parsed.domain.strip("."):
        raise InvalidEmail(f"not a valid email address: {address!r}")
    spec = parsed.addr_spec
    if not spec.isascii():
        try:
            domain = parsed.domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidEmail(f"not a valid email address: {address!r}") from None
        spec = Address(username=parsed.username, domain=domain).addr_spec
        if not spec.isascii():
            raise InvalidEmail(f"not a valid email address: {address!r}")
    return Mailbox(spec, display)


def parse_mailbox(value: str) -> Mailbox:
    """`Name <address>` or a bare address, as the sender setting allows."""
    value = value.strip()
    if value.endswith(">") and "<" in value:
        name, _, rest = value.rpartition("<")
        return parse_address(rest[:-1].strip(), name.strip().strip('"'))
    return parse_address(value)


def encode_subject(subject: str) -> str:
    """The `Subject` value: folded between words when plain ASCII, encoded words otherwise."""
    prefix = len("Subject: ")
    if subject.isascii() and subject.isprintable() and "=?" not in subject:
        if prefix + len(subject) <= _FOLD_AT:
            return subject
        words = subject.split(" ")
        if max(map(len, words)) < _FOLD_AT:
            # Folding inserts CRLF before a space, which unfolding removes again.
            lines: list[str] = []
            line = ""
            room = _FOLD_AT - prefix
            for word in words:
                longer = f"{line} {word}" if line else word
                if line and len(longer) > room:
                    lines.append(line)
                    line, room = word, _FOLD_AT - 1
                else:
                    line = longer
            lines.append(line)
            return "\r\n ".join(lines)
    return Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")


def _body_part(content_type: str, text: str) -> bytes:
    data = b"\r\n".join(text.encode("utf-8").splitlines()) + b"\r\n"
    if _SEVEN_BIT.fullmatch(data) and _BOUNDARY_PREFIX not in data:
        encoding = "7bit"
    else:
        # Quoted-printable never contains "=_": "=" is always followed by hex digits or CRLF.
        data = binascii.b2a_qp(data, istext=True)
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        encoding = "quoted-printable"
    head = (
        f'Content-Type: {content_type}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    return head.encode("ascii") + data


@dataclass(frozen=True, slots=True)
class ComposedEmail:
    """A message ready to submit: the envelope and the bytes (7-bit, CRLF line endings)."""

    sender: str
    recipient: str
    data: bytes


class Composer:
    """Writes the email for one recipient, with a sender and Message-ID domain fixed once.

    The `Message-ID` is derived from the notification id, so a receiver can drop duplicates;
    `Auto-Submitted: auto-generated` keeps auto-responders quiet (RFC 3834).
    """

    def __init__(self, *, sender: Mailbox, message_id_domain: str) -> None:
        if not _MESSAGE_ID_DOMAIN.fullmatch(message_id_domain):
            raise ValueError(f"message id domain {message_id_domain!r} is not a domain name")
        self.sender = sender
        self._from = f"From: {sender.header('From')}\r\n"
        self._domain = message_id_domain

    def compose(self, message: OutboundMessage, *, now: datetime | None = None) -> ComposedEmail:
        """The email for `message.to_address`, or InvalidEmail when there cannot be one."""
        if message.to_address is None:
            raise InvalidEmail("no recipient address")
        to = parse_address(message.to_address, message.to_name)
        subject = one_line(message.subject)[:MAX_SUBJECT_LENGTH]
        if not subject:
            raise InvalidEmail("empty subject")
        if not message.text.strip():
            raise InvalidEmail("empty body")
        try:
            text = _body_part("text/plain", message.text)
            html = None if message.html is None else _body_part("text/html", message.html)
        except UnicodeError as exc:
            raise InvalidEmail(f"body is not valid text: {exc}") from None
        head = (
            f"Subject: {encode_subject(subject)}\r\n"
            f"{self._from}"
            f"To: {to.header('To')}\r\n"
            f"Date: {format_datetime(now or datetime.now(UTC))}\r\n"
            f"Message-ID: <{message.notification_id}@{self._domain}>\r\n"
            "Auto-Submitted: auto-generated\r\n"
            "MIME-Version: 1.0\r\n"
        ).encode("ascii")
        if html is None:
            data = head + text
        else:
            boundary = _BOUNDARY_PREFIX + uuid.UUID(bytes=os.urandom(16)).hex.encode("ascii")
            # The CRLF before a boundary belongs to the boundary: each part keeps its own.
            data = b"".join(
                (
                    head,
                    b'Content-Type: multipart/alternative;\r\n boundary="%s"\r\n\r\n' % boundary,
                    b"--%s\r\n" % boundary,
                    text,
                    b"\r\n--%s\r\n" % boundary,
                    html,
                    b"\r\n--%s--\r\n" % boundary,
                )
            )
        return ComposedEmail(sender=self.sender.address, recipient=to.address, data=data)
