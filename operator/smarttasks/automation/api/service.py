"""The rules API's logic: who sees and changes which rule, compiling before storing, dry runs."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from smarttasks.automation import OWNER_LABEL
from smarttasks.automation.api.schemas import (
    CheckOut,
    DryRunIn,
    DryRunOut,
    ReadyOut,
    RenderedOut,
    RuleCreate,
    RuleOut,
)
from smarttasks.automation.api.store import (
    RuleConflict,
    RuleExists,
    RuleNotFound,
    RuleRejected,
    RuleStore,
    StoredRule,
    StoreUnavailable,
)
from smarttasks.automation.rules.compiler import CompiledRule, RuleCompileError, compile_rule
from smarttasks.automation.rules.documents import SAMPLE_TASK
from smarttasks.automation.rules.matcher import explain
from smarttasks.automation.rules.model import RuleSpec
from smarttasks.automation.rules.readiness import READY, describe
from smarttasks.automation.rules.templates import TemplateRenderError
from smarttasks.core.auth import Principal
from smarttasks.core.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    ServiceUnavailable,
    ValidationFailed,
)

_NOT_FOUND = "No such rule, or not visible to you"


def rule_id(name: str, owner: uuid.UUID) -> str:
    """The resource name of ``owner``'s rule ``name``: the name plus a suffix of the owner's.

    Owners never collide on names, and one user cannot learn another's rule names by
    trying to create them.
    """
    return f"{name}-{hashlib.sha256(owner.bytes).hexdigest()[:10]}"


def display_name(rule: StoredRule) -> str:
    """The name its owner gave the rule (the resource name without the owner's suffix)."""
    owner = rule.owner
    if owner is not None:
        suffix = "-" + rule_id("", owner).lstrip("-")
        if rule.name.endswith(suffix):
            return rule.name[: -len(suffix)]
    return rule.name


def _visible(rule: StoredRule, principal: Principal) -> bool:
    return principal.is_admin or rule.owner == principal.user_id


def _check_owner(rule: StoredRule, principal: Principal) -> None:
    if rule.owner != principal.user_id:
        if principal.is_admin:
            raise Forbidden("Only the rule's owner may change it")
        raise NotFound(_NOT_FOUND)


def _compile(spec: RuleSpec, *, namespace: str, name: str, owner: uuid.UUID) -> CompiledRule:
    """Compile as the operator will, refusing with 422 naming the field if it does not."""
    try:
        return compile_rule(spec, namespace=namespace, name=name, labels={OWNER_LABEL: str(owner)})
    except RuleCompileError as exc:
        raise ValidationFailed(
            str(exc), errors=[{"field": exc.field, "in": "body", "message": exc.reason}]
        ) from None


def _store_error(exc: Exception) -> Exception:
    if isinstance(exc, RuleNotFound):
        return NotFound(_NOT_FOUND)
    if isinstance(exc, RuleExists):
        return Conflict("You have a rule by that name already")
    if isinstance(exc, RuleConflict):
        return PreconditionFailed(f"The rule changed meanwhile: {exc}")
    if isinstance(exc, RuleRejected):
        return ValidationFailed(f"The rule was refused: {exc}")
    if isinstance(exc, StoreUnavailable):
        return ServiceUnavailable("Rules cannot be reached right now; try again shortly")
    return exc


async def list_rules(store: RuleStore, *, namespace: str, principal: Principal) -> list[StoredRule]:
    """Your rules; every rule of the namespace for an administrator."""
    try:
        rules = await store.list(namespace, owner=None if principal.is_admin else principal.user_id)
    except (RuleNotFound, StoreUnavailable) as exc:
        raise _store_error(exc) from exc
    return [r for r in rules if _visible(r, principal)]


async def get_rule(
    store: RuleStore, *, namespace: str, rule_id: str, principal: Principal
) -> StoredRule:
    """One rule you may see; 404 for others' (their existence is not revealed)."""
    try:
        rule = await store.get(namespace, rule_id)
    except (RuleNotFound, StoreUnavailable) as exc:
        raise _store_error(exc) from exc
    if not _visible(rule, principal):
        raise NotFound(_NOT_FOUND)
    return rule


async def create_rule(
    store: RuleStore, *, namespace: str, data: RuleCreate, principal: Principal
) -> StoredRule:
    """Compile, then store a rule owned by the caller (applying to the caller's tasks)."""
    name = rule_id(data.name, principal.user_id)
    _compile(data.spec, namespace=namespace, name=name, owner=principal.user_id)
    try:
        return await store.create(
            namespace, name, data.spec, labels={OWNER_LABEL: str(principal.user_id)}
        )
    except (RuleExists, RuleRejected, StoreUnavailable) as exc:
        raise _store_error(exc) from exc


async def replace_rule(
    store: RuleStore,
    *,
    namespace: str,
    rule_id: str,
    spec: RuleSpec,
    principal: Principal,
    if_match: str | None,
) -> StoredRule:
    """Replace the spec of your rule (a new generation), optionally only at version ``if_match``."""
    current = await get_rule(store, namespace=namespace, rule_id=rule_id, principal=principal)
    _check_owner(current, principal)
    _compile(spec, namespace=namespace, name=rule_id, owner=principal.user_id)
    try:
        return await store.replace(namespace, rule_id, spec, resource_version=if_match)
    except (RuleNotFound, RuleConflict, RuleRejected, StoreUnavailable) as exc:
        raise _store_error(exc) from exc


async def delete_rule(
    store: RuleStore, *, namespace: str, rule_id: str, principal: Principal
) -> None:
    """Delete your rule."""
    current = await get_rule(store, namespace=namespace, rule_id=rule_id, principal=principal)
    _check_owner(current, principal)
    try:
        await store.delete(namespace, rule_id)
    except (RuleNotFound, StoreUnavailable) as exc:
        raise _store_error(exc) from exc


def dry_run(data: DryRunIn, *, principal: Principal) -> DryRunOut:
    """Compile ``data.spec`` as the caller's rule and try it on ``data.task``.

    A spec that does not compile is a 422 naming the field, as on create. The task
    defaults to a typical one owned by the caller (every field set); what ``data.task``
    leaves out comes from there, and what it sends as null is null.
    """
    rule = _compile(data.spec, namespace="dry-run", name="dry-run", owner=principal.user_id)
    task: dict[str, Any] = {**SAMPLE_TASK, "owner_id": str(principal.user_id)}
    if data.task is not None:
        # Fields sent as null are null; fields left out come from the typical task.
        task.update(data.task.model_dump(mode="json", include=data.task.model_fields_set))
        task["assignee"], task["owner"] = task.get("assignee_id"), task.get("owner_id")
    now = data.now or datetime.now(UTC)
    checks = explain(rule, task, data.changes, now=now)
    context = rule.template_context(task=task, tasks=[task], changes=data.changes, now=now)
    actions = []
    for action in rule.actions:
        subject: str | None
        body: str | None
        error: str | None = None
        try:
            subject, body = action.render(context)
        except TemplateRenderError as exc:
            subject = body = None
            error = str(exc)
        actions.append(
            RenderedOut(
                channel=action.channel.value,
                to=list(action.to),
                url=action.url,
                subject=subject,
                body=body,
                error=error,
            )
        )
    return DryRunOut(
        summary=describe(rule)
        .replace("Generation 0 compiled: fires", "Fires", 1)
        .replace(f"tasks owned by {principal.user_id}", "your tasks", 1),
        matches=all(c.passed for c in checks),
        checks=[CheckOut(name=c.name, passed=c.passed, detail=c.detail) for c in checks],
        actions=actions,
    )


def to_out(rule: StoredRule) -> RuleOut:
    """The API's view of a stored rule."""
    conditions = rule.status.get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == READY), None)
    current = ready is not None and ready.get("observedGeneration") == rule.generation
    return RuleOut(
        id=rule.name,
        name=display_name(rule),
        namespace=rule.namespace,
        owner_id=rule.owner,
        generation=rule.generation,
        spec=rule.spec,
        ready=(
            ReadyOut(
                status=str(ready.get("status")),
                reason=str(ready.get("reason")),
                message=str(ready.get("message")),
                observed_generation=ready.get("observedGeneration"),
            )
            if ready is not None and current
            else ReadyOut(
                status="Unknown",
                reason="Pending",
                message=f"Generation {rule.generation} is not compiled by the operator yet.",
                observed_generation=rule.status.get("observedGeneration"),
            )
        ),
        fired_count=int(rule.status.get("firedCount") or 0),
        last_fired_at=rule.status.get("lastFiredAt"),
        created_at=rule.created_at,
    )


__all__ = [
    "create_rule",
    "delete_rule",
    "display_name",
    "dry_run",
    "get_rule",
    "list_rules",
    "replace_rule",
    "rule_id",
    "to_out",
]
