"""HTTP endpoints of the rules API (thin: validate, authorise, call the service)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response, status

from smarttasks.automation.api import service
from smarttasks.automation.api.schemas import (
    DryRunIn,
    DryRunOut,
    RuleCreate,
    RuleOut,
    RulePage,
    RuleReplace,
)
from smarttasks.automation.api.store import RuleStore
from smarttasks.core.auth import CurrentPrincipal
from smarttasks.core.errors import BadRequest

router = APIRouter(prefix="/api/v1/rules", tags=["rules"])

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
COMMON: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid access token", **PROBLEM},
    422: {"description": "Invalid rule; `errors` names each field", **PROBLEM},
    503: {"description": "The rule store cannot be reached", **PROBLEM},
}
ONE: dict[int | str, dict[str, Any]] = {
    **COMMON,
    404: {"description": "No such rule, or not visible to you", **PROBLEM},
}
CHANGE: dict[int | str, dict[str, Any]] = {
    **ONE,
    403: {"description": "An administrator changing someone else's rule", **PROBLEM},
}
DEFAULT_NAMESPACE = "smarttasks"


def _store(request: Request) -> RuleStore:
    store: RuleStore = request.app.state.rule_store
    return store


def _namespace(request: Request) -> str:
    return str(getattr(request.app.state, "rules_namespace", DEFAULT_NAMESPACE))


StoreDep = Annotated[RuleStore, Depends(_store)]
NamespaceDep = Annotated[str, Depends(_namespace)]
RuleId = Annotated[
    str, Path(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]


def _etag(version: str) -> str:
    return f'"{version}"'


def _if_match(value: str | None) -> str | None:
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text or len(text) > 64 or not text.isalnum():
        raise BadRequest('If-Match must be an ETag returned by this API, like "123"')
    return text


@router.get(
    "",
    response_model=RulePage,
    summary="List your rules (all, for administrators)",
    responses=COMMON,
)
async def list_rules(
    principal: CurrentPrincipal, store: StoreDep, namespace: NamespaceDep
) -> RulePage:
    rules = await service.list_rules(store, namespace=namespace, principal=principal)
    return RulePage(items=[service.to_out(r) for r in rules])


@router.post(
    "/dry-run",
    response_model=DryRunOut,
    summary="Validate and compile a rule, and try it on a task, without storing anything",
    responses={**COMMON, 404: {"description": "Never", **PROBLEM}},
)
async def dry_run(data: DryRunIn, principal: CurrentPrincipal) -> DryRunOut:
    return service.dry_run(data, principal=principal)


@router.post(
    "",
    response_model=RuleOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a rule that applies to your tasks",
    responses={**COMMON, 409: {"description": "You have a rule by that name", **PROBLEM}},
)
async def create_rule(
    data: RuleCreate,
    principal: CurrentPrincipal,
    store: StoreDep,
    namespace: NamespaceDep,
    response: Response,
) -> RuleOut:
    rule = await service.create_rule(store, namespace=namespace, data=data, principal=principal)
    response.headers["ETag"] = _etag(rule.resource_version)
    response.headers["Location"] = f"/api/v1/rules/{rule.name}"
    return service.to_out(rule)


@router.get("/{rule_id}", response_model=RuleOut, summary="Get a rule", responses=ONE)
async def get_rule(
    rule_id: RuleId,
    principal: CurrentPrincipal,
    store: StoreDep,
    namespace: NamespaceDep,
    response: Response,
) -> RuleOut:
    rule = await service.get_rule(store, namespace=namespace, rule_id=rule_id, principal=principal)
    response.headers["ETag"] = _etag(rule.resource_version)
    return service.to_out(rule)


@router.put(
    "/{rule_id}",
    response_model=RuleOut,
    summary="Replace a rule's spec; send If-Match with its ETag to avoid overwriting changes",
    responses={**CHANGE, 412: {"description": "The rule changed since your ETag", **PROBLEM}},
)
async def replace_rule(
    rule_id: RuleId,
    data: RuleReplace,
    principal: CurrentPrincipal,
    store: StoreDep,
    namespace: NamespaceDep,
    response: Response,
    if_match: Annotated[str | None, Header(max_length=80)] = None,
) -> RuleOut:
    rule = await service.replace_rule(
        store,
        namespace=namespace,
        rule_id=rule_id,
        spec=data.spec,
        principal=principal,
        if_match=_if_match(if_match),
    )
    response.headers["ETag"] = _etag(rule.resource_version)
    return service.to_out(rule)


@router.delete(
    "/{rule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a rule",
    responses=CHANGE,
)
async def delete_rule(
    rule_id: RuleId, principal: CurrentPrincipal, store: StoreDep, namespace: NamespaceDep
) -> None:
    await service.delete_rule(store, namespace=namespace, rule_id=rule_id, principal=principal)
