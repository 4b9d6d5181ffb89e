"""Which components exist, where their migrations live, and the all-in-one app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI

from smarttasks.core import migrations
from smarttasks.core.db import create_engine, create_sessionmaker, ping
from smarttasks.core.http import create_app
from smarttasks.tasks import app as tasks_app
from smarttasks.users import app as users_app
from smarttasks.users.settings import UsersSettings


@dataclass(frozen=True)
class Component:
    name: str
    schema: str
    migrations: Path
    routers: Sequence[APIRouter]


COMPONENTS: tuple[Component, ...] = (
    Component("users", users_app.SCHEMA, users_app.MIGRATIONS, users_app.ROUTERS),
    Component("tasks", tasks_app.SCHEMA, tasks_app.MIGRATIONS, tasks_app.ROUTERS),
)


def migrate_all(url: str) -> None:
    """Bring every component's schema to its latest revision (idempotent)."""
    for component in COMPONENTS:
        migrations.upgrade(url=url, script_location=component.migrations, schema=component.schema)


def create_embedded_app(settings: UsersSettings) -> FastAPI:
    """Every API under `/api/v1` in one ASGI app, over one database (embedded mode)."""
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)

    async def database() -> None:
        await ping(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        auth = users_app.build_auth(settings)
        app.state.engine = engine
        app.state.sessions = create_sessionmaker(engine)
        app.state.users_auth = auth
        app.state.verifier = users_app.local_verifier(auth)
        yield
        await engine.dispose()

    routers = [router for component in COMPONENTS for router in component.routers]
    return create_app(
        service="gateway",
        title="SmartTasks",
        description=(
            "Tasks with owners, assignees and deadlines, and automation rules that notify "
            "people by email and signed webhooks. Authenticate with `POST /api/v1/auth/token`."
        ),
        routers=routers,
        readiness=[database],
        lifespan=lifespan,
    )
