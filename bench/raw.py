"""Raw ceilings of this machine: aiokafka produce/consume and asyncpg COPY, no platform code."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.common import Result, timed_rate

VALUE = b'{"event_id":"x","payload":{"ticket_id":"T1","buyer_id":"B1","amount_minor":1234}}' * 4


async def kafka_produce(bootstrap: str, topic: str, count: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2,
                                compression_type="gzip", max_batch_size=256 * 1024)
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


async def ceilings(bootstrap: str, topic: str, dsn: str, count: int, repeats: int) -> list[Result]:
    produce = Result("raw aiokafka produce", "records/s")
    consume = Result("raw aiokafka consume", "records/s")
    copy = Result("raw asyncpg COPY", "rows/s")
    for _ in range(repeats):
        produce.runs.append(await kafka_produce(bootstrap, topic, count))
        consume.runs.append(await kafka_consume(bootstrap, topic, count))
        copy.runs.append(await pg_copy(dsn, count))
    return [produce, consume, copy]
