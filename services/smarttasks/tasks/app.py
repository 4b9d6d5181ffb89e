"""Assembly of the tasks service."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI

from smarttasks.core.service_app import create_service_app
from smarttasks.core.settings import ServiceSettings
from smarttasks.tasks.endpoints import router

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "tasks"
ROUTERS: tuple[APIRouter, ...] = (router,)


class TasksSettings(ServiceSettings):
    """Settings of the tasks service (env prefix `SMARTTASKS_`)."""


def create_tasks_app(settings: TasksSettings) -> FastAPI:
    """The tasks service as its own deployable."""
    return create_service_app(
        service="tasks", title="SmartTasks tasks", settings=settings, routers=ROUTERS
    )
