"""Tasks and the outbox of task events.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from smarttasks.core.outbox import create_outbox_table

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "tasks"


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("priority", sa.String(10), nullable=False),
        sa.Column("labels", postgresql.ARRAY(sa.String(50)), nullable=False, server_default="{}"),
        sa.Column("project", sa.String(63), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("assignee_id", sa.Uuid(), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.CheckConstraint(
            "status IN ('todo', 'in_progress', 'done', 'cancelled')", name="ck_tasks_status"
        ),
        sa.CheckConstraint(
            "priority IN ('low', 'normal', 'high', 'urgent')", name="ck_tasks_priority"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_tasks_owner_created", "tasks", ["owner_id", "created_at", "id"], schema=SCHEMA
    )
    op.create_index(
        "ix_tasks_assignee_created", "tasks", ["assignee_id", "created_at", "id"], schema=SCHEMA
    )
    op.create_index("ix_tasks_created", "tasks", ["created_at", "id"], schema=SCHEMA)
    op.create_index("ix_tasks_due", "tasks", ["due_at", "id"], schema=SCHEMA)
    op.create_index("ix_tasks_labels", "tasks", ["labels"], schema=SCHEMA, postgresql_using="gin")
    create_outbox_table(SCHEMA)


def downgrade() -> None:
    op.drop_table("outbox", schema=SCHEMA)
    op.drop_table("tasks", schema=SCHEMA)
