"""RuleStore over AutomationRule custom resources (kubernetes client, off the event loop)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from smarttasks.automation import API_GROUP, API_VERSION, KIND, OWNER_LABEL, PLURAL
from smarttasks.automation.api.store import (
    RuleConflict,
    RuleExists,
    RuleNotFound,
    RuleRejected,
    StoredRule,
    StoreUnavailable,
)
from smarttasks.automation.rules.model import RuleSpec

REQUEST_TIMEOUT = 15.0
"""Seconds one API request may take before the rules API answers 503."""


class KubernetesRuleStore:
    """Rules as AutomationRule resources; the operator compiles and reports on them."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = client.CustomObjectsApi(api_client)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        try:
            return await asyncio.to_thread(fn, API_GROUP, API_VERSION, *args, **kwargs)
        except ApiException as exc:
            raise _map(exc) from exc
        except (HTTPError, OSError) as exc:
            raise StoreUnavailable(f"the Kubernetes API cannot be reached: {exc}") from exc

    async def list(self, namespace: str, *, owner: uuid.UUID | None = None) -> list[StoredRule]:
        selector = f"{OWNER_LABEL}={owner}" if owner is not None else None
        found = await self._call(
            self._api.list_namespaced_custom_object, namespace, PLURAL, label_selector=selector
        )
        return sorted((_stored(item) for item in found["items"]), key=lambda r: r.name)

    async def get(self, namespace: str, name: str) -> StoredRule:
        return _stored(
            await self._call(self._api.get_namespaced_custom_object, namespace, PLURAL, name)
        )

    async def create(
        self, namespace: str, name: str, spec: RuleSpec, *, labels: dict[str, str]
    ) -> StoredRule:
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec.to_manifest(),
        }
        return _stored(
            await self._call(self._api.create_namespaced_custom_object, namespace, PLURAL, body)
        )

    async def replace(
        self, namespace: str, name: str, spec: RuleSpec, *, resource_version: str | None
    ) -> StoredRule:
        current = await self._call(self._api.get_namespaced_custom_object, namespace, PLURAL, name)
        version = current["metadata"]["resourceVersion"]
        if resource_version is not None and resource_version != version:
            raise RuleConflict(f"the rule is at version {version}, not {resource_version}")
        # PUT with the resourceVersion read: the API server refuses it (409) if the rule
        # changed in between, so no change by someone else is overwritten.
        body = {
            "apiVersion": current["apiVersion"],
            "kind": current["kind"],
            "metadata": current["metadata"],
            "spec": spec.to_manifest(),
        }
        return _stored(
            await self._call(
                self._api.replace_namespaced_custom_object, namespace, PLURAL, name, body
            )
        )

    async def delete(self, namespace: str, name: str) -> None:
        await self._call(self._api.delete_namespaced_custom_object, namespace, PLURAL, name)


def _map(exc: ApiException) -> Exception:
    status = exc.status or 0
    if status == 404:
        return RuleNotFound("no such rule")
    if status == 409:
        reason = _reason(exc)
        if reason == "AlreadyExists":
            return RuleExists("a rule by that name exists already")
        return RuleConflict("the rule changed meanwhile")
    if status == 422:
        return RuleRejected(_message(exc))
    return StoreUnavailable(f"the Kubernetes API answered {status}: {_message(exc)}")


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("reason", ""))
    except ValueError:
        return ""


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", exc.reason))
    except ValueError:
        return str(exc.reason)


def _stored(item: dict[str, Any]) -> StoredRule:
    meta = item.get("metadata") or {}
    created = meta.get("creationTimestamp")
    return StoredRule(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 0),
        resource_version=str(meta.get("resourceVersion", "")),
        spec=item.get("spec") or {},
        labels=dict(meta.get("labels") or {}),
        status=item.get("status") or {},
        created_at=(
            datetime.fromisoformat(created.replace("Z", "+00:00"))
            if isinstance(created, str)
            else created
        ),
    )


__all__ = ["KubernetesRuleStore"]
