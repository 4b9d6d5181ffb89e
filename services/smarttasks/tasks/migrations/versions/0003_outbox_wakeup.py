"""Stop notifying from inside transactions: relays are woken after the commit.

The insert trigger made every task change's commit wait for the previous notifying
commit (PostgreSQL serialises them); the service now notifies after it commits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

from smarttasks.core.outbox import outbox_notify_ddl, outbox_notify_drop_ddl

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "tasks"


def upgrade() -> None:
    for statement in outbox_notify_drop_ddl(SCHEMA):
        op.execute(statement)


def downgrade() -> None:
    for statement in outbox_notify_ddl(SCHEMA):
        op.execute(statement)
