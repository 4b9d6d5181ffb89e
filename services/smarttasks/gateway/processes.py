"""Cluster-mode entry points: `smarttasks run <component>`."""

from __future__ import annotations

import structlog

from smarttasks.core.logging import configure_logging
from smarttasks.core.settings import ServiceSettings

log = structlog.get_logger()


def run_component(component: str, *, host: str, port: int) -> int:
    """Run one component as its own process, configured from `SMARTTASKS_*` variables."""
    from smarttasks.gateway.cli import serve

    base = ServiceSettings()
    configure_logging(json=base.json_logs, level=base.log_level)
    log.info("starting_component", component=component)
    if component == "migrate":
        from smarttasks.gateway.composition import migrate_all

        migrate_all(base.database_url)
        return 0
    if component == "users":
        from smarttasks.users.app import create_users_app
        from smarttasks.users.settings import UsersSettings

        serve(create_users_app(UsersSettings()), host=host, port=port)
    elif component == "tasks":
        from smarttasks.tasks.app import TasksSettings, create_tasks_app

        serve(create_tasks_app(TasksSettings()), host=host, port=port)
    elif component == "gateway":
        from smarttasks.gateway.composition import create_embedded_app
        from smarttasks.users.settings import UsersSettings

        serve(create_embedded_app(UsersSettings()), host=host, port=port)
    return 0
