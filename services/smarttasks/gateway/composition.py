"""Which components exist, where their migrations live, and the all-in-one app."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import smarttasks.automation as automation
from smarttasks.automation import api as rules_api
from smarttasks.automation.engine import AutomationEngine, DatabaseStatusSink, EngineSettings
from smarttasks.automation.rules.index import RuleIndex
from smarttasks.core import migrations
from smarttasks.core.db import create_engine, create_sessionmaker, ping, unit_of_work
from smarttasks.core.errors import NotFound
from smarttasks.core.http import create_app
from smarttasks.core.messaging import LocalRelay, MessagingSettings
from smarttasks.core.runtime import freeze_startup_objects
from smarttasks.notifications import app as notifications_app
from smarttasks.notifications.consumers import notification_consumer
from smarttasks.notifications.directory import Contact, InProcessUserDirectory
from smarttasks.notifications.settings import NotificationsSettings
from smarttasks.tasks import app as tasks_app
from smarttasks.users import app as users_app
from smarttasks.users import service as users_service
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
    Component("automation", automation.SCHEMA, automation.MIGRATIONS, rules_api.ROUTERS),
    Component(
        "notifications",
        notifications_app.SCHEMA,
        notifications_app.MIGRATIONS,
        notifications_app.ROUTERS,
    ),
)


# The outboxes the embedded platform's in-process relay delivers from.
EMBEDDED_OUTBOXES = ("tasks.outbox", "automation.outbox")


def migrate_all(url: str) -> None:
    """Bring every component's schema to its latest revision (idempotent)."""
    for component in COMPONENTS:
        migrations.upgrade(url=url, script_location=component.migrations, schema=component.schema)


def in_process_directory(sessions: async_sessionmaker[AsyncSession]) -> InProcessUserDirectory:
    """Embedded mode: the notification service looks users up through the users service layer."""

    async def lookup(user_id: uuid.UUID) -> Contact | None:
        async with unit_of_work(sessions) as session:
            try:
                user = await users_service.get_user(session, user_id)
            except NotFound:
                return None
            return Contact(user.id, user.email, user.display_name, user.email_notifications)

    return InProcessUserDirectory(lookup)


def create_embedded_app(
    settings: UsersSettings,
    *,
    notifications: NotificationsSettings | None = None,
    background: bool = True,
) -> FastAPI:
    """Every API under `/api/v1` in one ASGI app, over one database (embedded mode).

    With `background`, the whole pipeline runs in this process too: the automation engine
    on the rules kept in the database, the in-process relay handing task events to the
    engine and notification requests to the notification service, and the delivery
    workers, in place of the relay process and RabbitMQ. Several such processes may share
    a database: relays, engines and workers claim their work with row locks.
    """
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
        sessions = app.state.sessions
        index = RuleIndex()
        automation_engine = AutomationEngine(
            sessions=sessions,
            database_url=settings.database_url,
            rules=index,
            sink=DatabaseStatusSink(sessions),
            settings=EngineSettings(database_url=settings.database_url),
        )
        store = rules_api.use_database_store(
            app, sessions, index=index, on_change=automation_engine.rules_changed
        )
        await store.load_index()
        if not background:  # tests that drive the engine, relay and workers themselves
            yield
        else:
            relay = LocalRelay(
                engine,
                [automation_engine.task_consumer, notification_consumer()],
                outboxes=EMBEDDED_OUTBOXES,
                settings=MessagingSettings(database_url=settings.database_url),
            )
            async with (
                automation_engine,
                relay.running(),
                notifications_app.delivery_workers(
                    notifications or NotificationsSettings(database_url=settings.database_url),
                    sessions=sessions,
                    directory=in_process_directory(sessions),
                ),
            ):
                freeze_startup_objects()
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
        max_in_flight=settings.http_max_in_flight,
    )
