"""Issue 13, parts 2 and 3, against the real broker and a real PostgreSQL:

- a partition assigned while the database is unreachable is neither consumed from Kafka's advisory offset
  nor forgotten: it is paused, the runner reports not ready, and once the database answers it is placed at
  its stored offset and every record after it is processed;
- lag cannot read 0 while records are unread: end offsets count every record of a multi-record last batch
  (the embedded broker's ListOffsets answers that batch's base offset + 1), and the runner's gauge counts
  the records behind the batch in hand.

The database is made unavailable inside PostgreSQL (``ALLOW_CONNECTIONS false`` and its sessions ended),
never by mocking it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.config import CommonSettings
from shared.contracts.registry import encode_envelope
from shared.db import make_engine, migrate
from shared.kafka import ConsumerRunner
from shared.kafka.lag import end_offsets, group_lag
from tests.integration.shared.toolkit_support import log_handler, ticket_event

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
MIGRATIONS = ROOT / "services" / "intake" / "migrations"
SCHEMA = "positions"
SECRET = "test-only-secret-for-the-consumer-position-tests"


async def eventually(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def scalar(engine, sql: str, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def produce_one_batch(bootstrap: str, topic: str, tickets: range) -> None:
    """Several records in one produce request (one record batch), as a busy producer sends them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    await producer.start()
    try:
        futures = [await producer.send(topic, encode_envelope(ticket_event(n)), key=b"B1", partition=0)
                   for n in tickets]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@pytest.fixture
async def database(make_database):
    url = await make_database("positions")
    await migrate(url, SCHEMA, MIGRATIONS)
    engine = make_engine(url, SCHEMA)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE ticket_log (event_id text NOT NULL, ticket_id text NOT NULL, "
                                "consumer text)"))
    yield url, engine
    await engine.dispose()


async def set_connections(admin_url: str, url: str, allowed: bool) -> None:
    """Open or close ``url``'s database to new sessions; closing also ends the sessions it has."""
    name = make_url(url).database
    engine = make_engine(admin_url, "public")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("COMMIT"))
            await conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'))
            if not allowed:
                await conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": name})
    finally:
        await engine.dispose()


async def test_a_seek_that_fails_on_assignment_pauses_the_partition_until_the_stored_offset_is_read(
        database, database_url, kafka_bootstrap, make_topics):
    """Stored offset 2, Kafka's advisory offset 5 (say the database was restored from a backup): a runner
    assigned the partition while the database is down must not start at 5 (records 2-4 would be lost)."""
    url, engine = database
    (topic,) = await make_topics("seekfail", partitions=1)
    group = f"g-{topic}"
    tp = TopicPartition(topic, 0)
    await produce_one_batch(kafka_bootstrap, topic, range(7000, 7007))
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
                                "VALUES (:g, :t, 0, 2)"), {"g": group, "t": topic})
    advisory = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await advisory.start()
    try:
        advisory.assign([tp])
        await advisory.commit({tp: 5})
    finally:
        await advisory.stop()

    settings = CommonSettings(database_url=url, kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret=SECRET, consumer_poll_timeout_ms=50,
                              consumer_session_timeout_ms=6_000)
    runner_engine = make_engine(url, SCHEMA)
    runner = ConsumerRunner(settings=settings, engine=runner_engine, group_id=group, topics=[topic],
                            handler=log_handler("seek"))
    await set_connections(database_url, url, allowed=False)
    try:
        await runner.start()  # joins the group: the assignment's seek finds the database closed

        async def held() -> bool:
            return "not consuming" in (runner.readiness_problem() or "")

        await eventually(held, 60, "the runner to report the partition it cannot place")
        assert f"{topic}[0]" in (runner.readiness_problem() or "")
        await set_connections(database_url, url, allowed=True)

        async def all_after_the_stored_offset() -> bool:
            return await scalar(engine, "SELECT count(*) FROM ticket_log") == 5

        await eventually(all_after_the_stored_offset, 60, "records 2-6 to be processed")
        await eventually(lambda: asyncio.sleep(0, runner.ready), 30, "the runner to be ready again")
        tickets = sorted(await _tickets(engine))
        assert tickets == [f"T{n}" for n in range(7002, 7007)]  # from the stored offset: none lost, none redone
        assert await scalar(engine, "SELECT next_offset FROM consumer_offsets WHERE consumer_group = :g",
                            g=group) == 7
    finally:
        await set_connections(database_url, url, allowed=True)
        await runner.stop()
        await runner_engine.dispose()


async def _tickets(engine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT ticket_id FROM ticket_log"))).scalars())


async def test_end_offsets_count_every_record_of_a_multi_record_last_batch(kafka_bootstrap, make_topics):
    (topic,) = await make_topics("ends", partitions=2)
    await produce_one_batch(kafka_bootstrap, topic, range(8000, 8005))
    empty, full = TopicPartition(topic, 1), TopicPartition(topic, 0)
    ends = await end_offsets(kafka_bootstrap, [full, empty])
    assert ends == {full: 5, empty: 0}
    # A group that stored offset 4 has one record left: the lag says 1, not 0.
    assert group_lag(ends, {(topic, 0): 4}) == {full: 1, empty: 0}
    assert group_lag(ends, {}) == {full: 5, empty: 0}


def lag_gauge(group: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value("comp_consumer_lag", {"group": group, "topic": topic, "partition": "0"})


async def test_the_lag_gauge_counts_the_records_behind_the_batch_in_hand_and_reads_0_only_when_drained(
        database, kafka_bootstrap, make_topics):
    url, engine = database
    (topic,) = await make_topics("laggauge", partitions=1)
    group = f"g-{topic}"
    await produce_one_batch(kafka_bootstrap, topic, range(9000, 9005))
    release = asyncio.Event()
    write = log_handler("lag")

    async def handler(conn, events):
        if any(d.payload.ticket_id == "T9003" for d in events):
            await release.wait()  # records 3 and 4 stay unprocessed meanwhile
        await write(conn, events)

    settings = CommonSettings(database_url=url, kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret=SECRET, consumer_poll_timeout_ms=50,
                              consumer_session_timeout_ms=6_000)
    runner = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic], handler=handler,
                            max_batch=1)
    await runner.start()
    try:
        async def three_behind() -> bool:
            return lag_gauge(group, topic) == 2.0 and await scalar(engine, "SELECT count(*) FROM ticket_log") == 3

        # Three processed (0-2); record 3 in hand and record 4 fetched or not: two records not processed.
        await eventually(three_behind, 60, "the gauge to count the two records not processed")
        release.set()

        async def drained() -> bool:
            return await scalar(engine, "SELECT count(*) FROM ticket_log") == 5 and lag_gauge(group, topic) == 0.0

        await eventually(drained, 60, "the gauge to read 0 once every record is processed")
    finally:
        release.set()
        await runner.stop()
    assert lag_gauge(group, topic) is None  # a member that left reports no lag for the partition


async def test_a_record_fetched_across_a_rebalance_that_gives_the_partition_back_is_processed(
        database, kafka_bootstrap, make_topics):
    """Found by ``make chaos``: a fetch in flight while an eager rebalance revoked and gave back the same
    partition was dropped as "revoked ahead" when it returned, though it came after the new seek; aiokafka's
    position had moved past it, so the record waited for the next rebalance or restart. Dropped records of a
    partition still ours must be read again from the offset of record."""
    url, engine = database
    (topic, other) = await make_topics("giveback", "giveback-other", partitions=1)
    group = f"g-{topic}"
    # A long poll: the idle fetch is in flight for the whole rebalance, as on a quiet partition.
    settings = CommonSettings(database_url=url, kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret=SECRET, consumer_poll_timeout_ms=10_000,
                              consumer_session_timeout_ms=6_000)
    first = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                           handler=log_handler("first"))
    # Same group, another topic: joining forces an eager rebalance that hands ``topic`` back to ``first``.
    second = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[other],
                            handler=log_handler("second"))
    await first.start()
    try:
        await produce_one_batch(kafka_bootstrap, topic, range(9100, 9101))

        async def first_record() -> bool:
            return await scalar(engine, "SELECT count(*) FROM ticket_log WHERE consumer = 'first'") == 1

        await eventually(first_record, 60, "the first record")
        rebalances = first.stats.extra.get("assignments", 0)
        await second.start()

        async def given_back() -> bool:
            return first.stats.extra.get("assignments", 0) > rebalances and second._consumer is not None \
                and bool(second._consumer.assignment())

        await eventually(given_back, 60, "the rebalance to give the partition back")
        await produce_one_batch(kafka_bootstrap, topic, range(9101, 9103))

        async def all_three() -> bool:
            return await scalar(engine, "SELECT count(*) FROM ticket_log WHERE consumer = 'first'") == 3

        await eventually(all_three, 60, "the records produced after the rebalance")
        assert first.stats.duplicates == 0  # read again from the offset of record, not from before it
    finally:
        await second.stop()
        await first.stop()
