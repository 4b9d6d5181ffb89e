"""Alembic environment of the automation component (schema `automation`)."""

from smarttasks.automation.engine.tables import metadata
from smarttasks.core.migrations import run_env

run_env(metadata)
