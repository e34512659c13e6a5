"""The runner overlaps work (CONSUMER_PREFETCH, ADR 0014): the next batch is fetched and decoded while the
current one is written, at most one ahead; a rebalance drops what was fetched ahead for revoked partitions;
offsets and deduplication are unchanged. Against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from sqlalchemy import text

from shared.config import CommonSettings
from shared.db import make_engine, migrate
from shared.kafka import ConsumerRunner, EventProducer
from tests.integration.shared.toolkit_support import send, ticket_event

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "intake" / "migrations"


@pytest.fixture(scope="module")
async def db(fresh_database):
    await migrate(fresh_database, "prefetch", MIGRATIONS)
    engine = make_engine(fresh_database, "prefetch")
    async with engine.begin() as conn:
        # No unique constraint: a record applied twice shows as a second row.
        await conn.execute(text("CREATE TABLE IF NOT EXISTS applied (event_id text NOT NULL, consumer text NOT NULL, "
                                "topic text NOT NULL, partition int NOT NULL)"))
    yield fresh_database, engine
    await engine.dispose()


@pytest.fixture
def settings(db, kafka_bootstrap) -> CommonSettings:
    return CommonSettings(database_url=db[0], kafka_bootstrap_servers=kafka_bootstrap, consumer_poll_timeout_ms=50,
                          consumer_session_timeout_ms=6_000, consumer_max_batch=20)


@pytest.fixture
async def producer(settings):
    p = EventProducer(settings, "prefetch-test")
    await p.start()
    yield p
    await p.stop()


class Recorder:
    """A handler that records what it applied and checks every record is of a partition its runner owns."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runner: ConsumerRunner | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_hand = asyncio.Event()
        self.foreign: list[tuple[str, int]] = []

    async def __call__(self, conn, events) -> None:
        self.in_hand.set()
        await self.gate.wait()
        assert self.runner is not None and self.runner._consumer is not None
        owned = self.runner._consumer.assignment()
        self.foreign += [(d.topic, d.partition) for d in events if TopicPartition(d.topic, d.partition) not in owned]
        await conn.execute(text(
            "INSERT INTO applied (event_id, consumer, topic, partition) SELECT unnest(CAST(:e AS text[])), :c, "
            "unnest(CAST(:t AS text[])), unnest(CAST(:p AS int[]))"),
            {"e": [d.envelope.event_id for d in events], "c": self.name, "t": [d.topic for d in events],
             "p": [d.partition for d in events]})


def runner(settings, engine, topic: str, handler: Recorder) -> ConsumerRunner:
    r = ConsumerRunner(settings=settings, engine=engine, group_id=f"g-{topic}", topics=[topic], handler=handler)
    handler.runner = r
    return r


async def until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def applied(engine, topic: str) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT event_id FROM applied WHERE topic = :t"), {"t": topic})).scalars())


async def test_the_next_batch_is_fetched_and_decoded_while_one_is_written(db, settings, producer, make_topics):
    (topic,) = await make_topics("prefetch-ahead", partitions=1)
    events = [ticket_event(i, buyer="B-ahead") for i in range(60)]
    for e in events:
        await send(producer, topic, e)
    handler = Recorder("one")
    handler.gate.clear()  # the first batch is held in hand
    r = runner(settings, db[1], topic, handler)
    await r.start()
    try:
        await asyncio.wait_for(handler.in_hand.wait(), 30)

        async def fetched_ahead() -> bool:
            # the batch in hand, and the next one already decoded behind it: never more
            return len(r._ahead) == 2 and bool(r._ahead[1].recs) and all(x.delivered for x in r._ahead[1].recs)
        await until(fetched_ahead, 30, "the next batch to be fetched and decoded")
        assert len(r._ahead) == 2
        handler.gate.set()
        await until(lambda: _count(db[1], topic, 60), 30, "every record to be applied")
        await r.run_until_idle(idle_seconds=0.5, timeout=30)
    finally:
        await r.stop()
    assert sorted(await applied(db[1], topic)) == sorted(e.event_id for e in events)  # in once, none twice


async def test_a_rebalance_drops_what_was_fetched_ahead_for_revoked_partitions(db, settings, producer, make_topics):
    (topic,) = await make_topics("prefetch-rebalance", partitions=2)
    events = [ticket_event(100 + i, buyer=f"B-r{i}") for i in range(120)]
    for e in events:
        await send(producer, topic, e)
    first, second = Recorder("first"), Recorder("second")
    first.gate.clear()
    a, b = runner(settings, db[1], topic, first), runner(settings, db[1], topic, second)
    await a.start()
    try:
        await asyncio.wait_for(first.in_hand.wait(), 30)
        await until(lambda: _ahead_has_records(a), 30, "a batch fetched ahead")
        joining = asyncio.create_task(b.start())  # its join makes the first member revoke its partitions

        async def revoking() -> bool:  # the revocation waits for the batch in hand (the runner's lock)
            return bool(getattr(a._processing, "_waiters", None))
        await until(revoking, 60, "the first member's revocation to wait for its batch in hand")
        first.gate.set()
        await joining
        await until(lambda: _count(db[1], topic, len(events)), 60, "every record to be applied")
        await a.run_until_idle(idle_seconds=0.5, timeout=30)
        await b.run_until_idle(idle_seconds=0.5, timeout=30)
    finally:
        await a.stop()
        await b.stop()
    assert first.foreign == [] and second.foreign == []  # nobody applied a partition it did not own
    assert a.stats.extra.get("revoked_ahead", 0) > 0  # what it had fetched ahead of them was dropped
    assert sorted(await applied(db[1], topic)) == sorted(e.event_id for e in events)


async def _ahead_has_records(r: ConsumerRunner) -> bool:
    return len(r._ahead) == 2 and bool(r._ahead[1].recs)


async def _count(engine, topic: str, n: int) -> bool:
    return len(await applied(engine, topic)) >= n
