"""Helpers for intake's integration tests: a running service in process, keys, and a topic watcher."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake import persistence
from services.intake.app import build_app
from services.intake.config import Settings
from shared.auth import generate_api_key
from shared.db import migrate

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "intake" / "migrations"


async def migrated(url: str) -> str:
    await migrate(url, "intake", MIGRATIONS)
    return url


def intake_settings(database_url: str, bootstrap: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "kafka_bootstrap_servers": bootstrap,
                              "api_key_cache_seconds": 0.5, "log_json": False, **overrides}
    return Settings(**values)


@dataclass
class Running:
    app: Any
    client: httpx.AsyncClient

    @property
    def engine(self) -> AsyncEngine:
        return self.app.state.ctx.engine


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """The service in this event loop (ASGI transport does not run lifespans, so start it here)."""
    app = build_app(settings)
    ctx = app.state.ctx
    await ctx.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                                     timeout=60) as client:
            yield Running(app, client)
    finally:
        await ctx.stop()


async def create_key(engine: AsyncEngine, *, system: str = "order-system", regions: Iterable[str] = ("*",),
                     event_types: Iterable[str] = ("*",), rate: int = 100_000) -> tuple[str, str]:
    key_id, full, key_hash = generate_api_key()
    async with engine.begin() as conn:
        await persistence.insert_api_key(conn, key_id=key_id, system_name=system, key_hash=key_hash,
                                         regions=list(regions), event_types=list(event_types),
                                         rate_limit_per_second=rate)
    return key_id, full


async def received_ids(engine: AsyncEngine, ids: Iterable[str]) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT event_id FROM received_events WHERE event_id = ANY(:ids)"),
                                  {"ids": list(ids)})
        return {r[0] for r in rows}


def new_id(prefix: str = "it") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Arrival:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: dict[str, bytes]
    envelope: dict[str, Any]


@dataclass
class Watch:
    """Reads topics from their current end (or start), so only records produced after ``start`` are seen."""

    bootstrap: str
    topics: tuple[str, ...]
    from_start: bool = False  # read what the topics already hold too
    arrivals: list[Arrival] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> Watch:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="earliest")
        await self._consumer.start()
        partitions = []
        for topic in self.topics:
            for p in sorted(self._consumer.partitions_for_topic(topic) or await self._partitions(topic)):
                partitions.append(TopicPartition(topic, p))
        self._consumer.assign(partitions)
        if self.from_start:
            await self._consumer.seek_to_beginning(*partitions)
        else:
            await self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self._consumer.position(tp)  # fix the start now, before anything is produced
        return self

    async def _partitions(self, topic: str) -> set[int]:
        assert self._consumer is not None
        await self._consumer._client.force_metadata_update()
        return self._consumer.partitions_for_topic(topic) or set()

    async def until(self, event_ids: Iterable[str], timeout: float = 30.0,
                    settle: float = 0.0) -> dict[str, list[Arrival]]:
        """Records by event id once every id has arrived (then ``settle`` more seconds for duplicates)."""
        assert self._consumer is not None
        wanted = set(event_ids)
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    self.arrivals.append(Arrival(tp.topic, tp.partition, r.offset, r.key,
                                                 {k: v for k, v in r.headers}, orjson.loads(r.value)))
            seen = {a.envelope["event_id"] for a in self.arrivals}
            now = time.monotonic()
            if wanted <= seen and settle_until is None:
                settle_until = now + settle
            if settle_until is not None and now >= settle_until:
                break
            if now > deadline:
                break
        return {eid: [a for a in self.arrivals if a.envelope["event_id"] == eid] for eid in wanted}

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
