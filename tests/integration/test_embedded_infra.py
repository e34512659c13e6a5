"""The infrastructure the suite chose (environment, testcontainers or embedded) answers: SQL on a fresh
database, and a keyed produce/consume roundtrip with headers on a topic of this test's own."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.contracts.topics import ALL_TOPICS
from tests.infra import plain_dsn

pytestmark = pytest.mark.integration


async def test_postgres_answers_select_1_in_a_fresh_database(fresh_database):
    conn = await asyncpg.connect(plain_dsn(fresh_database))
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == urlsplit(fresh_database).path.lstrip("/")
        assert await conn.fetchval("select count(*) from pg_tables where schemaname = 'public'") == 0
    finally:
        await conn.close()


async def test_kafka_roundtrip_on_a_fresh_topic(kafka_bootstrap, make_topics):
    (topic,) = await make_topics("roundtrip", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 3}".encode(),
                                         headers=[("h", b"1")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got: list[Any] = []
    try:
        while len(got) < 10:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"no records within 10 s; got {len(got)}"
            for records in batch.values():
                got.extend(records)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(10))
    assert all(dict(r.headers) == {"h": b"1"} for r in got)
    by_key: dict[bytes | None, set[int]] = {}
    for r in got:  # one key, one partition
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in by_key.values())


async def test_platform_topics_exist(kafka_bootstrap):
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    try:
        topics = await consumer.topics()
    finally:
        await consumer.stop()
    assert set(ALL_TOPICS) <= topics
