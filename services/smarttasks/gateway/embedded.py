"""Embedded mode: one process, PostgreSQL from the wheel, every API on 127.0.0.1:8000."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog
import uvicorn

from smarttasks.core.logging import configure_logging
from smarttasks.gateway.composition import create_embedded_app, migrate_all
from smarttasks.gateway.embedded_db import EmbeddedPostgres
from smarttasks.notifications.settings import NotificationsSettings
from smarttasks.users.settings import UsersSettings

log = structlog.get_logger()


def embedded_settings(data_dir: Path, database_url: str) -> UsersSettings:
    """Settings for embedded mode: environment variables still win where they are set."""
    defaults = {
        "database_url": database_url,
        "signing_key_file": str(data_dir / "keys" / "signing-key.pem"),
    }
    base = UsersSettings()
    return base.model_copy(update={k: v for k, v in defaults.items() if not getattr(base, k)})


def open_database(data_dir: Path) -> EmbeddedPostgres:
    """Start (or reuse) the embedded server and migrate every schema."""
    data_dir.mkdir(parents=True, exist_ok=True)
    database = EmbeddedPostgres(data_dir / "pgdata")
    migrate_all(database.url)
    return database


def run_embedded(*, host: str, port: int, data_dir: Path) -> int:
    """Serve until Ctrl-C, then stop PostgreSQL too."""
    data_dir = data_dir.resolve()
    first_run = not (data_dir / "pgdata" / "PG_VERSION").exists()
    base = UsersSettings()
    configure_logging(json=base.json_logs, level=base.log_level)
    log.info("starting_postgres", data_dir=str(data_dir))
    database = open_database(data_dir)
    try:
        settings = embedded_settings(data_dir, database.url)
        notifications = NotificationsSettings()
        if "SMARTTASKS_OUTBOX_DIR" not in os.environ:
            notifications = notifications.model_copy(
                update={"outbox_dir": str(data_dir / "outbox")}
            )
        notifications = notifications.model_copy(update={"database_url": database.url})
        app = create_embedded_app(settings, notifications=notifications)
        _banner(host=host, port=port, data_dir=data_dir, first_run=first_run)
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
        # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run()
    finally:
        log.info("stopping_postgres")
        database.stop()
    return 0


def _banner(*, host: str, port: int, data_dir: Path, first_run: bool) -> None:
    url = f"http://{host}:{port}"
    lines = [
        "",
        f"  SmartTasks is running at {url}",
        f"  API documentation:       {url}/docs",
        f"  Data (PostgreSQL, keys): {data_dir}",
    ]
    if first_run:
        lines += [
            "",
            "  First run: create an administrator in another terminal with",
            "    .venv/bin/smarttasks users create-admin --email you@example.com",
            f"  or register a user: curl -X POST {url}/api/v1/auth/register ...",
        ]
    lines += ["  Stop with Ctrl-C.", ""]
    print("\n".join(lines), flush=True)
