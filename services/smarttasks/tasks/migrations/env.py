"""Alembic environment of the tasks service."""

from smarttasks.core.migrations import run_env
from smarttasks.tasks.models import Base

run_env(Base.metadata)
