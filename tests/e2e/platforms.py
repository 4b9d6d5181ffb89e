"""What the scenarios run against: the cluster of processes, or one `smarttasks up`.

Both are used only from outside, the way people and operators use them: HTTP under
`/api/v1` (routed per path prefix like the Ingress, in the cluster), `kubectl` for rules
in the cluster, the SMTP server or the `.eml` outbox for email, and read-only SQL on the
automation schema for what the engine scheduled.
"""

from __future__ import annotations

import asyncio
import email
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy import text
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fixtures.smtp import SmtpSink

WAIT = 30.0
"""Overall bound of anything awaited that has no tighter requirement (two loaded cores)."""
POLL = 0.05
"""Interval of the few polls (SQL, files, HTTP) where there is nothing to wait on."""


@dataclass
class Account:
    """A registered user with a fresh access token."""

    id: uuid.UUID
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Email:
    """One email as it reached its destination, and when (seconds since the epoch)."""

    arrived_at: float
    recipients: list[str]
    message: EmailMessage


@dataclass(frozen=True)
class Rule:
    """A stored rule, by the name of its object: what kubectl and /api/v1/rules/{id} address
    it by, and what firings, deliveries and webhooks report (the rules API makes it from the
    name asked for and a suffix of the owner's)."""

    name: str


@dataclass(frozen=True)
class RuleStatus:
    fired_count: int
    last_fired_at: datetime | None


class Platform(Protocol):
    """The operations the scenarios need, each done the way the platform offers it."""

    name: str

    def client(self) -> httpx.AsyncClient:
        """An HTTP client whose base URL serves every API under /api/v1."""
        ...

    @property
    def admin(self) -> Account: ...

    async def add_rule(self, owner: Account, name: str, spec: Mapping[str, Any]) -> Rule:
        """Store a rule the way an operator of this platform does; return once it is Ready."""
        ...

    async def wait_fired(self, rule: Rule, count: int, *, timeout: float = WAIT) -> RuleStatus:
        """The rule's status once it reports `count` firings."""
        ...

    async def webhook_secret(self) -> tuple[dict[str, str], str]:
        """A `secretRef` for webhook rules, and the signing key it names."""
        ...

    async def wait_for_email(self, address: str, *, timeout: float = WAIT) -> Email:
        """The first email to `address`."""
        ...

    async def emails_to(self, address: str) -> list[Email]:
        """Every email to `address` so far."""
        ...

    @property
    def database(self) -> AsyncEngine:
        """The platform's database, for read-only looks at the automation schema."""
        ...

    def check_alive(self) -> None:
        """Fail if a component process died."""
        ...

    def report(self) -> str:
        """Where the logs are, and errors logged (shown with a failed test)."""
        ...


# ---------------------------------------------------------------------------------- helpers


async def register(client: httpx.AsyncClient, *, name: str) -> tuple[str, str]:
    """Register a new account; returns its email and password."""
    address = f"{name}-{uuid.uuid4().hex[:12]}@example.com"
    password = f"correct horse {uuid.uuid4().hex[:8]}"
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": address, "password": password, "display_name": name.title()},
    )
    assert response.status_code == 201, response.text
    return address, password


async def log_in(client: httpx.AsyncClient, address: str, password: str) -> Account:
    """Log in with the OAuth2 password form, as the README shows."""
    response = await client.post(
        "/api/v1/auth/token", data={"username": address, "password": password}
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    return Account(id=uuid.UUID(me.json()["id"]), email=address, token=token)


async def new_account(client: httpx.AsyncClient, *, name: str) -> Account:
    address, password = await register(client, name=name)
    return await log_in(client, address, password)


async def until(
    probe: Callable[[], Any],
    *,
    timeout: float = WAIT,
    what: str = "the condition",
    interval: float = POLL,
) -> Any:
    """Await `probe()` (a coroutine function) until it returns something truthy, trying
    every `interval` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:.0f}s (last: {last!r})")
        await asyncio.sleep(interval)


async def schedule_entries(database: AsyncEngine, task_id: uuid.UUID) -> list[RowMapping]:
    """The engine's durable schedule entries of one task."""
    async with database.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT trigger, offset_s, deadline, slot, next_at FROM automation.schedule "
                "WHERE task_id = :task_id ORDER BY trigger, offset_s"
            ),
            {"task_id": task_id},
        )
        return list(result.mappings())


async def projected_task(database: AsyncEngine, task_id: uuid.UUID) -> RowMapping | None:
    """The engine's projection of one task (what it learnt from task events)."""
    async with database.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT version, status, due_at, deleted FROM automation.tasks "
                "WHERE task_id = :task_id"
            ),
            {"task_id": task_id},
        )
        return result.mappings().first()


async def firings_of(database: AsyncEngine, task_id: uuid.UUID) -> list[RowMapping]:
    """Every recorded firing for one task."""
    async with database.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT rule_name, trigger, occurrence, throttled, fired_at "
                "FROM automation.firings WHERE task_id = :task_id ORDER BY id"
            ),
            {"task_id": task_id},
        )
        return list(result.mappings())


async def rest_rule(
    client: httpx.AsyncClient, owner: Account, name: str, spec: Mapping[str, Any]
) -> Rule:
    """Create a rule through the rules API (it applies to `owner`'s tasks); await Ready."""
    response = await client.post(
        "/api/v1/rules", headers=owner.headers, json={"name": name, "spec": dict(spec)}
    )
    assert response.status_code == 201, response.text
    rule = Rule(name=response.json()["id"])

    async def ready() -> dict[str, Any] | None:
        got = await client.get(f"/api/v1/rules/{rule.name}", headers=owner.headers)
        assert got.status_code == 200, got.text
        verdict: dict[str, Any] = got.json()["ready"]
        assert verdict["status"] in ("True", "Unknown"), verdict
        return verdict if verdict["status"] == "True" else None

    await until(ready, what=f"rule {name} Ready")
    return rule


async def rest_rule_status(client: httpx.AsyncClient, owner: Account, rule: Rule) -> RuleStatus:
    got = await client.get(f"/api/v1/rules/{rule.name}", headers=owner.headers)
    assert got.status_code == 200, got.text
    body = got.json()
    last = body.get("last_fired_at")
    return RuleStatus(
        fired_count=int(body.get("fired_count") or 0),
        last_fired_at=datetime.fromisoformat(last) if last else None,
    )


# ------------------------------------------------------------------------------ SMTP sink


class TimedSink(SmtpSink):
    """An SMTP sink that also records when each message arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[Email] = []
        self.changed = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        arrived = time.time()
        reply = await super().handle_DATA(server, session, envelope)
        received = self.messages[-1]
        self.arrivals.append(Email(arrived, list(received.rcpt_tos), received.message))
        self.changed.set()
        return reply

    def to(self, address: str) -> list[Email]:
        return [e for e in self.arrivals if address in e.recipients]

    async def wait_for_address(self, address: str, *, timeout: float) -> Email:
        """The first message to `address`, as soon as it arrives."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.changed.clear()
                    found = self.to(address)
                    if found:
                        return found[0]
                    await self.changed.wait()
        except TimeoutError:
            others = sorted({r for e in self.arrivals for r in e.recipients})
            raise TimeoutError(
                f"no email to {address} within {timeout:.0f}s (emails arrived for: {others})"
            ) from None


# ---------------------------------------------------------------------- the .eml outbox


@dataclass
class Outbox:
    """The folder where embedded mode writes each email as an `.eml` file."""

    folder: Path
    _seen: dict[Path, Email] = field(default_factory=dict)

    def scan(self) -> list[Email]:
        if self.folder.is_dir():
            for path in sorted(self.folder.glob("*.eml")):
                if path not in self._seen:
                    # Written atomically (a rename), so a listed file is complete; its
                    # modification time is when the platform wrote it.
                    parsed = email.message_from_bytes(path.read_bytes(), policy=policy.default)
                    assert isinstance(parsed, EmailMessage)
                    recipients = [a.addr_spec for a in parsed["To"].addresses]
                    self._seen[path] = Email(path.stat().st_mtime, recipients, parsed)
        return list(self._seen.values())

    def to(self, address: str) -> list[Email]:
        return [e for e in self.scan() if address in e.recipients]

    async def wait_for(self, address: str, *, timeout: float) -> Email:
        """Poll the folder: files give no event to await."""

        async def arrived() -> Email | None:
            found = self.to(address)
            return found[0] if found else None

        found: Email = await until(arrived, timeout=timeout, what=f"an .eml file to {address}")
        return found


__all__ = [
    "POLL",
    "WAIT",
    "Account",
    "Email",
    "Outbox",
    "Platform",
    "Rule",
    "RuleStatus",
    "TimedSink",
    "firings_of",
    "log_in",
    "new_account",
    "projected_task",
    "register",
    "rest_rule",
    "rest_rule_status",
    "schedule_entries",
    "until",
]
