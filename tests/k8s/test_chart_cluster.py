"""End to end on a cluster with nodes: the installed chart's pods start, serve and automate.

Runs against a release installed beforehand on a real cluster, as CI's e2e job does on
kind (image built, loaded, `helm install` with charts/smarttasks/ci/kind-values.yaml next
to charts/smarttasks/ci/kind-dependencies.yaml). kind needs a Docker engine, so without
SMARTTASKS_E2E_RELEASE naming such a release these tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytestmark = pytest.mark.e2e_cluster

RELEASE = os.environ.get("SMARTTASKS_E2E_RELEASE", "")
NAMESPACE = os.environ.get("SMARTTASKS_E2E_NAMESPACE", "default")
COMPONENTS = ("users", "tasks", "rules-api", "notifications", "operator", "relay")
TIMEOUT = 180.0

if not RELEASE:
    pytest.skip(
        "needs a Kubernetes cluster with nodes and the chart installed (kind, which needs a "
        "Docker engine): set SMARTTASKS_E2E_RELEASE and SMARTTASKS_E2E_NAMESPACE, as the "
        "e2e job of .github/workflows/ci.yml does",
        allow_module_level=True,
    )


def kubectl(*args: str, input: str | None = None) -> str:  # noqa: A002 - as subprocess.run
    binary = shutil.which("kubectl")
    assert binary, "kubectl is not on PATH"
    proc = subprocess.run(
        [binary, "--namespace", NAMESPACE, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 30,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)}:\n{proc.stderr}"
    return proc.stdout


def name(component: str) -> str:
    """The chart's name for a component's objects (its fullname rule)."""
    prefix = RELEASE if "smarttasks" in RELEASE else f"{RELEASE}-smarttasks"
    return f"{prefix}-{component}"


@contextmanager
def port_forward(service: str, port: int) -> Iterator[str]:
    """`kubectl port-forward` to a Service; yields its local base URL."""
    binary = shutil.which("kubectl")
    assert binary, "kubectl is not on PATH"
    proc = subprocess.Popen(
        [binary, "--namespace", NAMESPACE, "port-forward", f"svc/{service}", f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"port-forward said: {line!r}"
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def eventually(check: Any, *, timeout: float = TIMEOUT, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout:.0f}s: {check.__doc__ or check}")
        time.sleep(interval)


def test_every_component_rolls_out() -> None:
    for component in COMPONENTS:
        kubectl("rollout", "status", f"deployment/{name(component)}", f"--timeout={TIMEOUT:.0f}s")


@pytest.fixture(scope="module")
def token() -> Iterator[str]:
    import httpx

    email = f"e2e-{uuid.uuid4().hex[:8]}@example.com"
    password = "correct horse battery staple"
    with port_forward(name("users"), 8000) as users, httpx.Client(base_url=users) as http:
        registered = http.post(
            "/api/v1/auth/register",
            json={"email": email, "password": password, "display_name": "E2E"},
        )
        assert registered.status_code == 201, registered.text
        issued = http.post("/api/v1/auth/token", data={"username": email, "password": password})
        assert issued.status_code == 200, issued.text
        jwks = http.get("/.well-known/jwks.json")
        assert jwks.status_code == 200 and jwks.json()["keys"]
        yield str(issued.json()["access_token"])


def test_tasks_service_accepts_a_token_of_the_users_service(token: str) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    with port_forward(name("tasks"), 8000) as tasks, httpx.Client(base_url=tasks) as http:
        created = http.post(
            "/api/v1/tasks",
            headers=headers,
            json={"title": "Ship it", "priority": "high", "project": "e2e"},
        )
        assert created.status_code == 201, created.text
        listed = http.get("/api/v1/tasks", headers=headers, params={"project": "e2e"})
        assert listed.status_code == 200
        assert any(task["title"] == "Ship it" for task in listed.json()["items"])


def _apply_rule(rule_name: str, spec: dict[str, Any]) -> None:
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "smarttasks.io/v1alpha1",
                "kind": "AutomationRule",
                "metadata": {"name": rule_name},
                "spec": spec,
            }
        ),
    )


def test_the_operator_compiles_an_applied_rule() -> None:
    rule = f"e2e-{uuid.uuid4().hex[:8]}"
    _apply_rule(
        rule,
        {
            "description": "end-to-end: is it compiled",
            "trigger": {"event": "TaskCompleted"},
            "actions": [{"notify": {"channel": "email", "to": ["owner"], "subject": "done"}}],
        },
    )
    kubectl(
        "wait",
        f"automationrule/{rule}",
        "--for=jsonpath={.status.conditions[?(@.type=='Ready')].status}=True",
        f"--timeout={TIMEOUT:.0f}s",
    )


def test_a_created_task_fires_a_rule_that_emails_through_smtp(token: str) -> None:
    import httpx

    marker = uuid.uuid4().hex[:8]
    recipient = f"ops-{marker}@example.com"
    rule = f"e2e-email-{marker}"
    _apply_rule(
        rule,
        {
            "description": "end-to-end: email on a new task",
            "trigger": {"event": "TaskCreated"},
            "match": {"projects": [f"e2e-{marker}"]},
            "actions": [
                {
                    "notify": {
                        "channel": "email",
                        "to": [recipient],
                        "subject": "New: {{ task.title }}",
                        "body": "{{ task.title }} was created.",
                    }
                }
            ],
        },
    )
    kubectl(
        "wait",
        f"automationrule/{rule}",
        "--for=jsonpath={.status.conditions[?(@.type=='Ready')].status}=True",
        f"--timeout={TIMEOUT:.0f}s",
    )
    headers = {"Authorization": f"Bearer {token}"}
    with port_forward(name("tasks"), 8000) as tasks, httpx.Client(base_url=tasks) as http:
        created = http.post(
            "/api/v1/tasks",
            headers=headers,
            json={"title": f"Task {marker}", "project": f"e2e-{marker}"},
        )
        assert created.status_code == 201, created.text

    with port_forward("mailpit", 8025) as mailpit, httpx.Client(base_url=mailpit) as http:

        def delivered() -> bool:
            """the email reached the SMTP server"""
            found = http.get("/api/v1/search", params={"query": f"to:{recipient}"}).json()
            return any(f"Task {marker}" in m["Subject"] for m in found.get("messages", []))

        eventually(delivered)
