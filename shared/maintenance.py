"""Operational chores every service shares: trimming old processed-event records, and dead-letter repair.

``processed_events`` only has to outlive any redelivery Kafka can make (retention of the source topics);
business unique keys still stop replays older than that. Trimming runs in small chunks so it never
holds locks long.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.outbox import Record, decode_headers, enqueue_records
from shared.periodic import PeriodicTask

log = logging.getLogger(__name__)


async def trim_processed_events(engine: AsyncEngine, retention_days: int, chunk: int = 10_000) -> int:
    removed = 0
    while True:
        async with engine.begin() as conn:
            n = (await conn.execute(text(
                "DELETE FROM processed_events WHERE ctid = ANY(ARRAY(SELECT ctid FROM processed_events "
                "WHERE processed_at < now() - make_interval(days => :d) LIMIT :n))"),
                {"d": retention_days, "n": chunk})).rowcount
        removed += n or 0
        if not n or n < chunk:
            return removed


class Housekeeper(PeriodicTask):
    """Trims processed-event records past retention, hourly by default."""

    def __init__(self, engine: AsyncEngine, retention_days: int, interval: float = 3600.0) -> None:
        super().__init__("housekeeper", interval, self.trim)
        self.engine, self.retention_days = engine, retention_days

    async def trim(self) -> None:
        removed = await trim_processed_events(self.engine, self.retention_days)
        if removed:
            log.info("trimmed processed-event records", extra={"removed": removed})


async def list_dead_letters(engine: AsyncEngine, limit: int = 50) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            'SELECT id, consumer_group, topic, partition, "offset", error, created_at FROM dead_letters '
            "ORDER BY id DESC LIMIT :n"), {"n": limit})).mappings().all()
    return [dict(r) for r in rows]


async def replay_dead_letter(engine: AsyncEngine, dead_letter_id: int) -> str:
    """Re-publish a dead letter's original bytes and headers to its source topic, through the outbox.

    Dead-lettered events were never recorded as processed, so after the cause is fixed (a deploy, a
    missing reference now present) the replay is applied once; replaying twice is still harmless.
    """
    async with engine.begin() as conn:
        row = (await conn.execute(text(
            "SELECT topic, key, value, headers FROM dead_letters WHERE id = :i"), {"i": dead_letter_id})
        ).one_or_none()
        if row is None:
            raise KeyError(f"no dead letter with id {dead_letter_id}")
        headers = [(k, v) for k, v in decode_headers(row[3]) if not k.startswith("dlq.")]
        # Null header values are legal Kafka and survive the outbox; its Headers alias omits them.
        await enqueue_records(conn, [cast(Record, (row[0], row[1], row[2], headers))])
    return str(row[0])
