"""Tables of the tasks service, in schema `tasks`."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, Text, Uuid
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from smarttasks.core.db import schema_metadata
from smarttasks.core.outbox import outbox_table

SCHEMA = "tasks"


class Base(DeclarativeBase):
    metadata = schema_metadata(SCHEMA)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_owner_created", "owner_id", "created_at", "id"),
        Index("ix_tasks_assignee_created", "assignee_id", "created_at", "id"),
        Index("ix_tasks_created", "created_at", "id"),
        Index("ix_tasks_due", "due_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="todo")
    priority: Mapped[str] = mapped_column(String(10), default="normal")
    labels: Mapped[list[str]] = mapped_column(ARRAY(String(50)), default=list)
    project: Mapped[str | None] = mapped_column(String(63), nullable=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)


outbox = outbox_table(Base.metadata)
