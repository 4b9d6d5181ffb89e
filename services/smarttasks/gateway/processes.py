"""Cluster-mode entry points: `smarttasks run <component>`."""

from __future__ import annotations

import structlog
import uvicorn
from fastapi import FastAPI

from smarttasks.core.logging import configure_logging
from smarttasks.core.settings import ServiceSettings

log = structlog.get_logger()


def _configure_logging() -> None:
    base = ServiceSettings()
    configure_logging(json=base.json_logs, level=base.log_level)


def users_app() -> FastAPI:
    _configure_logging()
    from smarttasks.users.app import create_users_app
    from smarttasks.users.settings import UsersSettings

    return create_users_app(UsersSettings())


def tasks_app() -> FastAPI:
    _configure_logging()
    from smarttasks.tasks.app import TasksSettings, create_tasks_app

    return create_tasks_app(TasksSettings())


def gateway_app() -> FastAPI:
    """Every API in one app against external services (no embedded database)."""
    _configure_logging()
    from smarttasks.gateway.composition import create_embedded_app
    from smarttasks.users.settings import UsersSettings

    return create_embedded_app(UsersSettings())


def rules_api_app() -> FastAPI:
    _configure_logging()
    from smarttasks.automation.api import RulesApiSettings, create_rules_app

    return create_rules_app(RulesApiSettings())


def notifications_app() -> FastAPI:
    _configure_logging()
    from smarttasks.notifications.app import create_notifications_app
    from smarttasks.notifications.settings import NotificationsSettings

    return create_notifications_app(NotificationsSettings())


APPS = {
    "users": "users_app",
    "tasks": "tasks_app",
    "gateway": "gateway_app",
    "rules-api": "rules_api_app",
    "notifications": "notifications_app",
}


def run_component(component: str, *, host: str, port: int, workers: int = 1) -> int:
    """Run one component as its own process, configured from `SMARTTASKS_*` variables."""
    _configure_logging()
    base = ServiceSettings()
    log.info("starting_component", component=component)
    if component == "migrate":
        from smarttasks.gateway.composition import migrate_all

        migrate_all(base.database_url)
        return 0
    if component == "operator":
        from smarttasks.automation.main import main as operator_main

        return operator_main()
    if component == "relay":
        from smarttasks.core.messaging.__main__ import main as relay_main

        return relay_main(["relay"])
    # An import string and a factory, so that each worker process builds its own app.
    uvicorn.run(
        f"{__name__}:{APPS[component]}",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
    )
    return 0
