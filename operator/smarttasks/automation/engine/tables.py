"""Tables of the engine in schema `automation` (SQLAlchemy Core; the migrations create them)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from smarttasks.core.db import schema_metadata
from smarttasks.core.outbox import (
    dead_letter_table,
    inbox_table,
    outbox_ordering_index,
    outbox_table,
)

SCHEMA = "automation"
SCHEDULE_CHANNEL = "automation_schedule"
"""NOTIFY channel: payload is the epoch (seconds) of a schedule entry armed earlier than before."""

metadata: MetaData = schema_metadata(SCHEMA)

# The projection: the latest known state of every task, guarded by the task's version so a
# redelivered or reordered event never moves it backwards. Deleted tasks stay as tombstones.
tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    Column("status", String(20), nullable=False),
    Column("priority", String(10), nullable=False),
    Column("project", String(63), nullable=True),
    Column("labels", ARRAY(String(63)), nullable=False, server_default=text("'{}'")),
    Column("owner_id", Uuid, nullable=False),
    Column("assignee_id", Uuid, nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("snapshot", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index(
        "ix_tasks_open_due",
        "due_at",
        postgresql_where=text(
            "NOT deleted AND status IN ('todo', 'in_progress') AND due_at IS NOT NULL"
        ),
    ),
)

# Which schedule kinds (trigger, offset) exist; a kind's entries were backfilled when it was added.
schedule_kinds = Table(
    "schedule_kinds",
    metadata,
    Column("trigger", String(32), nullable=False),
    Column("offset_s", Integer, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("trigger", "offset_s", name="pk_schedule_kinds"),
)

# Due entries of the deadline triggers: one per open task with a deadline, per kind.
# `next_at` NULL means spent (fired, nothing more until the deadline moves).
schedule = Table(
    "schedule",
    metadata,
    Column("task_id", Uuid, nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("offset_s", Integer, nullable=False),
    Column("deadline", DateTime(timezone=True), nullable=False),
    Column("slot", Integer, nullable=False, server_default=text("0")),
    Column("next_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("task_id", "trigger", "offset_s", name="pk_schedule"),
    Index("ix_schedule_next_at", "next_at", postgresql_where=text("next_at IS NOT NULL")),
)

# Due entries of Schedule (cron) rules: one per rule.
cron_entries = Table(
    "cron_entries",
    metadata,
    Column("rule_uid", String(64), primary_key=True),
    Column("expression", String(128), nullable=False),
    Column("time_zone", String(64), nullable=False),
    Column("next_at", DateTime(timezone=True), nullable=True),
    Index("ix_cron_entries_next_at", "next_at", postgresql_where=text("next_at IS NOT NULL")),
)

# Every firing, once: the unique key is what makes "exactly once" hold across redelivery,
# restarts and replicas. Throttled firings are recorded too (and never notify).
firings = Table(
    "firings",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("rule_uid", String(64), nullable=False),
    Column("task_id", Uuid, nullable=True),
    Column("trigger", String(32), nullable=False),
    Column("occurrence", String(200), nullable=False),
    Column("rule_namespace", String(253), nullable=False),
    Column("rule_name", String(253), nullable=False),
    Column("rule_generation", BigInteger, nullable=False),
    Column("throttled", Boolean, nullable=False, server_default=text("false")),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column(
        "fired_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
    UniqueConstraint(
        "rule_uid",
        "task_id",
        "trigger",
        "occurrence",
        name="uq_firings_key",
        postgresql_nulls_not_distinct=True,
    ),
    Index("ix_firings_rule_fired", "rule_uid", "fired_at"),
)

# Per-rule totals for the rule's status, updated in the firing's own transaction. Each
# transaction adds to one of STATS_SHARDS rows per rule (summed when read), so a rule that
# fires on every event does not serialise all its firings on one hot row.
STATS_SHARDS = 16
rule_stats = Table(
    "rule_stats",
    metadata,
    Column("rule_uid", String(64), nullable=False),
    Column("shard", SmallInteger, nullable=False),
    Column("fired_count", BigInteger, nullable=False, server_default=text("0")),
    Column("throttled_count", BigInteger, nullable=False, server_default=text("0")),
    Column("last_fired_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("rule_uid", "shard", name="pk_rule_stats"),
)

outbox = outbox_table(metadata)
outbox_ordering_index(outbox)
# The task-event consumer's inbox (dedupe on event id) and, in embedded mode, its dead letters.
inbox = inbox_table(metadata)
dead_letters = dead_letter_table(metadata)

__all__ = [
    "SCHEDULE_CHANNEL",
    "SCHEMA",
    "STATS_SHARDS",
    "cron_entries",
    "dead_letters",
    "firings",
    "inbox",
    "metadata",
    "outbox",
    "rule_stats",
    "schedule",
    "schedule_kinds",
    "tasks",
]
