"""The embedded platform keeps its data across a restart and stops PostgreSQL on Ctrl-C."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.server import EmbeddedProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_data_survives_a_restart(embedded_process: EmbeddedProcess) -> None:
    embedded_process.start()
    email = "restart@example.com"
    password = "a long enough password"
    with httpx.Client(base_url=embedded_process.url, timeout=10) as client:
        created = client.post(
            "/api/v1/auth/register",
            json={"email": email, "password": password, "display_name": "R"},
        )
        assert created.status_code == 201
        token = client.post(
            "/api/v1/auth/token", data={"username": email, "password": password}
        ).json()["access_token"]
        task = client.post(
            "/api/v1/tasks",
            headers={"Authorization": f"Bearer {token}"},
            json={"title": "Survive a restart", "due_at": "2030-01-01T09:00:00+01:00"},
        ).json()

    assert embedded_process.stop() == 0
    pid_file = embedded_process.data_dir / "pgdata" / "postmaster.pid"
    assert not pid_file.exists(), "PostgreSQL must stop with the platform"

    embedded_process.start()
    with httpx.Client(base_url=embedded_process.url, timeout=10) as client:
        # The signing key persisted too: the token from before the restart still verifies.
        same = client.get(
            f"/api/v1/tasks/{task['id']}", headers={"Authorization": f"Bearer {token}"}
        )
        assert same.status_code == 200
        assert same.json()["title"] == "Survive a restart"
        relogin = client.post("/api/v1/auth/token", data={"username": email, "password": password})
        assert relogin.status_code == 200
