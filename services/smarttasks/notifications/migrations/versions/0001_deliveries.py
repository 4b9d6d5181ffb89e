"""Deliveries and their attempts.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "notifications"


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("notification_id", sa.Uuid(), nullable=False),
        sa.Column("recipient", sa.String(400), nullable=False),
        sa.Column("recipient_user_id", sa.Uuid(), nullable=True),
        sa.Column("address", sa.String(2048), nullable=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempts_offset", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("rule_namespace", sa.String(253), nullable=False),
        sa.Column("rule_name", sa.String(253), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("dedup_key", sa.String(500), nullable=False),
        sa.Column("request", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("notification_id", "recipient", name="uq_deliveries_notification"),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'skipped', 'failed', 'dead')",
            name="ck_deliveries_status",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    )
    op.create_index(
        "ix_deliveries_user_created",
        "deliveries",
        ["recipient_user_id", "created_at", "id"],
        schema=SCHEMA,
    )
    op.create_index("ix_deliveries_created", "deliveries", ["created_at", "id"], schema=SCHEMA)
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_attempts"),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            [f"{SCHEMA}.deliveries.id"],
            name="fk_attempts_delivery_id_deliveries",
            ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_attempts_delivery", "attempts", ["delivery_id", "number"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("attempts", schema=SCHEMA)
    op.drop_table("deliveries", schema=SCHEMA)
