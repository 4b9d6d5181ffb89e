"""Wake the outbox relays on insert, and index unsent events by task for ordered relaying.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from smarttasks.core.outbox import outbox_notify_ddl, outbox_notify_drop_ddl

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "tasks"


def upgrade() -> None:
    for statement in outbox_notify_ddl(SCHEMA):
        op.execute(statement)
    op.create_index(
        "ix_outbox_unsent_aggregate",
        "outbox",
        ["aggregate_id", "seq"],
        schema=SCHEMA,
        postgresql_where=sa.text("sent_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unsent_aggregate", "outbox", schema=SCHEMA)
    for statement in outbox_notify_drop_ddl(SCHEMA):
        op.execute(statement)
