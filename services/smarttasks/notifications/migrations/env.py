"""Alembic environment of the notifications service."""

from smarttasks.core.migrations import run_env
from smarttasks.notifications.models import Base

run_env(Base.metadata)
