"""Latency paths of the toolkit against real PostgreSQL and the real broker: a commit in a replica whose relay
does not lead reaches the leader by NOTIFY (not by its poll); the leader still publishes by polling when no
notification comes; the consumer's advisory Kafka commits are batched in time and flushed on stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text

from shared.config import CommonSettings
from shared.contracts import events as ev
from shared.contracts.registry import encode_envelope, make_envelope
from shared.db import make_engine, migrate
from shared.kafka import ConsumerRunner, Delivered, EventProducer
from shared.outbox import OutboxRelay, enqueue_records
from tests.integration.shared.toolkit_support import published

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "intake" / "migrations"
SCHEMA = "latency"
SECRET = "test-only-secret-for-the-latency-path-tests"


@pytest.fixture(scope="module")
async def database(fresh_database):
    await migrate(fresh_database, SCHEMA, MIGRATIONS)
    return fresh_database




async def wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def enqueue_one(engine, topic: str, n: int) -> None:
    async with engine.begin() as conn:
        await enqueue_records(conn, [(topic, b"K", orjson.dumps({"n": n}), [("n", str(n).encode())])])


@pytest.fixture
async def two_replicas(database, kafka_bootstrap, make_topics):
    """Relays A and B as two replicas of one service would run them: own engine and producer, one lock key.
    A leads with a poll far longer than any test wait, so only a wake can explain a prompt publish."""
    (topic,) = await make_topics("wake", partitions=2)
    settings = CommonSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret=SECRET)
    engine_a, engine_b = make_engine(database, SCHEMA), make_engine(database, SCHEMA)
    producer_a, producer_b = EventProducer(settings, "wake-a"), EventProducer(settings, "wake-b")
    await producer_a.start()
    await producer_b.start()
    lock_key = f"outbox:{topic}"
    a = OutboxRelay(engine_a, producer_a, f"a-{topic}", poll_interval=60.0, lock_key=lock_key)
    b = OutboxRelay(engine_b, producer_b, f"b-{topic}", poll_interval=60.0, lock_key=lock_key)
    await a.start()
    await wait_until(lambda: a.is_leader, 20, "relay A leading")
    await b.start()
    await asyncio.sleep(0.3)  # A has read the empty outbox and sleeps on its 60 s poll; B tried the lock
    assert a.is_leader and not b.is_leader
    try:
        yield topic, a, b, engine_a, engine_b
    finally:
        await b.stop()
        await a.stop()
        await producer_a.stop()
        await producer_b.stop()
        await engine_a.dispose()
        await engine_b.dispose()


async def test_a_commit_in_a_follower_replica_wakes_the_leader_by_notify(two_replicas):
    topic, a, b, _, engine_b = two_replicas
    # A row committed with no wake at all waits for the leader's poll (60 s) ...
    await enqueue_one(engine_b, topic, 1)
    await asyncio.sleep(0.5)
    assert published(a._service, topic) == 0
    # ... while the follower's wake (what its consumers and API call after a commit) reaches the leader as
    # a NOTIFY, and the leader publishes at once: both rows, in order.
    await enqueue_one(engine_b, topic, 2)
    b.wake()
    took = await wait_until(lambda: published(a._service, topic) >= 2, 5, "publish after NOTIFY")
    assert took < 1.0, f"leader published {took:.3f} s after the follower's wake"
    assert published(b._service, topic) == 0


async def test_notifications_on_the_relay_channel_from_any_session_wake_the_leader(two_replicas):
    topic, a, _, engine_a, _ = two_replicas
    await enqueue_one(engine_a, topic, 1)
    async with engine_a.connect() as conn:  # e.g. a tool or an older replica that commits and notifies
        await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": a.channel})
        await conn.commit()
    took = await wait_until(lambda: published(a._service, topic) >= 1, 5, "publish after pg_notify")
    assert took < 1.0


async def test_the_leader_still_publishes_by_polling_when_no_notification_comes(
        database, kafka_bootstrap, make_topics):
    (topic,) = await make_topics("poll", partitions=1)
    settings = CommonSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret=SECRET)
    engine = make_engine(database, SCHEMA)
    producer = EventProducer(settings, "poll")
    await producer.start()
    relay = OutboxRelay(engine, producer, f"p-{topic}", poll_interval=0.3, lock_key=f"outbox:{topic}")
    await relay.start()
    try:
        await wait_until(lambda: relay.is_leader, 20, "relay leading")
        await asyncio.sleep(0.1)
        # Rows from a writer that neither wakes nor notifies (a lost notification looks the same).
        for n in range(3):
            await enqueue_one(engine, topic, n)
        await wait_until(lambda: published(relay._service, topic) >= 3, 5, "publish by polling")
        async with engine.connect() as conn:  # acknowledged rows are deleted by the leader's next statement
            deadline = time.monotonic() + 5
            while (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar() and \
                    time.monotonic() < deadline:
                await conn.rollback()
                await asyncio.sleep(0.05)
            assert (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar() == 0
    finally:
        await relay.stop()
        await producer.stop()
        await engine.dispose()


async def test_advisory_kafka_commits_are_batched_in_time_and_flushed_on_stop(
        database, kafka_bootstrap, make_topics):
    (topic,) = await make_topics("commits", partitions=1)
    group = f"commits-{topic}"
    settings = CommonSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret=SECRET, consumer_session_timeout_ms=6_000,
                              consumer_kafka_commit_interval_ms=600_000)
    engine = make_engine(database, SCHEMA)
    producer = EventProducer(settings, "commits")
    await producer.start()
    seen: list[str] = []

    async def handler(conn, events: Sequence[Delivered]) -> None:
        seen.extend(d.envelope.event_id for d in events)

    runner = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic], handler=handler)
    await runner.start()
    assert runner._consumer is not None
    commits = 0
    commit = runner._consumer.commit

    async def counting_commit(offsets=None):  # the real commit, counted
        nonlocal commits
        commits += 1
        await commit(offsets)

    runner._consumer.commit = counting_commit  # type: ignore[method-assign]
    try:
        for n in range(5):  # five separate batches
            payload = ev.TicketOpened(ticket_id=f"T{n}", order_id=f"O{n}", buyer_id="B1", seller_id="S1",
                                      reason=ev.TicketReason.DAMAGED,
                                      order_amount=ev.PositiveMoney(amount_minor=1000, currency="SGD"))
            env = make_envelope("ticket.opened", payload, source="test", region="SG",
                                occurred_at=datetime(2026, 11, 22, tzinfo=UTC))
            await producer.producer.send_and_wait(topic, encode_envelope(env), key=b"B1")
            await wait_until(lambda n=n: len(seen) > n, 30, f"record {n} handled")
        assert runner.stats.batches >= 5
        assert commits <= 1, "one broker commit per batch on the consume loop's path"
    finally:
        await runner.stop()
        await producer.stop()
    async with engine.connect() as conn:
        stored = (await conn.execute(text(
            "SELECT next_offset FROM consumer_offsets WHERE consumer_group = :g AND topic = :t"),
            {"g": group, "t": topic})).scalar()
    await engine.dispose()
    assert stored == 5
    # stop() flushed what was pending: lag tooling sees the offsets of record. (A manually assigned reader
    # of the group fetches its committed offset without joining the group.)
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign([TopicPartition(topic, 0)])
        assert await reader.committed(TopicPartition(topic, 0)) == 5
    finally:
        await reader.stop()


async def test_the_leader_publishes_header_bytes_as_stored(database, kafka_bootstrap, make_topics):
    """The leader reads headers as text and decodes them itself: NUL bytes, latin-1 and null values survive."""
    (topic,) = await make_topics("headers", partitions=1)
    settings = CommonSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret=SECRET)
    engine = make_engine(database, SCHEMA)
    producer = EventProducer(settings, "headers")
    await producer.start()
    relay = OutboxRelay(engine, producer, f"h-{topic}", poll_interval=0.05, lock_key=f"outbox:{topic}")
    headers = [("nul", b"a\x00b"), ("latin", b"caf\xe9"), ("none", None), ("k\x00ey", b"v")]
    reader = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None,
                              auto_offset_reset="earliest")
    await reader.start()
    try:
        await relay.start()
        await wait_until(lambda: relay.is_leader, 20, "relay leading")
        async with engine.begin() as conn:
            await enqueue_records(conn, [(topic, b"K", b"{}", headers)])  # type: ignore[list-item]
        got = []
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            for records in (await reader.getmany(timeout_ms=200)).values():
                got.extend(records)
        assert got, "nothing published"
        assert list(got[0].headers) == headers
    finally:
        await reader.stop()
        await relay.stop()
        await producer.stop()
        await engine.dispose()
