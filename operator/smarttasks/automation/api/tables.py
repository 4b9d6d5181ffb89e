"""The rule documents of embedded mode, in schema ``automation`` (SQLAlchemy Core)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Integer, String, Table, UniqueConstraint, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from smarttasks.core.db import schema_metadata

SCHEMA = "automation"
metadata = schema_metadata(SCHEMA)

rule_documents = Table(
    "rule_documents",
    metadata,
    Column("uid", Uuid(), primary_key=True),
    Column("namespace", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("owner_id", Uuid(), nullable=True),
    Column("labels", JSONB(), nullable=False),
    Column("spec", JSONB(), nullable=False),
    Column("status", JSONB(), nullable=False),
    Column("generation", Integer(), nullable=False),
    Column("resource_version", BigInteger(), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("namespace", "name", name="uq_rule_documents_namespace_name"),
)
"""One row per rule: the same metadata, spec and status as the custom resource would have."""

__all__ = ["SCHEMA", "metadata", "rule_documents"]
