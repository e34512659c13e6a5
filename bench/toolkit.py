"""Toolkit throughput: outbox enqueue+relay and the consumer runner, against their raw ceilings."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from bench.common import Result
from shared.config import CommonSettings
from shared.contracts import events as ev
from shared.contracts.registry import encode_envelope, make_envelope
from shared.db import make_engine, migrate
from shared.kafka import ConsumerRunner, EventProducer
from shared.outbox import OutboxRelay, enqueue

MIGRATIONS = Path(__file__).resolve().parents[1] / "services" / "intake" / "migrations"


def envelopes(n: int, region: str = "US") -> list:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        p = ev.TicketOpened(ticket_id=f"T{i}", order_id=f"O{i}", buyer_id=f"B{i % 997}", seller_id="S1",
                            reason=ev.TicketReason.DAMAGED,
                            order_amount=ev.PositiveMoney(amount_minor=1000 + i, currency="USD"))
        out.append(make_envelope("ticket.opened", p, source="bench", region=region, occurred_at=now))
    return out


async def outbox_relay(settings: CommonSettings, count: int, repeats: int) -> Result:
    result = Result("outbox enqueue + relay publish", "events/s", ceiling="raw aiokafka produce",
                    note="batches of 500 in one transaction; relay waits for broker acks before delete")
    await migrate(settings.database_url, "bench_toolkit", MIGRATIONS)
    engine = make_engine(settings.database_url, "bench_toolkit")
    producer = EventProducer(settings, "bench")
    await producer.start()
    relay = OutboxRelay(engine, producer, "bench", batch_size=1000, poll_interval=0.005)
    try:
        for _ in range(repeats):
            batch = envelopes(count)
            started = time.perf_counter()
            for i in range(0, count, 500):
                async with engine.begin() as conn:
                    await enqueue(conn, batch[i:i + 500])
            while await relay.publish_once():
                pass
            result.runs.append(count / (time.perf_counter() - started))
    finally:
        await producer.stop()
        await engine.dispose()
    return result


async def consumer_runner(settings: CommonSettings, topic: str, count: int, repeats: int) -> Result:
    result = Result("consumer runner (dedup + offsets + 1-statement handler)", "events/s",
                    ceiling="raw aiokafka consume",
                    note="one DB transaction per batch: processed_events, handler insert, offsets")
    engine = make_engine(settings.database_url, "bench_toolkit")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS bench_sink (event_id text, ticket_id text)"))
    producer = EventProducer(settings, "bench-feed")
    await producer.start()
    try:
        for run in range(repeats):
            batch = envelopes(count)
            futures = [await producer.send(topic, encode_envelope(e), e.payload["buyer_id"].encode())
                       for e in batch]
            await asyncio.gather(*futures)

            async def handler(conn, events):  # type: ignore[no-untyped-def]
                await conn.execute(text(
                    "INSERT INTO bench_sink SELECT unnest(CAST(:e AS text[])), unnest(CAST(:t AS text[]))"),
                    {"e": [d.envelope.event_id for d in events], "t": [d.payload.ticket_id for d in events]})

            runner = ConsumerRunner(settings=settings, engine=engine, group_id=f"bench-runner-{run}-{time.time()}",
                                    topics=[topic], handler=handler, max_batch=1000)
            target = count * (run + 1)  # a new group reads the whole topic, earlier runs included
            await runner.start()
            while runner.stats.processed == 0:  # group join time is not throughput
                await asyncio.sleep(0.001)
            started, first = time.perf_counter(), runner.stats.processed
            while runner.stats.processed + runner.stats.duplicates < target:
                await asyncio.sleep(0.005)
            result.runs.append((target - first) / (time.perf_counter() - started))
            await runner.stop()
    finally:
        await producer.stop()
        await engine.dispose()
    return result
