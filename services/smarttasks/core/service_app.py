"""A service as its own deployable: database engine, JWT verifier, probes, one lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

from fastapi import APIRouter, FastAPI

from smarttasks.core.auth import RemoteJWKS, TokenVerifier
from smarttasks.core.db import create_engine, create_sessionmaker, ping
from smarttasks.core.http import create_app
from smarttasks.core.messaging.wakeup import notifying_relays
from smarttasks.core.runtime import freeze_startup_objects
from smarttasks.core.settings import ServiceSettings

StateSetup = Callable[[FastAPI], None]
Background = Callable[[FastAPI], AbstractAsyncContextManager[None]]
"""Work that runs beside the API for the app's life (workers, consumers): entered once the
state is set up, left before the database engine is disposed."""


def create_service_app(
    *,
    service: str,
    title: str,
    settings: ServiceSettings,
    routers: Sequence[APIRouter],
    setup: StateSetup | None = None,
    background: Background | None = None,
) -> FastAPI:
    """The standard shell around a component's routers, for cluster mode.

    `setup` adds component state (and may replace the verifier, as the users service does);
    `background` runs beside the API (the notification service's consumer and workers).
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
        try:
            beside = background(app) if background is not None else nullcontext()
            async with notifying_relays(engine), beside:
                freeze_startup_objects()
                yield
        finally:
            await engine.dispose()

    return create_app(
        service=service,
        title=title,
        routers=routers,
        readiness=[database],
        lifespan=lifespan,
        max_in_flight=settings.http_max_in_flight,
    )
