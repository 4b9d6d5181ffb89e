"""Who may do what to a task: anonymous / another user / owner / assignee / admin."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.fixtures.api import ApiUser, UserFactory

pytestmark = pytest.mark.integration

ROLES = ("anonymous", "other", "owner", "assignee", "admin")

EXPECTED = {
    "get": {"anonymous": 401, "other": 404, "owner": 200, "assignee": 200, "admin": 200},
    "patch": {"anonymous": 401, "other": 404, "owner": 200, "assignee": 200, "admin": 200},
    "delete": {"anonymous": 401, "other": 404, "owner": 204, "assignee": 403, "admin": 204},
    "list": {"anonymous": 401, "other": 200, "owner": 200, "assignee": 200, "admin": 200},
    "create": {"anonymous": 401, "other": 201, "owner": 201, "assignee": 201, "admin": 201},
}
LISTED = {"other": False, "owner": True, "assignee": True, "admin": True}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(EXPECTED))
async def test_authorization_matrix(
    client: httpx.AsyncClient, make_user: UserFactory, action: str, role: str
) -> None:
    owner = await make_user(name="owner")
    assignee = await make_user(name="assignee")
    actors: dict[str, ApiUser | None] = {
        "anonymous": None,
        "other": await make_user(name="other"),
        "owner": owner,
        "assignee": assignee,
        "admin": await make_user(admin=True, name="admin"),
    }
    marker = uuid.uuid4().hex
    task = (
        await client.post(
            "/api/v1/tasks",
            headers=owner.headers,
            json={"title": f"secret {marker}", "assignee_id": str(assignee.id)},
        )
    ).json()
    actor = actors[role]
    headers = actor.headers if actor else {}
    url = f"/api/v1/tasks/{task['id']}"
    if action == "get":
        response = await client.get(url, headers=headers)
    elif action == "patch":
        response = await client.patch(url, headers=headers, json={"priority": "urgent"})
    elif action == "delete":
        response = await client.delete(url, headers=headers)
    elif action == "list":
        response = await client.get("/api/v1/tasks", headers=headers, params={"q": marker})
    else:
        response = await client.post("/api/v1/tasks", headers=headers, json={"title": "mine"})
    assert response.status_code == EXPECTED[action][role], response.text

    if action == "list" and actor is not None:
        ids = [t["id"] for t in response.json()["items"]]
        assert (task["id"] in ids) is LISTED[role]
    if response.status_code in (401, 403, 404):
        # A refused request changed nothing, and a 404 does not leak the title.
        assert marker not in response.text
        current = await client.get(url, headers=owner.headers)
        assert current.status_code == 200 and current.json()["version"] == 1
