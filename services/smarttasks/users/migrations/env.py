"""Alembic environment of the users service."""

from smarttasks.core.migrations import run_env
from smarttasks.users.models import Base

run_env(Base.metadata)
