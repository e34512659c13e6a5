"""Database plumbing: one async engine per service, bound to the service's own PostgreSQL schema.

Every connection of a service runs with ``search_path`` set to that schema, so a service's SQL names its
own tables unqualified and never reaches another service's. Migrations are Alembic, one tree per service
(``services/<name>/migrations``), with the version table inside the service's schema.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*$")

# Errors meaning "the database could not do it now" (down, restarting, pool exhausted, statement failed),
# whichever way the statement went: through SQLAlchemy, or straight through the driver (``fetch_one_shot``).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.DBAPIError, sa_exc.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# Driver errors after which the connection is unusable (the server closed it, restarted, or never
# answered): the connection is thrown away and the statement may be sent again on a fresh one.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError, asyncpg.InterfaceError, ConnectionError, OSError,
    # A connection the server killed mid-operation can be left with its protocol half-way through that
    # operation ("cannot switch to state 11; another operation (2) is in progress"): it is as unusable as
    # a closed one, and the statement was never sent (it failed at prepare).
    asyncpg.InternalClientError)


def make_engine(database_url: str, schema: str, pool_size: int = 10, *, pre_ping: bool = False,
                pool_recycle: int = 1800, **kwargs: Any) -> AsyncEngine:
    """The service's engine: up to ``2 * pool_size`` connections, all kept open once opened.

    The ceiling is what it always was (``pool_size`` plus as many overflow connections), but without
    overflow: SQLAlchemy closes an overflow connection as soon as it is returned while ``pool_size`` others
    sit idle, so every burst opened and closed connections again, each costing a backend start on the
    server and type introspection on the client (measured in intake at 32 requests in flight: one new
    session per 18 requests, and the server's CPU per request 2.4 times what it is without them).

    ``pre_ping`` is off by default: with SQLAlchemy's asyncpg dialect it costs three round trips per
    checkout (BEGIN, an empty query, ROLLBACK), as many as a whole single-event write in intake. Stale
    connections are handled without it: a checkout hook replaces connections whose socket the server has
    already closed (a restart, an idle-session kill; asyncpg has seen the EOF, so no round trip),
    ``pool_recycle`` bounds how old a connection gets (half-open TCP after a network failover), and what
    is left surfaces as a disconnect error, on which SQLAlchemy invalidates the pool; consumers retry such
    batches (SQLSTATE class 08) and ``fetch_one_shot`` retries its statement once. Turn ``pre_ping`` on
    behind a proxy that drops idle connections without closing them.
    """
    if not _SCHEMA.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    engine = create_async_engine(
        database_url,
        pool_size=2 * pool_size,
        max_overflow=0,
        pool_pre_ping=pre_ping,
        pool_recycle=pool_recycle,
        # jsonb columns (outbox headers, payload snapshots) decode with orjson: the standard library's json
        # was about 4% of auto_comp's CPU.
        json_deserializer=orjson.loads,
        connect_args={"server_settings": {"search_path": schema, "application_name": schema},
                      "command_timeout": 60},
        **kwargs,
    )
    event.listen(engine.sync_engine.pool, "checkout", _discard_closed)
    return engine


def _discard_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool checkout hook: a connection the server already closed is replaced before anyone uses it
    (SQLAlchemy retries the checkout with a fresh connection on DisconnectionError)."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    is_closed = getattr(driver, "is_closed", None)
    if is_closed is not None and is_closed():
        raise sa_exc.DisconnectionError("connection closed by the server")


async def fetch_one_shot(engine: AsyncEngine, sql: str, *args: Any) -> Sequence[asyncpg.Record]:
    """Run one statement as its own transaction, straight through asyncpg on a pooled connection.

    For hot paths whose whole unit of work is one statement (data-modifying CTEs): no BEGIN and COMMIT
    round trips, and none of SQLAlchemy's per-statement work (compiling, result proxies, the greenlet
    bridge), which together cost more CPU than the statement itself. ``sql`` uses asyncpg's ``$n``
    placeholders; asyncpg prepares it once per connection and caches it. If the connection turns out to
    be dead, it is discarded and the statement is sent once more on a fresh one, so the statement must be
    idempotent (it may have committed before the connection died).
    """
    for attempt in (1, 2):
        async with engine.connect() as conn:
            driver = await raw_connection(conn)
            try:
                rows: Sequence[asyncpg.Record] = await driver.fetch(sql, *args)
                return rows
            except _CONNECTION_LOST as exc:
                await conn.invalidate(exc)
                if attempt == 2:
                    raise
    raise AssertionError("unreachable")


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
