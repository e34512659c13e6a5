"""Helpers for the ledger's integration tests: migrate a fresh database, wrap envelopes as deliveries,
apply batches through the real handler, read the books back."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger.config import Settings
from services.ledger.handlers import apply_batch
from shared.contracts.envelope import Envelope
from shared.contracts.registry import encode_envelope, validate_payload
from shared.db import make_engine, migrate
from shared.kafka import Delivered, EventProducer, envelope_headers

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "ledger" / "migrations"
_offsets = itertools.count()


async def ledger_engine(url: str) -> AsyncEngine:
    await migrate(url, "ledger", MIGRATIONS)
    return make_engine(url, "ledger", pool_size=8)


def delivered(envelope: Envelope, partition: int = 0) -> Delivered:
    return Delivered(envelope, validate_payload(envelope), "test.topic", partition, next(_offsets),
                     envelope.event_id.encode(), 0)


async def apply(engine: AsyncEngine, settings: Settings, envelopes: Sequence[Envelope], stripe: int = 0):
    async with engine.begin() as conn:
        return await apply_batch(conn, [delivered(e) for e in envelopes], settings, stripe)


async def set_budget(engine: AsyncEngine, region: str, period: str, limit: int, currency: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO budgets (region, period, currency, limit_minor) VALUES (:r, :p, :c, :l) "
            "ON CONFLICT (region, period) DO UPDATE SET limit_minor = EXCLUDED.limit_minor"),
            {"r": region, "p": period, "c": currency, "l": limit})


async def scalar(engine: AsyncEngine, sql: str, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def rows(engine: AsyncEngine, sql: str, **params):
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]


async def wait_for(engine: AsyncEngine, sql: str, expected, timeout: float = 60.0, **params):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await scalar(engine, sql, **params)
        if value == expected:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"{sql!r} is {value!r}, expected {expected!r}")


async def send(producer: EventProducer, topic: str, envelopes: Sequence[Envelope], value: bytes | None = None) -> None:
    """Publish envelopes keyed by buyer (as auto_comp and intake do) and wait until the broker has them."""
    futures = [await producer.send(topic, value or encode_envelope(e), e.payload["buyer_id"].encode(),
                                   envelope_headers(e)) for e in envelopes]
    await asyncio.gather(*futures)
