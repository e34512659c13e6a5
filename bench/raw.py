"""Raw ceilings of this machine: aiokafka produce/consume and asyncpg COPY, no platform code."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import Result, compression, open_loop, percentile, timed_rate
from shared.config import CommonSettings

VALUE = b'{"event_id":"x","payload":{"ticket_id":"T1","buyer_id":"B1","amount_minor":1234}}' * 4


async def kafka_produce(bootstrap: str, topic: str, count: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2,
                                compression_type=compression(), max_batch_size=256 * 1024)
    await producer.start()
    try:
        async def work() -> None:
            futures = [await producer.send(topic, VALUE, key=f"B{i % 997}".encode()) for i in range(count)]
            await asyncio.gather(*futures)
        return await timed_rate(count, work)
    finally:
        await producer.stop()


async def kafka_consume(bootstrap: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000)
    await consumer.start()
    try:
        async def work() -> None:
            seen = 0
            while seen < count:
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                seen += sum(len(v) for v in batch.values())
        return await timed_rate(count, work)
    finally:
        await consumer.stop()


async def pg_copy(dsn: str, count: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TEMP TABLE raw_copy (id bigint, account text, amount bigint, "
                           "currency text, event_id text)")
        rows = [(i, f"seller:S{i % 500}", 1000 + i, "USD", str(uuid.uuid4())) for i in range(count)]

        async def work() -> None:
            await conn.copy_records_to_table("raw_copy", records=rows)
        return await timed_rate(count, work)
    finally:
        await conn.close()


async def pg_commit_latency(dsn: str, rate: float, seconds: float) -> list[float]:
    """Open-loop single-row INSERT + COMMIT at ``rate``/s on a pool of connections: latency in ms from the
    scheduled time (what one durable write costs on this machine, queueing included)."""
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=16)
    samples: list[float] = []
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS raw_latency (id text PRIMARY KEY, body jsonb, "
                               "at timestamptz DEFAULT now())")

        async def send(i: int, scheduled: float) -> None:
            async with pool.acquire() as conn:
                await conn.execute("INSERT INTO raw_latency (id, body) VALUES ($1, $2)", str(uuid.uuid4()),
                                   '{"ticket_id": "T1", "amount_minor": 1234}')
            samples.append((time.perf_counter() - scheduled) * 1000)

        await open_loop(rate, seconds, send, drain_timeout=30)
        async with pool.acquire() as conn:
            await conn.execute("DROP TABLE raw_latency")
    finally:
        await pool.close()
    return samples


async def kafka_roundtrip_latency(bootstrap: str, topic: str, rate: float, seconds: float) -> list[float]:
    """Open-loop produce (acks=all) at ``rate``/s to a consumer polling the same topic: ms from the
    scheduled send to the record in the consumer's hands. One hop of the pipeline, no platform code, with the
    platform's client defaults (fetch wait CONSUMER_FETCH_MAX_WAIT_MS, no linger: KAFKA_LINGER_MS)."""
    defaults = CommonSettings.model_fields
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"rawlat-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="latest", enable_auto_commit=False,
                                fetch_max_wait_ms=defaults["consumer_fetch_max_wait_ms"].default)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type=compression(),
                                linger_ms=defaults["kafka_linger_ms"].default)
    await consumer.start()
    await producer.start()
    scheduled_at: dict[bytes, float] = {}
    samples: list[float] = []
    try:
        while not consumer.assignment():  # wait for the group join
            await consumer.getmany(timeout_ms=100)
        await consumer.seek_to_end()
        done = asyncio.Event()
        total = int(rate * seconds)

        async def consume() -> None:
            while len(samples) < total:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for records in batch.values():
                    for r in records:
                        at = scheduled_at.pop(r.key, None) if r.key else None
                        if at is not None:
                            samples.append((now - at) * 1000)
            done.set()

        reader = asyncio.create_task(consume())

        async def send(i: int, scheduled: float) -> None:
            key = f"k{i}".encode()
            scheduled_at[key] = scheduled
            await producer.send(topic, VALUE, key=key)

        await open_loop(rate, seconds, send, drain_timeout=30)
        try:
            await asyncio.wait_for(done.wait(), 30)
        except TimeoutError:
            reader.cancel()
    finally:
        await producer.stop()
        await consumer.stop()
    return samples


async def ceilings(bootstrap: str, topic: str, dsn: str, count: int, repeats: int) -> list[Result]:
    produce = Result("raw aiokafka produce", "records/s")
    consume = Result("raw aiokafka consume", "records/s")
    copy = Result("raw asyncpg COPY", "rows/s")
    commit50 = Result("raw asyncpg INSERT+COMMIT p50 @500/s", "ms", lower_is_better=True)
    commit99 = Result("raw asyncpg INSERT+COMMIT p99 @500/s", "ms", lower_is_better=True)
    hop50 = Result("raw aiokafka produce->consume p50 @1000/s", "ms", lower_is_better=True)
    hop99 = Result("raw aiokafka produce->consume p99 @1000/s", "ms", lower_is_better=True)
    seconds = LATENCY_SECONDS
    for _ in range(repeats):
        produce.runs.append(await kafka_produce(bootstrap, topic, count))
        consume.runs.append(await kafka_consume(bootstrap, topic, count))
        copy.runs.append(await pg_copy(dsn, count))
        samples = await pg_commit_latency(dsn, 500, seconds)
        commit50.runs.append(percentile(samples, 50))
        commit99.runs.append(percentile(samples, 99))
        samples = await kafka_roundtrip_latency(bootstrap, topic, 1000, seconds)
        hop50.runs.append(percentile(samples, 50))
        hop99.runs.append(percentile(samples, 99))
    return [produce, consume, copy, commit50, commit99, hop50, hop99]


LATENCY_SECONDS = 5.0
