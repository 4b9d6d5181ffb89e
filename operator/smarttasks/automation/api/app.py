"""Assembly of the rules API: its own deployable in a cluster, a router in embedded mode."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from smarttasks.automation.api.database_store import DatabaseRuleStore
from smarttasks.automation.api.endpoints import router
from smarttasks.automation.api.kubernetes_store import KubernetesRuleStore
from smarttasks.automation.api.store import RuleStore
from smarttasks.automation.kube import api_client
from smarttasks.automation.rules.index import RuleIndex
from smarttasks.core.auth import RemoteJWKS, TokenVerifier
from smarttasks.core.http import create_app
from smarttasks.core.settings import ServiceSettings

ROUTERS: tuple[APIRouter, ...] = (router,)
EMBEDDED_NAMESPACE = "default"
"""The namespace of rule documents in embedded mode (``smarttasks rules apply -f``)."""


class RulesApiSettings(ServiceSettings):
    """Settings of the rules API (env prefix ``SMARTTASKS_``)."""

    rules_namespace: str = Field(
        default="smarttasks",
        min_length=1,
        max_length=63,
        description=(
            "Namespace the API keeps rules in (as AutomationRules labelled with their owner). "
            "Its ServiceAccount needs get/list/create/update/delete on automationrules there."
        ),
    )
    rules_kubeconfig: str = Field(
        default="",
        description="Kubeconfig to use; empty means the pod's ServiceAccount (or KUBECONFIG).",
    )


def use_database_store(
    app: FastAPI,
    sessions: async_sessionmaker[AsyncSession],
    *,
    index: RuleIndex | None = None,
    on_change: Callable[[], None] | None = None,
) -> DatabaseRuleStore:
    """Embedded mode: keep rules in the database and the engine's ``index`` in step."""
    store = DatabaseRuleStore(sessions, index=index, on_change=on_change)
    app.state.rule_store = store
    app.state.rules_namespace = EMBEDDED_NAMESPACE
    return store


def create_rules_app(
    settings: RulesApiSettings,
    *,
    store: RuleStore | None = None,
    verifier: TokenVerifier | None = None,
) -> FastAPI:
    """The rules API as its own deployable, over AutomationRules in ``rules_namespace``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.rule_store = store or KubernetesRuleStore(api_client(settings.rules_kubeconfig))
        app.state.rules_namespace = settings.rules_namespace
        app.state.verifier = verifier or TokenVerifier(
            RemoteJWKS(settings.jwks_url, cache_seconds=settings.jwks_cache_seconds),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        yield

    return create_app(
        service="rules-api",
        title="SmartTasks rules",
        description=(
            "Automation rules: when something happens to one of your tasks, notify people by "
            "email or signed webhook. Rules are AutomationRule resources owned by you."
        ),
        routers=ROUTERS,
        lifespan=lifespan,
        max_in_flight=settings.http_max_in_flight,
    )


__all__ = [
    "EMBEDDED_NAMESPACE",
    "ROUTERS",
    "RulesApiSettings",
    "create_rules_app",
    "use_database_store",
]
