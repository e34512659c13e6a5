"""Outbox relay leadership against real PostgreSQL and the real broker: a leader whose lock connection is
killed stops publishing, another relay takes over, and nothing is lost or reordered per key (duplicates
only from the batch in flight at the moment of the loss, as at-least-once documents)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text

from shared.config import CommonSettings
from shared.db import make_engine, migrate
from shared.kafka import EventProducer
from shared.outbox import OutboxRelay, enqueue_records
from tests.integration.shared.toolkit_support import published

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "intake" / "migrations"
SCHEMA = "leadership"
EVENTS = 3000
BATCH = 20
KEYS = [f"K{i}" for i in range(8)]


@pytest.fixture(scope="module")
async def database(fresh_database):
    await migrate(fresh_database, SCHEMA, MIGRATIONS)
    return fresh_database




async def test_a_leader_that_loses_its_lock_connection_stops_and_the_next_one_keeps_order(
        database, kafka_bootstrap, make_topics):
    (topic,) = await make_topics("relay", partitions=4)
    settings = CommonSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret="test-only-secret-for-the-leadership-test")
    # Two relays as two replicas would be: their own engine (pool) and producer, one lock key.
    engine_a, engine_b = make_engine(database, SCHEMA), make_engine(database, SCHEMA)
    producer_a, producer_b = EventProducer(settings, "relay-a"), EventProducer(settings, "relay-b")
    await producer_a.start()
    await producer_b.start()
    name_a, name_b, lock_key = f"a-{topic}", f"b-{topic}", f"outbox:{topic}"
    async with engine_a.begin() as conn:
        await enqueue_records(conn, [
            (topic, KEYS[i % len(KEYS)].encode(), orjson.dumps({"key": KEYS[i % len(KEYS)], "seq": i}),
             [("seq", str(i).encode())]) for i in range(EVENTS)])
    a = OutboxRelay(engine_a, producer_a, name_a, batch_size=BATCH, poll_interval=0.01, lock_key=lock_key)
    b = OutboxRelay(engine_b, producer_b, name_b, batch_size=BATCH, poll_interval=0.01, lock_key=lock_key)
    reader = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None,
                              auto_offset_reset="earliest")
    await reader.start()
    try:
        await a.start()
        deadline = time.monotonic() + 20
        while not (a.is_leader and published(name_a, topic) >= 300):
            assert time.monotonic() < deadline, "relay A never got going"
            await asyncio.sleep(0.005)
        await b.start()  # B contends while A leads
        async with engine_b.begin() as conn:
            pids = (await conn.execute(text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"))).scalars().all()
            assert len(pids) == 1, pids
            await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})
        killed_at = published(name_a, topic)
        # A notices at its next statement on the lock connection, gives up, and B takes the lock.
        deadline = time.monotonic() + 15
        while a.is_leader or not b.is_leader:
            assert time.monotonic() < deadline, f"leadership did not move (A {a.is_leader}, B {b.is_leader})"
            await asyncio.sleep(0.01)
        async with engine_b.connect() as conn:
            deadline = time.monotonic() + 60
            while (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar():
                await conn.rollback()
                assert time.monotonic() < deadline, "B did not drain the outbox"
                await asyncio.sleep(0.05)
        assert not a.is_leader, "A must not lead again while B holds the lock"
        seen: list[tuple[str, int]] = []
        distinct: set[int] = set()
        deadline = time.monotonic() + 60
        while len(distinct) < EVENTS and time.monotonic() < deadline:
            for records in (await reader.getmany(timeout_ms=500)).values():
                for r in records:
                    body = orjson.loads(r.value)
                    seen.append((body["key"], body["seq"]))
                    distinct.add(body["seq"])
    finally:
        await a.stop()
        await b.stop()
        await reader.stop()
        await producer_a.stop()
        await producer_b.stop()
        await engine_a.dispose()
        await engine_b.dispose()
    assert distinct == set(range(EVENTS)), f"lost {EVENTS - len(distinct)} events"
    # Per key, the first delivery of each event comes in enqueue order (later copies are duplicates that
    # consumers drop by event id).
    first_seen: dict[str, list[int]] = defaultdict(list)
    delivered: set[int] = set()
    for key, seq in seen:
        if seq not in delivered:
            delivered.add(seq)
            first_seen[key].append(seq)
    for key, seqs in first_seen.items():
        assert seqs == sorted(seqs), f"key {key} delivered out of order"
    # A published at most the batch it had in flight after losing the lock, and only that can be doubled.
    assert published(name_a, topic) - killed_at <= BATCH
    assert len(seen) - EVENTS <= 2 * BATCH
    assert published(name_b, topic) >= EVENTS - published(name_a, topic)
