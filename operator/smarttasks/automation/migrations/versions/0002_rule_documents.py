"""Rule documents: AutomationRules stored in the database (embedded mode).

Revision ID: 0002_rule_documents
Revises: 0001_engine
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_rule_documents"
down_revision: str | None = "0001_engine"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "automation"


def upgrade() -> None:
    op.create_table(
        "rule_documents",
        sa.Column("uid", sa.Uuid(), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("labels", postgresql.JSONB(), nullable=False),
        sa.Column("spec", postgresql.JSONB(), nullable=False),
        sa.Column("status", postgresql.JSONB(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("resource_version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid", name="pk_rule_documents"),
        sa.UniqueConstraint("namespace", "name", name="uq_rule_documents_namespace_name"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_rule_documents_owner",
        "rule_documents",
        ["namespace", "owner_id", "name"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("rule_documents", schema=SCHEMA)
