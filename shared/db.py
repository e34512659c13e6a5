"""Database plumbing: one async engine per service, bound to the service's own PostgreSQL schema.

Every connection of a service runs with ``search_path`` set to that schema, so a service's SQL names its
own tables unqualified and never reaches another service's. Migrations are Alembic, one tree per service
(``services/<name>/migrations``), with the version table inside the service's schema.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*$")


def make_engine(database_url: str, schema: str, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    if not _SCHEMA.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": {"search_path": schema, "application_name": schema},
                      "command_timeout": 60},
        **kwargs,
    )


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))


# ------------------------------------------------------------------ toolkit tables (outbox, consumer state)

TOOLKIT_DDL = [
    """CREATE TABLE IF NOT EXISTS outbox (
        id bigserial PRIMARY KEY,
        topic text NOT NULL,
        key bytea,
        value bytea NOT NULL,
        headers jsonb NOT NULL DEFAULT '[]'::jsonb,
        created_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS processed_events (
        consumer_group text NOT NULL,
        event_id text NOT NULL,
        processed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, event_id))""",
    "CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (processed_at)",
    """CREATE TABLE IF NOT EXISTS consumer_offsets (
        consumer_group text NOT NULL,
        topic text NOT NULL,
        partition int NOT NULL,
        next_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, topic, partition))""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id bigserial PRIMARY KEY,
        consumer_group text NOT NULL,
        topic text NOT NULL,
        partition int NOT NULL,
        "offset" bigint NOT NULL,
        key bytea,
        value bytea,
        headers jsonb NOT NULL DEFAULT '[]'::jsonb,
        error text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (consumer_group, topic, partition, "offset"))""",
]


def create_toolkit_tables(op_or_conn: Any) -> None:
    """Called from each service's first Alembic migration (``op``) or with a sync Connection."""
    for ddl in TOOLKIT_DDL:
        op_or_conn.execute(text(ddl))


# ------------------------------------------------------------------ migrations


def _alembic_config(migrations_dir: Path, database_url: str, schema: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["schema"] = schema
    return cfg


async def migrate(database_url: str, schema: str, migrations_dir: Path, revision: str = "head") -> None:
    """Create the service schema if needed and upgrade it to ``revision``."""
    from alembic import command

    cfg = _alembic_config(migrations_dir, database_url, schema)
    engine = make_engine(database_url, schema, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            # Two services migrating the same fresh database at once must not race on the schema.
            await conn.execute(text("select pg_advisory_xact_lock(hashtext(:s))"), {"s": f"migrate:{schema}"})

            def run(sync_conn: Connection) -> None:
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, revision)

            await conn.run_sync(run)
    finally:
        await engine.dispose()


def run_alembic_env() -> None:
    """Body of every service's ``migrations/env.py``: online migrations on the connection we pass in."""
    from alembic import context

    cfg = context.config
    schema = cfg.attributes["schema"]
    connection = cfg.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `python -m services.<name> migrate`")
    context.configure(connection=connection, version_table_schema=schema, include_schemas=False,
                      transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


async def retry_connect(engine: AsyncEngine, attempts: int = 30, delay: float = 1.0) -> None:
    """Wait for the database at startup, with a clear error when it never answers."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            await ping(engine)
            return
        except Exception as exc:
            last = exc
            await asyncio.sleep(delay)
    raise RuntimeError(f"database not reachable after {attempts} attempts: {last}") from last


async def raw_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy AsyncConnection, for COPY and array-bound bulk SQL."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection
