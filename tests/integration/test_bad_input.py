"""Hostile and malformed input gets a clear 4xx naming the problem, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.api import ApiUser, UserFactory

pytestmark = pytest.mark.integration

MB = 1024 * 1024


@pytest.fixture
async def user(make_user: UserFactory) -> ApiUser:
    return await make_user()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": "x" * MB}, "title"),
        ({"title": "ok", "description": "d" * 10_001}, "description"),
        ({"title": 42}, "title"),
        ({"title": ["a"]}, "title"),
        ({"title": None}, "title"),
        ({"title": "ok", "status": "blocked"}, "status"),
        ({"title": "ok", "priority": "HIGH"}, "priority"),
        ({"title": "ok", "labels": "ops"}, "labels"),
        ({"title": "ok", "labels": ["x"] * 21}, "labels"),
        ({"title": "ok", "labels": ["l" * 51]}, "labels.0"),
        ({"title": "ok", "labels": [""]}, "labels.0"),
        ({"title": "ok", "project": "Not A Slug"}, "project"),
        ({"title": "ok", "project": "a" * 64}, "project"),
        ({"title": "ok", "assignee_id": "bob"}, "assignee_id"),
        ({"title": "ok", "due_at": "2030-01-01T10:00:00"}, "due_at"),
        ({"title": "ok", "due_at": "2030-02-30T10:00:00Z"}, "due_at"),
        ({"title": "ok", "due_at": "tomorrow"}, "due_at"),
        ({"title": "ok", "due_at": "2030-01-01T10:00:00+25:00"}, "due_at"),
        ({"title": "ok", "due_at": "2030-01-01T10:00:00 Europe/Berlin"}, "due_at"),
        ({"title": "ok", "due_at": 1893456000}, "due_at"),
        ({"title": "ok", "owner_id": "00000000-0000-0000-0000-000000000000"}, "owner_id"),
        ({"title": "ok", "version": 7}, "version"),
        ({"title": "ok", "id": "00000000-0000-0000-0000-000000000000"}, "id"),
        ({"title": "nul \x00 byte"}, "title"),
        ({"title": "ok", "labels": ["\x00"]}, "labels.0"),
    ],
)
async def test_invalid_task_fields_name_the_field(
    client: httpx.AsyncClient, user: ApiUser, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/tasks", headers=user.headers, json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in problem["errors"]]
    assert field.split(".")[0] in problem["detail"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json",
        b'{"title": "unterminated',
        b"[]",
        b'"just a string"',
        b'{"title": "\\ud800 lone surrogate"}',
        b"\xff\xfe\x00garbage",
        b"",
    ],
)
async def test_malformed_bodies_are_4xx(
    client: httpx.AsyncClient, user: ApiUser, raw: bytes
) -> None:
    response = await client.post(
        "/api/v1/tasks",
        headers={**user.headers, "Content-Type": "application/json"},
        content=raw,
    )
    assert 400 <= response.status_code < 500, (raw, response.status_code, response.text)
    assert response.json()["detail"]


async def test_oversized_body_is_413(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.post(
        "/api/v1/tasks",
        headers={**user.headers, "Content-Type": "application/json"},
        content=b'{"title": "' + b"x" * (3 * MB) + b'"}',
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "title",
    [
        "Ünïcödé ✓ — 日本語のタスク",
        "emoji 🧑‍💻🚀 and RTL עברית",
        "<script>alert('x')</script>",
        "'; DROP TABLE tasks.tasks; --",
        "{{ 7*7 }} ${jndi:ldap://x}",
        "\u202eright-to-left override",
    ],
)
async def test_hostile_but_valid_text_round_trips(
    client: httpx.AsyncClient, user: ApiUser, title: str
) -> None:
    created = await client.post("/api/v1/tasks", headers=user.headers, json={"title": title})
    assert created.status_code == 201
    got = await client.get(f"/api/v1/tasks/{created.json()['id']}", headers=user.headers)
    assert got.json()["title"] == title


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"status": "blocked"},
        {"sort": "title; DROP"},
        {"due_before": "2030-01-01T00:00:00"},
        {"due_after": "not a date"},
        {"overdue": "perhaps"},
        {"assignee": "bob"},
        {"q": "x" * 201},
        {"label": "bad\x00label"},
        {"cursor": "x" * 600},
    ],
)
async def test_invalid_list_parameters_are_4xx(
    client: httpx.AsyncClient, user: ApiUser, params: dict[str, Any]
) -> None:
    response = await client.get("/api/v1/tasks", headers=user.headers, params=params)
    assert response.status_code in (400, 422), (params, response.text)


@pytest.mark.parametrize("path", ["/api/v1/tasks/not-a-uuid", "/api/v1/tasks/%00"])
async def test_bad_ids_are_4xx(client: httpx.AsyncClient, user: ApiUser, path: str) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(method, path, headers=user.headers, json={})
        assert response.status_code in (404, 422), (method, path, response.status_code)


async def test_unknown_route_and_method_are_problem_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    wrong = await client.put("/api/v1/tasks")
    assert wrong.status_code == 405


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": "long enough pw", "display_name": "A"},
        {"email": "a@example.com", "password": "x" * 2000, "display_name": "A"},
        {"email": "a@example.com", "password": "long enough pw", "display_name": "n" * 101},
        {"email": "a@example.com", "password": "long enough pw"},
        {"email": "a@example.com", "password": "long enough pw", "display_name": "\x00"},
        {"email": "a@example.com", "password": "long enough pw", "display_name": "A", "x": 1},
    ],
)
async def test_invalid_registrations_are_422(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 422, response.text
