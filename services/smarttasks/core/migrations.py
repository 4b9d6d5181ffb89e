"""Alembic: one history per service, in its own PostgreSQL schema with its own version table."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, pool, text
from sqlalchemy.engine import make_url


def sync_url(url: str) -> str:
    """The psycopg 3 URL in its synchronous form, for Alembic."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def alembic_config(*, url: str, script_location: Path, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(*, url: str, script_location: Path, schema: str, revision: str = "head") -> None:
    """Bring one service's schema to `revision`."""
    command.upgrade(
        alembic_config(url=url, script_location=script_location, schema=schema), revision
    )


def run_env(target_metadata: MetaData) -> None:
    """Body of every service's `env.py`: online migrations inside the service's own schema."""
    from alembic import context

    config = context.config
    schema = str(config.attributes["schema"])
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Several replicas may start at once: one migrates, the others wait and find nothing to do.
        connection.execute(text("SELECT pg_advisory_lock(hashtext(:s))"), {"s": schema})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=False,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.execute(text("SELECT pg_advisory_unlock(hashtext(:s))"), {"s": schema})
        connection.commit()
    engine.dispose()
