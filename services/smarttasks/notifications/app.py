"""Assembly of the notification service: routers, migrations, delivery workers, its own app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from smarttasks.core.messaging import ConsumerRunner, MessagingSettings
from smarttasks.core.service_app import create_service_app
from smarttasks.notifications.channels import build_channels
from smarttasks.notifications.consumers import notification_consumer
from smarttasks.notifications.directory import (
    FileToken,
    HttpUserDirectory,
    TokenProvider,
    UserDirectory,
    static_token,
)
from smarttasks.notifications.dispatch import Dispatcher
from smarttasks.notifications.endpoints import router
from smarttasks.notifications.retries import RetryPolicy
from smarttasks.notifications.secretrefs import (
    KubernetesSecretResolver,
    SecretResolver,
    StaticSecretResolver,
)
from smarttasks.notifications.settings import NotificationsSettings, SecretSource
from smarttasks.notifications.templates import Renderer
from smarttasks.notifications.wakeup import NotifyListener
from smarttasks.notifications.worker import BatchObserver, DeliveryWorker, WorkerPool

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "notifications"
ROUTERS: tuple[APIRouter, ...] = (router,)

log = structlog.get_logger()

_CONSUMER_STOP_SECONDS = 10.0


def build_secrets(settings: NotificationsSettings) -> SecretResolver:
    """Kubernetes Secrets in cluster mode, the configured mapping otherwise."""
    if settings.secret_source is SecretSource.KUBERNETES:
        return KubernetesSecretResolver.from_environment(
            cache_seconds=settings.secret_cache_seconds
        )
    return StaticSecretResolver(settings.webhook_secrets)


def build_directory(settings: NotificationsSettings) -> HttpUserDirectory:
    """The users service's API, with the configured service credential."""
    if not settings.users_api_url:
        raise ValueError("SMARTTASKS_USERS_API_URL must be set to resolve owner/assignee")
    token: TokenProvider
    if settings.users_api_token_file:
        token = FileToken(Path(settings.users_api_token_file))
    else:
        token = static_token(settings.users_api_token)
    return HttpUserDirectory(
        base_url=settings.users_api_url, token=token, ttl=settings.users_cache_seconds
    )


@asynccontextmanager
async def delivery_workers(
    settings: NotificationsSettings,
    *,
    sessions: async_sessionmaker[AsyncSession],
    directory: UserDirectory,
    secrets: SecretResolver | None = None,
    listen: bool = True,
    observer: BatchObserver | None = None,
) -> AsyncIterator[WorkerPool]:
    """Run `settings.worker_count` delivery workers (and the NOTIFY listener) for a block.

    Use it in a lifespan; embedded mode passes an in-process directory and static secrets.
    """
    channels = await build_channels(settings, secrets=secrets or build_secrets(settings))
    dispatcher = Dispatcher(channels=channels, directory=directory, renderer=Renderer())
    policy = RetryPolicy.from_settings(settings)
    pool = WorkerPool(
        [
            DeliveryWorker(
                sessions=sessions,
                dispatcher=dispatcher,
                policy=policy,
                batch_size=settings.worker_batch_size,
                concurrency=settings.worker_concurrency,
                lease_seconds=settings.worker_lease_seconds,
                idle_seconds=settings.worker_idle_seconds,
                name=f"delivery-worker-{n + 1}",
                observer=observer,
            )
            for n in range(settings.worker_count)
        ]
    )
    listener = NotifyListener(settings.database_url, pool.wake) if listen else None
    listener_task = asyncio.create_task(listener.run()) if listener else None
    log.info(
        "delivery_workers_starting", workers=settings.worker_count, email=channels.email_target
    )
    pool.start()
    try:
        yield pool
    finally:
        await pool.stop()
        if listener_task is not None:
            listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener_task
        await channels.aclose()


@asynccontextmanager
async def request_consumer(engine: AsyncEngine) -> AsyncIterator[ConsumerRunner]:
    """Consume `notification.requested` from RabbitMQ for the block's duration (cluster mode)."""
    runner = ConsumerRunner(notification_consumer(), engine=engine, settings=MessagingSettings())
    task = asyncio.create_task(runner.run(), name="notification-requests")
    try:
        yield runner
    finally:
        runner.stop()
        try:
            async with asyncio.timeout(_CONSUMER_STOP_SECONDS):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def create_notifications_app(
    settings: NotificationsSettings,
    *,
    directory: UserDirectory | None = None,
    secrets: SecretResolver | None = None,
) -> FastAPI:
    """The notification service as its own deployable: delivery log API plus the consumer
    of notification requests and the delivery workers."""

    @asynccontextmanager
    async def background(app: FastAPI) -> AsyncIterator[None]:
        users = directory or build_directory(settings)
        try:
            async with contextlib.AsyncExitStack() as stack:
                if settings.consumer_enabled:
                    await stack.enter_async_context(request_consumer(app.state.engine))
                if settings.worker_enabled and settings.worker_count:
                    app.state.delivery_workers = await stack.enter_async_context(
                        delivery_workers(
                            settings, sessions=app.state.sessions, directory=users, secrets=secrets
                        )
                    )
                yield
        finally:
            if isinstance(users, HttpUserDirectory) and directory is None:
                await users.aclose()

    return create_service_app(
        service="notifications",
        title="SmartTasks notifications",
        settings=settings,
        routers=ROUTERS,
        background=background,
    )
