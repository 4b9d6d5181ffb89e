"""The rules API over AutomationRule resources, as its own ServiceAccount (rules-api-rbac.yaml).

Users get tokens from a signing key of the users service's kind; the API verifies them
as in a cluster. Rules made here are the CRs the operator handles (last test).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from kubernetes import client, config

from smarttasks.automation import API_GROUP, API_VERSION, OWNER_LABEL, PLURAL
from smarttasks.automation.api import KubernetesRuleStore, RulesApiSettings, create_rules_app
from smarttasks.automation.api.service import rule_id
from smarttasks.automation.kube import api_client
from smarttasks.core.auth import ADMIN_ROLE, StaticKeys, TokenVerifier
from smarttasks.users.tokens import TokenSigner, generate_private_key_pem
from tests.fixtures.k8s import ControlPlane
from tests.k8s.test_operator import (  # noqa: F401 - fixtures used by the last test
    Operator,
    observed,
    operator,
    operator_kubeconfig,
    wait_for,
)

pytestmark = pytest.mark.k8s

RBAC_FILE = Path(__file__).with_name("rules-api-rbac.yaml")
_ACCOUNT = next(
    d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d["kind"] == "ServiceAccount"
)
RULES_NAMESPACE = _ACCOUNT["metadata"]["namespace"]
SERVICE_ACCOUNT = _ACCOUNT["metadata"]["name"]
ISSUER, AUDIENCE = "smarttasks", "smarttasks-api"

EMAIL = {"notify": {"channel": "email", "to": ["owner"], "subject": "New: {{ task.title }}"}}
SPEC: dict[str, Any] = {
    "trigger": {"event": "TaskCreated"},
    "match": {"priorities": ["high"], "condition": "task.assignee == null"},
    "actions": [EMAIL],
}


DEADLINE = "DeadlineApproaching"
TYPO = {"notify": {**EMAIL["notify"], "body": "{{ task.titel }}"}}


@dataclass
class User:
    id: uuid.UUID
    headers: dict[str, str]


class Tokens:
    """Access tokens signed like the users service's, and a verifier that trusts them."""

    def __init__(self) -> None:
        self.signer = TokenSigner(
            generate_private_key_pem(), issuer=ISSUER, audience=AUDIENCE, ttl_seconds=900
        )
        self.verifier = TokenVerifier(
            StaticKeys(self.signer.jwks), issuer=ISSUER, audience=AUDIENCE
        )

    def user(self, *, admin: bool = False) -> User:
        user_id = uuid.uuid4()
        token = self.signer.access_token(
            user_id=user_id,
            email=f"{user_id.hex[:8]}@example.com",
            roles=[ADMIN_ROLE] if admin else [],
        )
        return User(id=user_id, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def rules_api_kubeconfig(k8s: ControlPlane, automationrule_crd: str) -> Path:
    k8s.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RULES_NAMESPACE}}
        ),
    )
    k8s.kubectl("apply", "-f", str(RBAC_FILE))
    return k8s.service_account_kubeconfig(RULES_NAMESPACE, SERVICE_ACCOUNT, create=False)


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture(scope="module")
async def rules_app(rules_api_kubeconfig: Path, tokens: Tokens) -> AsyncIterator[FastAPI]:
    app = create_rules_app(
        RulesApiSettings(rules_namespace=RULES_NAMESPACE),
        store=KubernetesRuleStore(api_client(str(rules_api_kubeconfig))),
        verifier=tokens.verifier,
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(rules_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=rules_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://rules") as c:
        yield c


@pytest.fixture(scope="module")
def admin_api(k8s: ControlPlane) -> Iterator[client.CustomObjectsApi]:
    raw = config.new_client_from_config(config_file=str(k8s.kubeconfig))
    yield client.CustomObjectsApi(raw)
    raw.close()


CreateRule = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def create(http: httpx.AsyncClient) -> CreateRule:
    async def make(user: User, name: str = "new-high", spec: dict[str, Any] | None = None) -> Any:
        response = await http.post(
            "/api/v1/rules", json={"name": name, "spec": spec or SPEC}, headers=user.headers
        )
        assert response.status_code == 201, response.text
        return response.json()

    return make


async def test_a_rule_made_through_the_api_is_an_owned_custom_resource(
    http: httpx.AsyncClient, tokens: Tokens, admin_api: client.CustomObjectsApi
) -> None:
    alice = tokens.user()

    response = await http.post(
        "/api/v1/rules", json={"name": "new-high", "spec": SPEC}, headers=alice.headers
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == rule_id("new-high", alice.id) and body["name"] == "new-high"
    assert body["owner_id"] == str(alice.id) and body["generation"] == 1
    assert body["ready"]["status"] == "Unknown"  # no operator running in this test
    assert response.headers["Location"] == f"/api/v1/rules/{body['id']}"
    resource = admin_api.get_namespaced_custom_object(
        API_GROUP, API_VERSION, RULES_NAMESPACE, PLURAL, body["id"]
    )
    assert resource["metadata"]["labels"] == {OWNER_LABEL: str(alice.id)}
    assert resource["spec"] == {"enabled": True, **SPEC}
    fetched = await http.get(f"/api/v1/rules/{body['id']}", headers=alice.headers)
    assert fetched.status_code == 200 and fetched.json() == body
    assert fetched.headers["ETag"] == f'"{resource["metadata"]["resourceVersion"]}"'


async def test_users_see_and_change_only_their_own_rules(
    http: httpx.AsyncClient, tokens: Tokens, create: CreateRule
) -> None:
    alice, bob, admin = tokens.user(), tokens.user(), tokens.user(admin=True)
    alices = await create(alice)
    bobs = await create(bob)  # the same name is fine: names are per owner
    path = f"/api/v1/rules/{alices['id']}"

    alice_list = (await http.get("/api/v1/rules", headers=alice.headers)).json()["items"]
    bob_list = (await http.get("/api/v1/rules", headers=bob.headers)).json()["items"]
    admin_list = (await http.get("/api/v1/rules", headers=admin.headers)).json()["items"]

    assert [r["id"] for r in alice_list] == [alices["id"]]
    assert [r["id"] for r in bob_list] == [bobs["id"]]
    assert {alices["id"], bobs["id"]} <= {r["id"] for r in admin_list}
    assert (await http.get(path, headers=bob.headers)).status_code == 404
    assert (await http.put(path, json={"spec": SPEC}, headers=bob.headers)).status_code == 404
    assert (await http.delete(path, headers=bob.headers)).status_code == 404
    assert (await http.get(path, headers=admin.headers)).status_code == 200
    assert (await http.put(path, json={"spec": SPEC}, headers=admin.headers)).status_code == 403
    assert (await http.delete(path, headers=admin.headers)).status_code == 403
    assert (await http.get(path)).status_code == 401
    assert (await http.get(path, headers=alice.headers)).json()["generation"] == 1


async def test_replace_and_delete(
    http: httpx.AsyncClient, tokens: Tokens, create: CreateRule, admin_api: client.CustomObjectsApi
) -> None:
    alice = tokens.user()
    rule = await create(alice)
    path = f"/api/v1/rules/{rule['id']}"
    etag = (await http.get(path, headers=alice.headers)).headers["ETag"]
    changed = {**SPEC, "match": {"labels": ["customer"]}}

    replaced = await http.put(
        path, json={"spec": changed}, headers={**alice.headers, "If-Match": etag}
    )
    stale = await http.put(path, json={"spec": SPEC}, headers={**alice.headers, "If-Match": etag})
    deleted = await http.delete(path, headers=alice.headers)

    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["generation"] == 2
    assert replaced.json()["spec"]["match"] == {"labels": ["customer"]}
    assert stale.status_code == 412
    assert deleted.status_code == 204
    assert (await http.get(path, headers=alice.headers)).status_code == 404
    remaining = admin_api.list_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        RULES_NAMESPACE,
        PLURAL,
        field_selector=f"metadata.name={rule['id']}",
    )
    assert remaining["items"] == []


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"name": "r", "spec": {**SPEC, "trigger": {"event": "TaskCreated", "before": "1h"}}},
            "spec.trigger.before",
            "before is only allowed when event is DeadlineApproaching",
        ),
        (
            {"name": "r", "spec": {**SPEC, "trigger": {"event": DEADLINE, "before": "1 hour"}}},
            "spec.trigger.before",
            "must be a duration such as 30m",
        ),
        (
            {"name": "r", "spec": {**SPEC, "match": {"condition": "task.assignee != nul"}}},
            "spec.match.condition",
            "unknown name 'nul'",
        ),
        (
            {"name": "r", "spec": {**SPEC, "actions": [{"notify": {"channel": "webhook"}}]}},
            "spec.actions.0.notify.url",
            "a webhook action requires url",
        ),
        (
            {"name": "r", "spec": {**SPEC, "actions": [TYPO]}},
            "spec.actions[0].notify.body",
            "the task has no field 'titel'",
        ),
        ({"name": "Not A Name", "spec": SPEC}, "name", "String should match pattern"),
        ({"name": "r", "spec": {**SPEC, "tirgger": {}}}, "spec.tirgger", "Extra inputs"),
    ],
)  # fmt: skip
async def test_invalid_rules_are_422_naming_the_field(
    http: httpx.AsyncClient, tokens: Tokens, body: dict[str, Any], field: str, message: str
) -> None:
    response = await http.post("/api/v1/rules", json=body, headers=tokens.user().headers)

    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == field, problem
    assert message in problem["errors"][0]["message"], problem


async def test_dry_run_compiles_and_tries_the_rule_on_a_task(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    alice = tokens.user()

    matching = await http.post(
        "/api/v1/rules/dry-run",
        json={"spec": SPEC, "task": {"title": "Ship it", "priority": "high", "assignee_id": None}},
        headers=alice.headers,
    )
    assigned = await http.post(
        "/api/v1/rules/dry-run",
        json={"spec": SPEC, "task": {"priority": "high"}},  # a typical task is assigned
        headers=alice.headers,
    )
    broken = await http.post(
        "/api/v1/rules/dry-run",
        json={"spec": {**SPEC, "match": {"condition": "task.priority =="}}},
        headers=alice.headers,
    )

    assert matching.status_code == 200, matching.text
    result = matching.json()
    assert result["matches"] is True
    assert result["summary"].startswith("Fires on TaskCreated for your tasks, of priority high")
    assert [c["name"] for c in result["checks"]] == ["owner", "priorities", "condition"]
    assert result["actions"][0]["subject"] == "New: Ship it"
    assert assigned.json()["matches"] is False
    assert assigned.json()["checks"][-1] == {
        "name": "condition",
        "passed": False,
        "detail": "task.assignee == null",
    }
    assert broken.status_code == 422
    assert broken.json()["errors"][0]["field"] == "spec.match.condition"


async def test_the_api_account_may_only_manage_rules_in_its_namespace(
    k8s: ControlPlane, rules_api_kubeconfig: Path
) -> None:
    def can(verb: str, resource: str, namespace: str) -> bool:
        proc = k8s.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace,
            kubeconfig=rules_api_kubeconfig, check=False,
        )  # fmt: skip
        return proc.stdout.strip() == "yes"

    rules = f"{PLURAL}.{API_GROUP}"
    for verb in ("get", "list", "create", "update", "delete"):
        assert can(verb, rules, RULES_NAMESPACE), verb
    assert not can("patch", f"{rules}/status", RULES_NAMESPACE)
    assert not can("create", rules, "default")
    assert not can("get", "secrets", RULES_NAMESPACE)


async def test_the_operator_compiles_rules_made_through_the_api(
    http: httpx.AsyncClient,
    tokens: Tokens,
    create: CreateRule,
    admin_api: client.CustomObjectsApi,
    operator: Operator,  # noqa: F811 - the fixture imported above
) -> None:
    alice = tokens.user()
    rule = await create(alice, "compiled")

    await asyncio.to_thread(wait_for, admin_api, RULES_NAMESPACE, rule["id"], observed(1, "True"))
    shown = (await http.get(f"/api/v1/rules/{rule['id']}", headers=alice.headers)).json()

    assert shown["ready"]["status"] == "True" and shown["ready"]["reason"] == "Compiled"
    compiled = operator.rules.by_key(f"{RULES_NAMESPACE}/{rule['id']}")
    assert compiled is not None and compiled.owner == alice.id
