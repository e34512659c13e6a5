"""The thin vertical slice through the toolkit against the real broker and real PostgreSQL:
event -> topic -> consumer runner -> PostgreSQL, idempotently; poison -> dead letter; crash -> once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text

from shared.config import CommonSettings
from shared.contracts.registry import encode_envelope
from shared.contracts.topics import Topic
from shared.db import make_engine, migrate
from shared.kafka import ConsumerRunner, EventProducer, PermanentError
from shared.outbox import OutboxRelay
from tests.integration.shared.toolkit_support import log_handler, send, ticket_event

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "intake" / "migrations"




@pytest.fixture(scope="module")
async def slice_db(fresh_database):
    await migrate(fresh_database, "slice", MIGRATIONS)
    engine = make_engine(fresh_database, "slice")
    async with engine.begin() as conn:
        # No unique constraint on purpose: a double delivery would show as a second row.
        await conn.execute(text("CREATE TABLE IF NOT EXISTS ticket_log (event_id text NOT NULL, "
                                "ticket_id text NOT NULL, consumer text)"))
    yield fresh_database, engine
    await engine.dispose()


@pytest.fixture
def settings(slice_db, kafka_bootstrap) -> CommonSettings:
    return CommonSettings(database_url=slice_db[0], kafka_bootstrap_servers=kafka_bootstrap,
                          consumer_poll_timeout_ms=50, consumer_session_timeout_ms=6_000)


@pytest.fixture
async def producer(settings):
    p = EventProducer(settings, "slice-test")
    await p.start()
    yield p
    await p.stop()




async def rows(engine, event_ids: list[str]) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(
            "SELECT event_id FROM ticket_log WHERE event_id = ANY(:ids)"), {"ids": event_ids})).scalars())




async def test_same_event_delivered_twice_is_written_once(slice_db, settings, producer, make_topics):
    (topic,) = await make_topics("slice-dup")
    runner = ConsumerRunner(settings=settings, engine=slice_db[1], group_id=f"g-{topic}", topics=[topic],
                            handler=log_handler())
    await runner.start()
    try:
        event = ticket_event(1)
        await send(producer, topic, event)
        await send(producer, topic, event)
        await runner.run_until_idle(idle_seconds=1.0, timeout=30)
    finally:
        await runner.stop()
    assert await rows(slice_db[1], [event.event_id]) == [event.event_id]
    assert runner.stats.duplicates == 1


async def test_poison_message_is_dead_lettered_and_the_partition_keeps_flowing(
        slice_db, settings, producer, make_topics):
    (topic,) = await make_topics("slice-poison", partitions=1)
    group = f"g-{topic}"
    relay = OutboxRelay(slice_db[1], producer, f"slice-{topic}")

    async def picky(conn, events):
        for d in events:
            if d.payload.ticket_id == "T666":
                raise PermanentError("ticket T666 refers to an order this consumer cannot accept")
        await log_handler()(conn, events)

    runner = ConsumerRunner(settings=settings, engine=slice_db[1], group_id=group, topics=[topic],
                            handler=picky, on_commit=relay.wake)
    dlq = AIOKafkaConsumer(Topic.DEAD_LETTERS.value, bootstrap_servers=settings.kafka_bootstrap_servers,
                           auto_offset_reset="latest", group_id=None)
    await dlq.start()
    await dlq.seek_to_end()
    await relay.start()
    await runner.start()
    good_before, rejected, good_after = ticket_event(10), ticket_event(666), ticket_event(11)
    try:
        await send(producer, topic, good_before)
        await (await producer.send(topic, b'{"not": "an envelope"', b"B1"))  # not even JSON
        await send(producer, topic, rejected)
        await send(producer, topic, good_after)
        await runner.run_until_idle(idle_seconds=1.0, timeout=30)
        dead = []
        deadline = time.monotonic() + 20
        while len(dead) < 2 and time.monotonic() < deadline:
            batch = await dlq.getmany(timeout_ms=500)
            for recs in batch.values():
                for r in recs:
                    headers = dict(r.headers)
                    if headers.get("dlq.consumer_group") == group.encode():
                        dead.append((r.value, headers))
    finally:
        await runner.stop()
        await relay.stop()
        await dlq.stop()
    assert sorted(await rows(slice_db[1], [good_before.event_id, good_after.event_id])) == sorted(
        [good_before.event_id, good_after.event_id])
    assert await rows(slice_db[1], [rejected.event_id]) == []
    assert len(dead) == 2
    reasons = {h["dlq.error"].decode() for _, h in dead}
    assert any(r.startswith("contract violation: not JSON") for r in reasons)
    assert any("T666 refers to an order" in r for r in reasons)
    originals = {v for v, _ in dead}
    assert b'{"not": "an envelope"' in originals and encode_envelope(rejected) in originals
    for _, h in dead:
        assert h["dlq.source_topic"] == topic.encode()
        assert h["dlq.source_offset"].isdigit() if isinstance(h["dlq.source_offset"], str) else True
    async with slice_db[1].connect() as conn:
        stored = (await conn.execute(text(
            "SELECT count(*) FROM dead_letters WHERE consumer_group = :g"), {"g": group})).scalar()
    assert stored == 2


async def test_consumer_killed_before_its_commit_processes_the_event_once_after_restart(
        slice_db, settings, producer, make_topics, tmp_path):
    (topic,) = await make_topics("slice-kill", partitions=1)
    group = f"g-{topic}"
    marker = tmp_path / "handled"
    event = ticket_event(42)
    await send(producer, topic, event)
    script = Path(__file__).with_name("slice_consumer.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), settings.database_url, settings.kafka_bootstrap_servers, topic, group,
         str(marker)], env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "consumer process died early"
            assert time.monotonic() < deadline, "consumer never handled the event"
            await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # mid-transaction: its write is never committed
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert await rows(slice_db[1], [event.event_id]) == []
    # The killed member's session must time out before the group rebalances to the new one.
    runner = ConsumerRunner(settings=settings, engine=slice_db[1], group_id=group, topics=[topic],
                            handler=log_handler("restarted"))
    await runner.start()
    try:
        deadline = time.monotonic() + 90
        while not await rows(slice_db[1], [event.event_id]) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await runner.run_until_idle(idle_seconds=1.0, timeout=30)
    finally:
        await runner.stop()
    assert await rows(slice_db[1], [event.event_id]) == [event.event_id]
    # A third start of the group (simulating a crash after the DB commit but before the Kafka commit
    # would look the same) must not process it again: offsets of record are in the database.
    again = ConsumerRunner(settings=settings, engine=slice_db[1], group_id=group, topics=[topic],
                           handler=log_handler("third"))
    again._commit_kafka = _no_kafka_commit  # type: ignore[method-assign]
    await again.start()
    try:
        # The positive signal first: a later event on the same (single) partition handled by the third start
        # means it read past the first one, which it would have handled before, had it processed it again.
        later = ticket_event(43)
        await send(producer, topic, later)
        deadline = time.monotonic() + 60
        while not await rows(slice_db[1], [later.event_id]):
            assert time.monotonic() < deadline, "the third start never handled the later event"
            await asyncio.sleep(0.1)
    finally:
        await again.stop()
    assert await rows(slice_db[1], [event.event_id]) == [event.event_id]


async def _no_kafka_commit(records) -> None:
    return None


async def test_rebalance_between_two_consumers_loses_and_doubles_nothing(
        slice_db, settings, producer, make_topics):
    (topic,) = await make_topics("slice-rebalance", partitions=4)
    group = f"g-{topic}"
    events = [ticket_event(1000 + i, buyer=f"B{i % 37}") for i in range(1500)]
    first = ConsumerRunner(settings=settings, engine=slice_db[1], group_id=group, topics=[topic],
                           handler=log_handler("first"), max_batch=50)
    second = ConsumerRunner(settings=settings, engine=slice_db[1], group_id=group, topics=[topic],
                            handler=log_handler("second"), max_batch=50)
    await first.start()
    for e in events[:750]:
        await producer.send(topic, encode_envelope(e), e.payload["buyer_id"].encode())
    await second.start()  # joins mid-stream: rebalance while the first is busy
    for e in events[750:]:
        await producer.send(topic, encode_envelope(e), e.payload["buyer_id"].encode())
    await producer.producer.flush()
    deadline = time.monotonic() + 60
    while first.stats.processed == 0:  # the first has taken part before it leaves
        assert time.monotonic() < deadline, "the first consumer never processed an event"
        await asyncio.sleep(0.05)
    await first.stop()  # leaves mid-stream: another rebalance
    ids = [e.event_id for e in events]
    # Positive signal first: every event applied (a rebalance can keep the second quiet for seconds, so
    # "idle for a while" is no proof that it is done); then, idle, nothing may have been applied twice.
    deadline = time.monotonic() + 90
    while len(set(await rows(slice_db[1], ids))) < len(ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await second.run_until_idle(idle_seconds=1.0, timeout=90)
    await second.stop()
    got = await rows(slice_db[1], ids)
    assert len(got) == len(ids), f"lost {len(set(ids) - set(got))}"
    assert len(set(got)) == len(got), "an event was applied twice"


async def test_offsets_of_record_are_in_the_database(slice_db, settings, producer, make_topics):
    (topic,) = await make_topics("slice-offsets", partitions=2)
    group = f"g-{topic}"
    runner = ConsumerRunner(settings=settings, engine=slice_db[1], group_id=group, topics=[topic],
                            handler=log_handler())
    await runner.start()
    try:
        for i in range(20):
            await send(producer, topic, ticket_event(5000 + i, buyer=f"X{i}"))
        await runner.run_until_idle(idle_seconds=1.0, timeout=30)
    finally:
        await runner.stop()
    async with slice_db[1].connect() as conn:
        stored = (await conn.execute(text(
            "SELECT sum(next_offset) FROM consumer_offsets WHERE consumer_group = :g"), {"g": group})).scalar()
    assert stored == 20
    assert orjson.loads(b"1") == 1
