"""Inbox and dead letters of the `notification.requested` consumer.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

from smarttasks.core.outbox import create_consumer_tables

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "notifications"


def upgrade() -> None:
    create_consumer_tables(SCHEMA)


def downgrade() -> None:
    op.drop_table("dead_letters", schema=SCHEMA)
    op.drop_table("inbox", schema=SCHEMA)
