"""`smarttasks users create-admin` against the embedded database, then used through the API."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from tests.fixtures.server import SMARTTASKS, EmbeddedProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "an administrator password"


def _create_admin(data_dir: str, email: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SMARTTASKS), "users", "create-admin", "--email", email, "--data-dir", data_dir],
        env={**os.environ, "SMARTTASKS_ADMIN_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_create_admin_then_log_in(embedded_process: EmbeddedProcess) -> None:
    data_dir = str(embedded_process.data_dir)
    created = _create_admin(data_dir, "root@example.com", PASSWORD)
    assert created.returncode == 0, created.stderr
    assert "root@example.com" in created.stdout

    again = _create_admin(data_dir, "root@example.com", PASSWORD)
    assert again.returncode == 1 and "already exists" in again.stderr
    weak = _create_admin(data_dir, "other@example.com", "short")
    assert weak.returncode == 1 and "password" in weak.stderr

    embedded_process.start()
    with httpx.Client(base_url=embedded_process.url) as client:
        token = client.post(
            "/api/v1/auth/token", data={"username": "root@example.com", "password": PASSWORD}
        ).json()["access_token"]
        users = client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"})
        assert users.status_code == 200
        assert [u["is_admin"] for u in users.json()["items"]] == [True]


def test_create_admin_without_a_password_source_refuses(embedded_process: EmbeddedProcess) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SMARTTASKS_ADMIN_PASSWORD"}
    result = subprocess.run(
        [
            str(SMARTTASKS),
            "users",
            "create-admin",
            "--email",
            "x@example.com",
            "--data-dir",
            str(embedded_process.data_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "SMARTTASKS_ADMIN_PASSWORD" in result.stderr
