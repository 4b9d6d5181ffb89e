"""Cluster mode for the scenarios: every component its own process, wired as the chart does.

users, tasks, rules-api, notifications, operator (with the automation engine) and relay
each run as ``smarttasks run <component>`` against a database of their own on the
session's PostgreSQL, a virtual host of their own on the session's RabbitMQ, the test
Kubernetes API server (one namespace, served by the operator and the rules API) and an
aiosmtpd server. The migration runs first, as the chart's hook Job does; an administrator
is created with ``smarttasks users create-admin`` and its token is the notification
service's credential for the users API. Requests go through a small in-process ingress
that routes ``/api/v1/...`` by prefix, like the chart's Ingress.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from smarttasks.automation import API_GROUP, API_VERSION
from smarttasks.core.db import create_engine
from tests.e2e.platforms import WAIT, Account, Email, Rule, RuleStatus, TimedSink, log_in
from tests.fixtures.amqp import RabbitNode
from tests.fixtures.k8s import ControlPlane
from tests.fixtures.ports import free_port
from tests.fixtures.processes import (
    START_TIMEOUT,
    ComponentProcess,
    component_env,
    smarttasks_command,
)
from tests.fixtures.smtp import SmtpServer

HTTP_COMPONENTS = ("users", "tasks", "rules-api", "notifications")
# Path prefixes and the component serving them: the chart's Ingress (and compose's nginx).
INGRESS = {
    "/api/v1/auth": "users",
    "/api/v1/users": "users",
    "/.well-known/jwks.json": "users",
    "/api/v1/tasks": "tasks",
    "/api/v1/rules": "rules-api",
    "/api/v1/notifications": "notifications",
}
ENGINE_CONSUMER = "automation.engine"
NOTIFICATIONS_CONSUMER = "notifications"
STATUS_INTERVAL = "0.5"
"""Seconds between rule status flushes (5 by default); short, so the test sees it soon."""
MIGRATE_TIMEOUT = 180.0


class Ingress(httpx.AsyncBaseTransport):
    """Sends each request to the component that serves its path prefix."""

    def __init__(self, routes: Mapping[str, str]) -> None:
        self._routes = sorted(routes.items(), key=lambda item: -len(item[0]))
        self._transport = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for prefix, target in self._routes:
            if request.url.path.startswith(prefix):
                upstream = httpx.URL(target)
                request.url = request.url.copy_with(
                    scheme=upstream.scheme, host=upstream.host, port=upstream.port
                )
                request.headers["Host"] = f"{upstream.host}:{upstream.port}"
                return await self._transport.handle_async_request(request)
        return httpx.Response(404, json={"detail": f"no route for {request.url.path}"})

    async def aclose(self) -> None:
        await self._transport.aclose()


@dataclass
class ClusterPlatform:
    """The running cluster, as the scenarios use it."""

    k8s: ControlPlane
    namespace: str
    urls: dict[str, str]
    processes: dict[str, ComponentProcess]
    smtp: TimedSink
    database: AsyncEngine
    admin: Account
    metrics_urls: dict[str, str] = field(default_factory=dict)
    """Prometheus endpoints of the processes that serve no API (relay, operator)."""
    name: str = "cluster"
    _rules: dict[str, Rule] = field(default_factory=dict)

    def client(self) -> httpx.AsyncClient:
        routes = {prefix: self.urls[component] for prefix, component in INGRESS.items()}
        return httpx.AsyncClient(
            base_url="http://smarttasks.test", transport=Ingress(routes), timeout=WAIT
        )

    async def kubectl(self, *args: str, input: str | None = None) -> str:  # noqa: A002
        """kubectl in a thread, so that the SMTP server on this loop keeps answering."""
        done = await asyncio.to_thread(self.k8s.kubectl, *args, input=input)
        return done.stdout

    async def add_rule(self, owner: Account, name: str, spec: Mapping[str, Any]) -> Rule:
        """`kubectl apply` an AutomationRule (it applies to every task it matches), then
        wait for the operator to report it Ready."""
        manifest = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "AutomationRule",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": dict(spec),
        }
        await self.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        await self.kubectl(
            "wait", "-n", self.namespace, f"automationrule/{name}",
            "--for=condition=Ready=True", f"--timeout={int(WAIT)}s",
        )  # fmt: skip
        return Rule(name=name)

    async def wait_fired(self, rule: Rule, count: int, *, timeout: float = WAIT) -> RuleStatus:
        """Watch the rule (kubectl wait) until its status says `count` firings."""
        await self.kubectl(
            "wait", "-n", self.namespace, f"automationrule/{rule.name}",
            f"--for=jsonpath={{.status.firedCount}}={count}", f"--timeout={int(timeout)}s",
        )  # fmt: skip
        found = await self.kubectl(
            "get", "-n", self.namespace, f"automationrule/{rule.name}", "-o=json"
        )
        obj = json.loads(found)
        status = obj.get("status") or {}
        last = status.get("lastFiredAt")
        return RuleStatus(
            fired_count=int(status.get("firedCount") or 0),
            last_fired_at=datetime.fromisoformat(last.replace("Z", "+00:00")) if last else None,
        )

    async def webhook_secret(self) -> tuple[dict[str, str], str]:
        """A Kubernetes Secret in the rules' namespace holding a fresh signing key."""
        name = f"hook-{uuid.uuid4().hex[:8]}"
        key = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        await self.kubectl(
            "create", "secret", "generic", name, "-n", self.namespace,
            f"--from-literal=signing-key={key}",
        )  # fmt: skip
        return {"name": name, "key": "signing-key"}, key

    async def wait_for_email(self, address: str, *, timeout: float = WAIT) -> Email:
        return await self.smtp.wait_for_address(address, timeout=timeout)

    async def emails_to(self, address: str) -> list[Email]:
        return self.smtp.to(address)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if not p.running}
        assert not dead, f"components exited: {dead}"

    async def kill(self, name: str) -> None:
        """SIGKILL one component, as a node failure or the OOM killer would, and await its end."""
        process = self.processes[name]
        assert process.running and process.pid is not None, f"{name} is not running"
        os.kill(process.pid, signal.SIGKILL)
        status = await process.wait_exit(timeout=WAIT)
        assert status == -signal.SIGKILL, f"{name} ended with status {status}"

    async def restart(self, name: str, *, timeout: float = START_TIMEOUT) -> float:
        """Start a stopped component again, as its Deployment would; return once it is ready
        (what start-up awaits) and say how long that took."""
        old = self.processes[name]
        assert not old.running, f"{name} is still running"
        process = ComponentProcess(name, old.args, env=old.env, log_path=old.log_path)
        self.processes[name] = process
        started = time.monotonic()
        await process.start()
        await component_ready(name, process, self.urls, timeout=timeout)
        return time.monotonic() - started

    def report(self) -> str:
        """Each component's log file and the errors it logged (for a failed test)."""
        lines = []
        for name, process in self.processes.items():
            state = "running" if process.running else f"exited {process.returncode}"
            lines.append(f"{name} ({state}): {process.log_path}")
            for record in process.errors()[-5:]:
                lines.append(f"  {json.dumps(record)[:2000]}")
        return "\n".join(lines)


async def component_ready(
    name: str,
    process: ComponentProcess,
    urls: Mapping[str, str],
    *,
    timeout: float = START_TIMEOUT,
) -> None:
    """Return once a component does its work: HTTP components answer /readyz; the relay
    publishes; the operator's engine runs (after its gate) and consumes task events; the
    notification service consumes requests (its queue exists from then on: requests
    published earlier would be unrouted) and runs its delivery workers."""
    waits: list[Awaitable[object]] = []
    if name in urls:
        waits.append(process.wait_http_ready(f"{urls[name]}/readyz", timeout=timeout))
    if name == "relay":
        waits.append(process.wait_for_event("relay_started", timeout=timeout))
    if name == "operator":
        waits += [
            process.wait_for_event("automation_engine_started", timeout=timeout),
            process.wait_for_event("consumer_started", consumer=ENGINE_CONSUMER, timeout=timeout),
        ]
    if name == "notifications":
        waits += [
            process.wait_for_event(
                "consumer_started", consumer=NOTIFICATIONS_CONSUMER, timeout=timeout
            ),
            process.wait_for_event("delivery_worker_started", timeout=timeout),
        ]
    await asyncio.gather(*waits)


def create_database(server_url: str, name: str) -> str:
    """A new, empty database on the server of `server_url`; returns its URL."""
    url = make_url(server_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def running_cluster(
    *,
    server_url: str,
    rabbitmq: RabbitNode,
    k8s: ControlPlane,
    workdir: Path,
    sink: TimedSink | None = None,
) -> AsyncIterator[ClusterPlatform]:
    """Start every component as its own process; stop them all (SIGTERM) afterwards.

    `sink` receives what the SMTP server accepts (a fresh `TimedSink` by default).
    """
    suffix = uuid.uuid4().hex[:8]
    namespace = f"e2e-{suffix}"
    logs = workdir / "logs"
    processes: dict[str, ComponentProcess] = {}
    sink = sink if sink is not None else TimedSink()
    smtp = SmtpServer(sink)
    database: AsyncEngine | None = None
    try:
        vhost = asyncio.create_task(asyncio.to_thread(rabbitmq.add_vhost, f"e2e-{suffix}"))
        created_namespace = asyncio.create_task(
            asyncio.to_thread(k8s.kubectl, "create", "namespace", namespace)
        )
        database_url = await asyncio.to_thread(create_database, server_url, f"e2e_{suffix}")
        await smtp.start()

        # The schema first, as the chart's pre-install hook does.
        migrate = ComponentProcess(
            "migrate",
            smarttasks_command("run", "migrate"),
            env=component_env(database_url=database_url),
            log_path=logs / "migrate.log",
        )
        await migrate.start()
        status = await migrate.wait_exit(timeout=MIGRATE_TIMEOUT)
        assert status == 0, f"migration failed:\n{migrate.tail()}"
        amqp_url = await vhost
        await created_namespace

        ports = {name: free_port() for name in HTTP_COMPONENTS}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        common = {
            "environment": "test",
            "database_url": database_url,
            "jwks_url": f"{urls['users']}/.well-known/jwks.json",
        }
        messaging = {
            "amqp_url": amqp_url,
            "amqp_reconnect_seconds": "0.5",
            "consumer_retry_delays_seconds": "0.5,1",
        }
        metrics_ports = {"relay": free_port(), "operator": free_port()}
        token_file = workdir / "users-api-token"
        environments: dict[str, dict[str, str]] = {
            "users": component_env(
                **common, signing_key_file=str(workdir / "jwt" / "signing-key.pem")
            ),
            "tasks": component_env(**common),
            "rules-api": component_env(
                **common, rules_namespace=namespace, rules_kubeconfig=str(k8s.kubeconfig)
            ),
            "notifications": component_env(
                **common,
                **messaging,
                smtp_host=smtp.host,
                smtp_port=str(smtp.port),
                smtp_security="none",
                users_api_url=urls["users"],
                users_api_token_file=str(token_file),
                secret_source="kubernetes",
                # Loopback targets (the test's receiver) are refused unless allowed.
                webhook_allow_private="true",
                KUBECONFIG=str(k8s.kubeconfig),
            ),
            "relay": component_env(**common, **messaging, metrics_port=str(metrics_ports["relay"])),
            "operator": component_env(
                **common,
                **messaging,
                operator_kubeconfig=str(k8s.kubeconfig),
                operator_namespaces=namespace,
                operator_peering_mode="standalone",
                operator_liveness_port=str(free_port()),
                metrics_port=str(metrics_ports["operator"]),
                engine_status_interval_seconds=STATUS_INTERVAL,
            ),
        }
        for name, env in environments.items():
            args = ["run", name]
            if name in ports:
                args += ["--host", "127.0.0.1", "--port", str(ports[name])]
            processes[name] = ComponentProcess(
                name, smarttasks_command(*args), env=env, log_path=logs / f"{name}.log"
            )
        await asyncio.gather(*(process.start() for process in processes.values()))

        async def users_and_admin() -> Account:
            await processes["users"].wait_http_ready(f"{urls['users']}/readyz")
            password = secrets.token_urlsafe(16)
            address = f"admin-{suffix}@example.com"
            create_admin = ComponentProcess(
                "create-admin",
                smarttasks_command("users", "create-admin", "--email", address),
                env=component_env(database_url=database_url, SMARTTASKS_ADMIN_PASSWORD=password),
                log_path=logs / "create-admin.log",
            )
            await create_admin.start()
            status = await create_admin.wait_exit()
            assert status == 0, create_admin.tail()
            async with httpx.AsyncClient(base_url=urls["users"], timeout=WAIT) as client:
                admin = await log_in(client, address, password)
            # The notification service's credential for the users API (re-read on change).
            token_file.write_text(admin.token)
            token_file.chmod(0o600)
            return admin

        admin, _ = await asyncio.gather(
            users_and_admin(),
            asyncio.gather(
                *(
                    component_ready(name, process, urls)
                    for name, process in processes.items()
                    if name != "users"
                )
            ),
        )
        database = create_engine(database_url, pool_size=2)
        yield ClusterPlatform(
            k8s=k8s,
            namespace=namespace,
            urls=urls,
            processes=processes,
            smtp=sink,
            database=database,
            admin=admin,
            metrics_urls={
                name: f"http://127.0.0.1:{port}/metrics" for name, port in metrics_ports.items()
            },
        )
    finally:
        operator_process = processes.get("operator")
        if operator_process is not None and operator_process.running:
            # While the operator still runs, so that it releases its finalizers: no rule
            # is left behind for operators started later in the session.
            deleted = await asyncio.to_thread(
                k8s.kubectl, "delete", "automationrules", "--all", "-n", namespace,
                "--timeout=30s", check=False,
            )  # fmt: skip
            (logs / "kubectl-delete-rules.log").write_text(deleted.stdout + deleted.stderr)
        await asyncio.gather(
            *(process.stop() for process in processes.values()), return_exceptions=True
        )
        await smtp.stop()
        if database is not None:
            await database.dispose()
        await asyncio.to_thread(
            k8s.kubectl, "delete", "namespace", namespace, "--wait=false", "--ignore-not-found",
            check=False,
        )  # fmt: skip
