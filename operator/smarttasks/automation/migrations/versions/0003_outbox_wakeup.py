"""Stop notifying from inside transactions: relays are woken after the commit.

The outbox insert trigger made every firing's commit wait for the previous notifying
commit (PostgreSQL serialises them); the engine now notifies after it commits.

Revision ID: 0003_outbox_wakeup
Revises: 0002_rule_documents
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

from smarttasks.core.outbox import outbox_notify_ddl, outbox_notify_drop_ddl

revision: str = "0003_outbox_wakeup"
down_revision: str | None = "0002_rule_documents"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "automation"


def upgrade() -> None:
    for statement in outbox_notify_drop_ddl(SCHEMA):
        op.execute(statement)


def downgrade() -> None:
    for statement in outbox_notify_ddl(SCHEMA):
        op.execute(statement)
