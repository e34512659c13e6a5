"""Transactional outbox: events are rows written in the business transaction; a relay publishes them.

Order: the relay publishes rows in id order and aiokafka keeps one request in flight per partition, so
events with the same key reach their partition in the order they were committed. One relay per service
publishes at a time (a PostgreSQL advisory lock held on a dedicated connection elects it), so several
replicas never interleave. A row is deleted only after the broker acknowledged it: a crash in between
republishes it (at-least-once; consumers deduplicate by event id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.contracts.envelope import Envelope
from shared.kafka.producer import EventProducer, Headers, record_for
from shared.metrics import (
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PUBLISH_ERRORS,
    OUTBOX_PUBLISH_SECONDS,
    OUTBOX_PUBLISHED,
)

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes, Headers]

_INSERT = text(
    "INSERT INTO outbox (topic, key, value, headers) "
    "SELECT * FROM unnest(CAST(:topics AS text[]), CAST(:keys AS bytea[]), CAST(:vals AS bytea[]), "
    "CAST(:headers AS jsonb[]))")


def _headers_json(headers: Headers) -> str:
    return orjson.dumps([[k, v.decode("latin-1")] for k, v in headers]).decode()


async def enqueue_records(conn: AsyncConnection, records: Iterable[Record]) -> int:
    """Insert raw records into the outbox in one statement (one round trip for the whole batch)."""
    rows = list(records)
    if not rows:
        return 0
    await conn.execute(_INSERT, {
        "topics": [r[0] for r in rows],
        "keys": [r[1] for r in rows],
        "vals": [r[2] for r in rows],
        "headers": [_headers_json(r[3]) for r in rows],
    })
    return len(rows)


async def enqueue(conn: AsyncConnection, envelopes: Iterable[Envelope]) -> int:
    """Validate envelopes against their contracts and insert them into the outbox."""
    return await enqueue_records(conn, (record_for(e) for e in envelopes))


async def backlog(conn: AsyncConnection) -> tuple[int, float]:
    """(unpublished rows, age in seconds of the oldest)."""
    row = (await conn.execute(text(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox"))).one()
    return int(row[0]), float(row[1])


class OutboxRelay:
    def __init__(self, engine: AsyncEngine, producer: EventProducer, service: str, *,
                 batch_size: int = 500, poll_interval: float = 0.02, lock_key: str | None = None) -> None:
        self._engine = engine
        self._producer = producer
        self._service = service
        self._batch = batch_size
        self._poll = poll_interval
        self._lock_key = lock_key or f"outbox:{service}"
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.is_leader = False
        self.last_error: str | None = None

    def wake(self) -> None:
        """Called after a commit that enqueued rows, to publish without waiting for the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except TimeoutError:
                self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                async with self._engine.connect() as lock_conn:
                    got = (await lock_conn.execute(
                        text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": self._lock_key})).scalar()
                    await lock_conn.commit()
                    if not got:
                        await self._sleep(1.0)
                        continue
                    self.is_leader = True
                    try:
                        await self._publish_loop()
                    finally:
                        self.is_leader = False
                        await lock_conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"),
                                                {"k": self._lock_key})
                        await lock_conn.commit()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = str(exc)
                OUTBOX_PUBLISH_ERRORS.labels(self._service).inc()
                log.warning("outbox relay error, retrying", extra={"error": str(exc), "backoff_s": backoff})
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _publish_loop(self) -> None:
        last_gauge = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - last_gauge > 1.0:
                async with self._engine.connect() as conn:
                    count, age = await backlog(conn)
                OUTBOX_BACKLOG.labels(self._service).set(count)
                OUTBOX_OLDEST_AGE.labels(self._service).set(age)
                last_gauge = now
            published = await self.publish_once()
            if published < self._batch:
                await self._sleep(self._poll)

    async def publish_once(self) -> int:
        """Publish one batch in id order; delete rows only once every record is acknowledged."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT id, topic, key, value, headers, extract(epoch FROM created_at) FROM outbox "
                "ORDER BY id LIMIT :n"), {"n": self._batch})).all()
            await conn.rollback()
        if not rows:
            return 0
        futures: list[Any] = []
        for row in rows:
            headers = [(k, v.encode("latin-1")) for k, v in row[4]]
            futures.append(await self._producer.send(row[1], row[3], row[2], headers))
        await asyncio.gather(*futures)
        now = time.time()
        async with self._engine.begin() as conn:
            await conn.execute(text("DELETE FROM outbox WHERE id = ANY(:ids)"), {"ids": [r[0] for r in rows]})
        for row in rows:
            OUTBOX_PUBLISHED.labels(self._service, row[1]).inc()
            OUTBOX_PUBLISH_SECONDS.labels(self._service).observe(max(0.0, now - float(row[5])))
        self.last_error = None
        return len(rows)
