"""Automation: AutomationRule custom resources, their compiler, the kopf operator and rules API.

Layering (inner never imports outer): ``rules`` (pure: model, compiler, index, matcher)
→ ``engine`` → adapters (``handlers`` for kopf, ``api`` for HTTP, stores for Kubernetes
and the database). This component imports only ``smarttasks.core``.
"""

from pathlib import Path

API_GROUP = "smarttasks.io"
API_VERSION = "v1alpha1"
KIND = "AutomationRule"
PLURAL = "automationrules"
OWNER_LABEL = f"{API_GROUP}/owner"
"""Label carrying the id of the user who made a rule through the REST API."""

SCHEMA = "automation"
"""The component's PostgreSQL schema (engine tables, rule documents of embedded mode)."""
MIGRATIONS = Path(__file__).parent / "migrations"
"""The component's Alembic history (one for the schema)."""

__all__ = ["API_GROUP", "API_VERSION", "KIND", "MIGRATIONS", "OWNER_LABEL", "PLURAL", "SCHEMA"]
