"""Engine: task projection, durable schedule, firings, rule totals, outbox, inbox.

Revision ID: 0001_engine
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from smarttasks.core.outbox import (
    create_consumer_tables,
    create_outbox_table,
    outbox_notify_ddl,
    outbox_notify_drop_ddl,
)

revision: str = "0001_engine"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "automation"
_OPEN = "NOT deleted AND status IN ('todo', 'in_progress') AND due_at IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("priority", sa.String(10), nullable=False),
        sa.Column("project", sa.String(63), nullable=True),
        sa.Column("labels", postgresql.ARRAY(sa.String(63)), nullable=False, server_default="{}"),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("assignee_id", sa.Uuid(), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("snapshot", postgresql.JSONB(), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("task_id", name="pk_tasks"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_tasks_open_due",
        "tasks",
        ["due_at"],
        schema=SCHEMA,
        postgresql_where=sa.text(_OPEN),
    )
    op.create_table(
        "schedule_kinds",
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("offset_s", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("trigger", "offset_s", name="pk_schedule_kinds"),
        schema=SCHEMA,
    )
    op.create_table(
        "schedule",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("offset_s", sa.Integer(), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("task_id", "trigger", "offset_s", name="pk_schedule"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_schedule_next_at",
        "schedule",
        ["next_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("next_at IS NOT NULL"),
    )
    op.create_table(
        "cron_entries",
        sa.Column("rule_uid", sa.String(64), nullable=False),
        sa.Column("expression", sa.String(128), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("rule_uid", name="pk_cron_entries"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_cron_entries_next_at",
        "cron_entries",
        ["next_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("next_at IS NOT NULL"),
    )
    op.create_table(
        "firings",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("rule_uid", sa.String(64), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("occurrence", sa.String(200), nullable=False),
        sa.Column("rule_namespace", sa.String(253), nullable=False),
        sa.Column("rule_name", sa.String(253), nullable=False),
        sa.Column("rule_generation", sa.BigInteger(), nullable=False),
        sa.Column("throttled", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "fired_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_firings"),
        sa.UniqueConstraint(
            "rule_uid",
            "task_id",
            "trigger",
            "occurrence",
            name="uq_firings_key",
            postgresql_nulls_not_distinct=True,
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_firings_rule_fired", "firings", ["rule_uid", "fired_at"], schema=SCHEMA)
    op.create_table(
        "rule_stats",
        sa.Column("rule_uid", sa.String(64), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("fired_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("throttled_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("rule_uid", "shard", name="pk_rule_stats"),
        schema=SCHEMA,
    )
    create_outbox_table(SCHEMA)

    op.create_index(
        "ix_outbox_unsent_aggregate",
        "outbox",
        ["aggregate_id", "seq"],
        schema=SCHEMA,
        postgresql_where=sa.text("sent_at IS NULL"),
    )
    for statement in outbox_notify_ddl(SCHEMA):
        op.execute(statement)
    create_consumer_tables(SCHEMA)


def downgrade() -> None:
    for statement in outbox_notify_drop_ddl(SCHEMA):
        op.execute(statement)
    for table in (
        "dead_letters",
        "inbox",
        "outbox",
        "rule_stats",
        "firings",
        "cron_entries",
        "schedule",
        "schedule_kinds",
        "tasks",
    ):
        op.drop_table(table, schema=SCHEMA)
