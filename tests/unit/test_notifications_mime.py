"""Emails written as bytes: what any mail parser reads back, and what it never sees."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smarttasks.notifications.channels import OutboundMessage
from smarttasks.notifications.channels.mime import (
    MAX_SUBJECT_LENGTH,
    Composer,
    InvalidEmail,
    encode_subject,
    one_line,
    parse_address,
    parse_mailbox,
)

NOTIFICATION = uuid.UUID("00000000-0000-4000-8000-000000000001")
COMPOSER = Composer(
    sender=parse_mailbox("SmartTasks <notifications@smarttasks.local>"),
    message_id_domain="smarttasks.local",
)


def message(**fields: object) -> OutboundMessage:
    values: dict[str, object] = {
        "notification_id": NOTIFICATION,
        "delivery_id": uuid.uuid4(),
        "subject": "Overdue: Renew the TLS certificate",
        "text": "Hello,\nRenew the TLS certificate is overdue.\n",
        "html": "<p>Hello</p>",
        "to_address": "ada@example.com",
        "to_name": "Ada Lovelace",
    }
    values.update(fields)
    return OutboundMessage(**values)  # type: ignore[arg-type]


def parsed(data: bytes) -> EmailMessage:
    email = message_from_bytes(data, policy=policy.default)
    assert isinstance(email, EmailMessage)
    return email


def assert_wire_safe(data: bytes) -> None:
    """7-bit, CRLF only, no line over 998 octets: any relay accepts it as it is."""
    assert data.isascii()
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.endswith(b"\r\n")


def test_plain_message_has_every_header_and_both_parts() -> None:
    when = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    data = COMPOSER.compose(message(), now=when).data
    assert_wire_safe(data)
    email = parsed(data)
    assert email["Subject"] == "Overdue: Renew the TLS certificate"
    assert email["From"] == "SmartTasks <notifications@smarttasks.local>"
    assert email["To"] == "Ada Lovelace <ada@example.com>"
    assert email["Date"] == "Thu, 26 Nov 2026 10:00:00 +0000"
    assert email["Message-ID"] == f"<{NOTIFICATION}@smarttasks.local>"
    assert email["Auto-Submitted"] == "auto-generated"
    assert email.get_content_type() == "multipart/alternative"
    text, html = email.get_body(("plain",)), email.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == "Hello,\r\nRenew the TLS certificate is overdue.\r\n"
    assert text["Content-Transfer-Encoding"] == "7bit"
    assert html.get_content() == "<p>Hello</p>\r\n"
    assert all(not part.defects for part in email.walk())


def test_without_html_the_message_is_a_single_text_part() -> None:
    email = parsed(COMPOSER.compose(message(html=None)).data)
    assert email.get_content_type() == "text/plain" and not email.is_multipart()
    assert email.get_content() == "Hello,\r\nRenew the TLS certificate is overdue.\r\n"


def test_long_or_non_ascii_bodies_are_quoted_printable() -> None:
    long_line = "word " * 40
    body = f"Prüfung\n{long_line}\n.\n--=_not-a-boundary\n"
    data = COMPOSER.compose(message(text=body, html=body)).data
    assert_wire_safe(data)
    email = parsed(data)
    text = email.get_body(("plain",))
    assert text is not None and text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_content().replace("\r\n", "\n") == body
    assert len(list(email.iter_parts())) == 2  # the boundary-like line did not split a part


def test_long_subjects_are_folded_and_unfold_to_the_original() -> None:
    words = " ".join(f"word{n}" for n in range(120))
    assert encode_subject(words).count("\r\n ") >= 10
    unbroken = "x" * 990  # no place to fold: encoded words instead
    for subject in (words, unbroken, "=?utf-8?q?looks_encoded?="):
        data = COMPOSER.compose(message(subject=subject)).data
        assert_wire_safe(data)
        assert parsed(data)["Subject"] == subject


def test_display_names_with_specials_are_quoted() -> None:
    email = parsed(COMPOSER.compose(message(to_name='O\'Brien, "Pat" (ops)')).data)
    [address] = email["To"].addresses
    assert address.display_name == 'O\'Brien, "Pat" (ops)'
    assert address.addr_spec == "ada@example.com"


def test_internationalised_domains_are_written_in_idna_form() -> None:
    composed = COMPOSER.compose(message(to_address="zoe@bücher.example"))
    assert composed.recipient == "zoe@xn--bcher-kva.example"
    assert parsed(composed.data)["To"].addresses[0].addr_spec == "zoe@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "address",
    ["", "plain", "a b@example.com", "x@y\nBcc: z@example.com", "@example.com", "a@", "a@localhost",
     "a" * 250 + "@example.com", "a@exa\x00mple.com", "zoë@example.com", "a@b..c", "a.@b.c",
     "<a@b.c>", "a@b.c>"],
)  # fmt: skip
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidEmail):
        parse_address(address)


def test_unusual_but_valid_addresses_are_accepted() -> None:
    for address in ("o'brien+tag@example.com", "a!#$%&*/=?^_`{|}~-@x.example", '"a.b"@x.example'):
        assert parse_address(address).address.endswith(("example.com", "x.example"))


def test_message_id_domain_must_be_a_domain() -> None:
    sender = parse_mailbox("n@smarttasks.local")
    for domain in ("", "bad domain", "x>y", "a@b"):
        with pytest.raises(ValueError, match="not a domain"):
            Composer(sender=sender, message_id_domain=domain)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(min_size=1, max_size=1200).filter(lambda s: one_line(s) != ""),
    name=st.text(max_size=120),
    text=st.text(min_size=1, max_size=3000).filter(lambda s: s.strip() != ""),
    html=st.none() | st.text(max_size=3000),
)
def test_any_text_survives_the_trip_and_never_breaks_the_headers(
    subject: str, name: str, text: str, html: str | None
) -> None:
    try:
        composed = COMPOSER.compose(message(subject=subject, to_name=name, text=text, html=html))
    except InvalidEmail as exc:
        assert "not valid text" in str(exc)  # lone surrogates only
        return
    assert_wire_safe(composed.data)
    email = parsed(composed.data)
    assert email["Subject"] == one_line(subject)[:MAX_SUBJECT_LENGTH]
    # The legacy decoder: the header parser of Python 3.11 keeps the space between two
    # encoded words of a display name, which RFC 2047 says to drop.
    raw_to = message_from_bytes(composed.data, policy=policy.compat32)["To"]
    display_name, address = parseaddr(raw_to.replace("\r\n", ""))
    assert str(make_header(decode_header(display_name))) == one_line(name)
    assert address == "ada@example.com"
    single = {"Content-Transfer-Encoding"} if html is None else set()
    assert set(email.keys()) == {"Subject", "From", "To", "Date", "Message-ID", "Auto-Submitted",
                                 "MIME-Version", "Content-Type"} | single  # fmt: skip
    plain = email.get_body(("plain",))
    assert plain is not None
    # Line breaks become CRLF (any of CR, LF, CRLF in the source); nothing else changes.
    assert plain.get_content() == _crlf_normalised(text)
    if html is not None:
        part = email.get_body(("html",))
        assert part is not None and part.get_content() == _crlf_normalised(html)


def _crlf_normalised(text: str) -> str:
    lines = text.encode("utf-8").splitlines()
    return (b"\r\n".join(lines) + b"\r\n").decode("utf-8")
