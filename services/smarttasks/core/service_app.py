"""A service as its own deployable: database engine, JWT verifier, probes, one lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from smarttasks.core.auth import RemoteJWKS, TokenVerifier
from smarttasks.core.db import create_engine, create_sessionmaker, ping
from smarttasks.core.http import create_app
from smarttasks.core.messaging.wakeup import notifying_relays
from smarttasks.core.settings import ServiceSettings

StateSetup = Callable[[FastAPI], None]


def create_service_app(
    *,
    service: str,
    title: str,
    settings: ServiceSettings,
    routers: Sequence[APIRouter],
    setup: StateSetup | None = None,
) -> FastAPI:
    """The standard shell around a component's routers, for cluster mode.

    `setup` adds component state (and may replace the verifier, as the users service does).
    """
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)

    async def database() -> None:
        await ping(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = engine
        app.state.sessions = create_sessionmaker(engine)
        app.state.verifier = TokenVerifier(
            RemoteJWKS(settings.jwks_url, cache_seconds=settings.jwks_cache_seconds),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        if setup is not None:
            setup(app)
        # Commits that add outbox rows wake the relays (a no-op for services without one).
        async with notifying_relays(engine):
            yield
        await engine.dispose()

    return create_app(
        service=service, title=title, routers=routers, readiness=[database], lifespan=lifespan
    )
