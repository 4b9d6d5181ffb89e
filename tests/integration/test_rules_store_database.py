"""Embedded mode's rule store: documents in PostgreSQL, compiled and indexed on write."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.api import DatabaseRuleStore, RulesApiSettings, create_rules_app
from smarttasks.automation.api.store import RuleConflict, RuleExists, RuleNotFound
from smarttasks.automation.rules import RuleCompileError, RuleIndex, RuleSpec, TriggerEvent
from smarttasks.core import migrations
from tests.k8s.test_rules_api import SPEC, Tokens

pytestmark = pytest.mark.integration

AUTOMATION_MIGRATIONS = (
    Path(__file__).resolve().parents[2] / "operator" / "smarttasks" / "automation" / "migrations"
)
BROKEN: dict[str, Any] = {**SPEC, "match": {"condition": "task.nope == 1"}}


@pytest.fixture(scope="module")
def automation_schema(database_url: str) -> str:
    migrations.upgrade(url=database_url, script_location=AUTOMATION_MIGRATIONS, schema="automation")
    return database_url


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def store(
    automation_schema: str, sessions: async_sessionmaker[AsyncSession]
) -> tuple[DatabaseRuleStore, RuleIndex, Changes]:
    index, changes = RuleIndex(), Changes()
    return DatabaseRuleStore(sessions, index=index, on_change=changes), index, changes


async def test_create_stores_the_ready_status_and_indexes_the_rule(
    store: tuple[DatabaseRuleStore, RuleIndex, Changes], namespace: str
) -> None:
    rules, index, changes = store
    owner = uuid.uuid4()

    rule = await rules.create(
        namespace, "r1", RuleSpec.model_validate(SPEC), labels={OWNER_LABEL: str(owner)}
    )

    assert rule.generation == 1 and rule.owner == owner
    (ready,) = rule.status["conditions"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "True",
        "Compiled",
        1,
    )
    assert rule.status["observedGeneration"] == 1
    compiled = index.by_key(f"{namespace}/r1")
    assert compiled is not None and compiled.uid == rule.uid and compiled.owner == owner
    assert index.for_trigger(TriggerEvent.TASK_CREATED) == [compiled]
    assert changes.count == 1
    assert await rules.get(namespace, "r1") == rule
    with pytest.raises(RuleExists):
        await rules.create(namespace, "r1", RuleSpec.model_validate(SPEC), labels={})


async def test_a_rule_that_does_not_compile_is_stored_not_ready_and_not_indexed(
    store: tuple[DatabaseRuleStore, RuleIndex, Changes], namespace: str
) -> None:
    rules, index, _ = store

    rule = await rules.create(namespace, "broken", RuleSpec.model_validate(BROKEN), labels={})

    (ready,) = rule.status["conditions"]
    assert ready["status"] == "False" and ready["reason"] == "CompileFailed"
    assert ready["message"].startswith("spec.match.condition: a task has no field 'nope'")
    assert index.by_key(f"{namespace}/broken") is None


async def test_replace_is_a_new_generation_guarded_by_the_version(
    store: tuple[DatabaseRuleStore, RuleIndex, Changes], namespace: str
) -> None:
    rules, index, _ = store
    created = await rules.create(namespace, "r", RuleSpec.model_validate(SPEC), labels={})

    broken = await rules.replace(
        namespace, "r", RuleSpec.model_validate(BROKEN), resource_version=created.resource_version
    )
    with pytest.raises(RuleConflict):
        await rules.replace(
            namespace, "r", RuleSpec.model_validate(SPEC), resource_version=created.resource_version
        )
    fixed = await rules.replace(
        namespace, "r", RuleSpec.model_validate(SPEC), resource_version=None
    )
    same = await rules.replace(namespace, "r", RuleSpec.model_validate(SPEC), resource_version=None)

    assert (broken.generation, fixed.generation, same.generation) == (2, 3, 3)
    assert index.by_key(f"{namespace}/r") is not None
    ready = fixed.status["conditions"][0]
    assert ready["status"] == "True" and ready["observedGeneration"] == 3
    assert same.status == fixed.status
    with pytest.raises(RuleNotFound):
        await rules.replace(namespace, "nope", RuleSpec.model_validate(SPEC), resource_version=None)


async def test_list_by_owner_delete_and_reload(
    store: tuple[DatabaseRuleStore, RuleIndex, Changes],
    namespace: str,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    rules, index, changes = store
    alice, bob = uuid.uuid4(), uuid.uuid4()
    spec = RuleSpec.model_validate(SPEC)
    for name, owner in (("b", alice), ("a", alice), ("c", bob)):
        await rules.create(namespace, name, spec, labels={OWNER_LABEL: str(owner)})

    assert [r.name for r in await rules.list(namespace, owner=alice)] == ["a", "b"]
    assert [r.name for r in await rules.list(namespace)] == ["a", "b", "c"]

    await rules.delete(namespace, "a")

    assert index.by_key(f"{namespace}/a") is None and changes.count == 4
    with pytest.raises(RuleNotFound):
        await rules.delete(namespace, "a")
    reloaded = await DatabaseRuleStore(sessions).load_index()
    assert {f"{namespace}/b", f"{namespace}/c"} <= {r.key for r in reloaded.rules()}
    assert reloaded.by_key(f"{namespace}/a") is None


@pytest.fixture
async def embedded_api(
    automation_schema: str, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[httpx.AsyncClient, Tokens, RuleIndex]]:
    tokens, index = Tokens(), RuleIndex()
    app: FastAPI = create_rules_app(
        RulesApiSettings(rules_namespace=f"t-{uuid.uuid4().hex[:12]}"),
        store=DatabaseRuleStore(sessions, index=index),
        verifier=tokens.verifier,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://rules") as client:
            yield client, tokens, index


async def test_the_api_over_the_database_reports_ready_at_once_and_keeps_owners_apart(
    embedded_api: tuple[httpx.AsyncClient, Tokens, RuleIndex],
) -> None:
    http, tokens, index = embedded_api
    alice, bob = tokens.user(), tokens.user()

    created = await http.post(
        "/api/v1/rules", json={"name": "mine", "spec": SPEC}, headers=alice.headers
    )

    assert created.status_code == 201, created.text
    body = created.json()
    assert body["ready"]["status"] == "True" and body["ready"]["reason"] == "Compiled"
    path = f"/api/v1/rules/{body['id']}"
    assert (await http.get(path, headers=bob.headers)).status_code == 404
    assert (await http.get("/api/v1/rules", headers=bob.headers)).json()["items"] == []
    compiled = index.rules(TriggerEvent.TASK_CREATED)
    assert [r.owner for r in compiled] == [alice.id]
    assert (await http.delete(path, headers=alice.headers)).status_code == 204
    assert index.rules() == []


async def test_apply_creates_then_updates_from_a_manifest(
    store: tuple[DatabaseRuleStore, RuleIndex, Changes], namespace: str
) -> None:
    rules, index, _ = store
    manifest: dict[str, Any] = {
        "apiVersion": "smarttasks.io/v1alpha1",
        "kind": "AutomationRule",
        "metadata": {"name": "applied", "namespace": namespace},
        "spec": SPEC,
    }

    first = await rules.apply(manifest, namespace="default")
    second = await rules.apply({**manifest, "spec": BROKEN}, namespace="default")
    with pytest.raises(RuleCompileError) as refused:
        await rules.apply({**manifest, "spec": {**SPEC, "trigger": {}}}, namespace="default")

    assert (first.namespace, first.generation, second.generation) == (namespace, 1, 2)
    assert second.status["conditions"][0]["reason"] == "CompileFailed"
    assert index.by_key(f"{namespace}/applied") is None
    assert refused.value.field == "spec.trigger.event"
