"""The tasks API against the real PostgreSQL: lifecycle, filters, concurrency, events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.tasks.models import outbox
from tests.fixtures.api import ApiUser, UserFactory

pytestmark = pytest.mark.integration


async def create(client: httpx.AsyncClient, user: ApiUser, **fields: Any) -> dict[str, Any]:
    body = {"title": "A task", **fields}
    response = await client.post("/api/v1/tasks", headers=user.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def events_for(
    sessions: async_sessionmaker[AsyncSession], task_id: str
) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await session.execute(
            select(outbox.c.routing_key, outbox.c.payload)
            .where(outbox.c.aggregate_id == uuid.UUID(task_id))
            .order_by(outbox.c.seq)
        )
        return [{"key": key, **payload} for key, payload in rows]


async def test_create_get_update_delete(
    client: httpx.AsyncClient, make_user: UserFactory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await make_user()
    assignee = await make_user()
    task = await create(
        client,
        owner,
        title="Renew the certificate",
        description="Wildcard cert",
        priority="high",
        labels=["ops", "customer", "ops"],
        project="apollo",
        due_at="2030-03-30T01:30:00+02:00",
        assignee_id=str(assignee.id),
    )
    assert task["owner_id"] == str(owner.id)
    assert task["labels"] == ["ops", "customer"]
    assert task["status"] == "todo" and task["version"] == 1
    assert datetime.fromisoformat(task["due_at"]) == datetime(2030, 3, 29, 23, 30, tzinfo=UTC)

    got = await client.get(f"/api/v1/tasks/{task['id']}", headers=owner.headers)
    assert got.status_code == 200 and got.headers["etag"] == '"1"'

    done = await client.patch(
        f"/api/v1/tasks/{task['id']}",
        headers={**assignee.headers, "If-Match": '"1"'},
        json={"status": "done"},
    )
    assert done.status_code == 200, done.text
    assert done.json()["completed_at"] is not None and done.json()["version"] == 2

    reopened = await client.patch(
        f"/api/v1/tasks/{task['id']}", headers=owner.headers, json={"status": "in_progress"}
    )
    assert reopened.json()["completed_at"] is None

    deleted = await client.delete(f"/api/v1/tasks/{task['id']}", headers=owner.headers)
    assert deleted.status_code == 204
    gone = await client.get(f"/api/v1/tasks/{task['id']}", headers=owner.headers)
    assert gone.status_code == 404

    events = await events_for(sessions, task["id"])
    assert [e["key"] for e in events] == [
        "task.created",
        "task.completed",
        "task.updated",
        "task.deleted",
    ]
    assert events[1]["changes"] == {"status": ["todo", "done"]}
    assert events[1]["data"]["version"] == 2
    assert events[1]["actor"]["user_id"] == str(assignee.id)
    assert len({e["id"] for e in events}) == 4


async def test_assigning_emits_task_assigned_and_noop_patch_emits_nothing(
    client: httpx.AsyncClient, make_user: UserFactory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await make_user()
    other = await make_user()
    task = await create(client, owner)
    same = await client.patch(
        f"/api/v1/tasks/{task['id']}", headers=owner.headers, json={"title": "A task"}
    )
    assert same.json()["version"] == 1
    await client.patch(
        f"/api/v1/tasks/{task['id']}", headers=owner.headers, json={"assignee_id": str(other.id)}
    )
    keys = [e["key"] for e in await events_for(sessions, task["id"])]
    assert keys == ["task.created", "task.assigned"]


async def test_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    owner = await make_user()
    task = await create(client, owner)
    url = f"/api/v1/tasks/{task['id']}"
    first = await client.patch(
        url, headers={**owner.headers, "If-Match": '"1"'}, json={"title": "B"}
    )
    assert first.status_code == 200
    stale = await client.patch(
        url, headers={**owner.headers, "If-Match": '"1"'}, json={"title": "C"}
    )
    assert stale.status_code == 412
    assert (await client.get(url, headers=owner.headers)).json()["title"] == "B"
    bad = await client.patch(url, headers={**owner.headers, "If-Match": "yesterday"}, json={})
    assert bad.status_code == 400


async def test_required_fields_cannot_be_cleared(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    owner = await make_user()
    task = await create(client, owner, due_at="2030-01-01T00:00:00Z")
    url = f"/api/v1/tasks/{task['id']}"
    refused = await client.patch(url, headers=owner.headers, json={"title": None})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "title"
    cleared = await client.patch(url, headers=owner.headers, json={"due_at": None})
    assert cleared.status_code == 200 and cleared.json()["due_at"] is None


async def test_filters(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    owner = await make_user()
    helper = await make_user()
    now = datetime.now(UTC)
    past = (now - timedelta(hours=2)).isoformat()
    future = (now + timedelta(days=2)).isoformat()
    overdue = await create(client, owner, title="Pay the invoice", due_at=past, project="apollo")
    await create(client, owner, title="Done already", due_at=past, status="done")
    later = await create(client, owner, title="Plan 100% of Q3", due_at=future, labels=["planning"])
    mine = await create(client, owner, title="Review", assignee_id=str(helper.id))

    async def titles(**params: Any) -> set[str]:
        response = await client.get("/api/v1/tasks", headers=owner.headers, params=params)
        assert response.status_code == 200, response.text
        return {t["title"] for t in response.json()["items"]}

    assert await titles(overdue="true") == {overdue["title"]}
    assert await titles(project="apollo") == {overdue["title"]}
    assert await titles(label="planning") == {later["title"]}
    assert await titles(q="100%") == {later["title"]}
    assert await titles(q="_") == set()
    assert await titles(status="done") == {"Done already"}
    assert await titles(status=["todo", "done"], due_before=now.isoformat()) == {
        "Pay the invoice",
        "Done already",
    }
    assert await titles(due_after=now.isoformat()) == {later["title"]}
    assert await titles(assignee=str(helper.id)) == {mine["title"]}
    helper_view = await client.get(
        "/api/v1/tasks", headers=helper.headers, params={"assignee": "me"}
    )
    assert [t["title"] for t in helper_view.json()["items"]] == ["Review"]


@pytest.mark.parametrize("sort", ["created_at", "-created_at", "due_at", "-due_at", "-updated_at"])
async def test_pagination_visits_every_task_once(
    client: httpx.AsyncClient, make_user: UserFactory, sort: str
) -> None:
    owner = await make_user()
    base = datetime(2031, 1, 1, tzinfo=UTC)
    ids = set()
    for i in range(23):
        # Ties and nulls on purpose: several tasks share a deadline, some have none.
        due = None if i % 5 == 0 else (base + timedelta(hours=i // 3)).isoformat()
        ids.add((await create(client, owner, title=f"t{i}", due_at=due))["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4, "sort": sort}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/tasks", headers=owner.headers, params=params)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 23
    assert set(seen) == ids


async def test_pagination_under_concurrent_inserts_neither_skips_nor_repeats(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    owner = await make_user()
    before = {(await create(client, owner, title=f"old {i}"))["id"] for i in range(15)}
    seen: list[str] = []
    cursor = None
    inserted = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "sort": "created_at"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/v1/tasks", headers=owner.headers, params=params)).json()
        seen += [t["id"] for t in page["items"]]
        # Someone keeps adding tasks while we page through.
        await create(client, owner, title=f"new {inserted}")
        inserted += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)), "a task was returned twice"
    assert before <= set(seen), "a task that existed before paging started was skipped"


async def test_bad_cursor_is_400(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    owner = await make_user()
    for cursor in ("not-a-cursor", "W10", "eyJhIjogMX0"):
        response = await client.get(
            "/api/v1/tasks", headers=owner.headers, params={"cursor": cursor}
        )
        assert response.status_code == 400, cursor
    await create(client, owner)
    await create(client, owner)
    page = (await client.get("/api/v1/tasks", headers=owner.headers, params={"limit": 1})).json()
    other_sort = await client.get(
        "/api/v1/tasks",
        headers=owner.headers,
        params={"cursor": page["next_cursor"], "sort": "due_at"},
    )
    assert other_sort.status_code == 400


async def test_concurrent_updates_with_the_same_etag_one_wins(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    import asyncio

    owner = await make_user()
    task = await create(client, owner)
    url = f"/api/v1/tasks/{task['id']}"
    responses = await asyncio.gather(
        *(
            client.patch(url, headers={**owner.headers, "If-Match": '"1"'}, json={"title": t})
            for t in ("first", "second", "third")
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 412, 412]
    final = (await client.get(url, headers=owner.headers)).json()
    assert final["version"] == 2
    assert final["title"] == next(r.json()["title"] for r in responses if r.status_code == 200)
