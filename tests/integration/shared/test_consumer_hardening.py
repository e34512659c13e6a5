"""Failure paths of the consumer runner against the real broker and real PostgreSQL: deadlocks are retried,
a crashed loop restarts from the stored offsets and reports not ready meanwhile, dead letters and their
offsets commit together, headers with NUL bytes survive, stop() always leaves the group, and SIGTERM
finishes the batch in hand.

Faults are injected inside PostgreSQL (a trigger that fails once, a real deadlock, a terminated backend),
never by mocking the database or the broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY
from sqlalchemy import text

from shared.config import CommonSettings, ServiceSettings
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from shared.contracts.topics import Topic
from shared.db import make_engine, migrate
from shared.kafka import ConsumerRunner, EventProducer, PermanentError
from shared.maintenance import replay_dead_letter
from shared.outbox import OutboxRelay, decode_headers
from shared.service import ServiceContext
from tests.integration.shared.toolkit_support import log_handler, send, ticket_event

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
MIGRATIONS = ROOT / "services" / "intake" / "migrations"
SCHEMA = "hardening"
SECRET = "test-only-secret-for-the-consumer-hardening-tests"




@pytest.fixture(scope="module")
async def db(fresh_database):
    await migrate(fresh_database, SCHEMA, MIGRATIONS)
    engine = make_engine(fresh_database, SCHEMA)
    async with engine.begin() as conn:
        # No unique constraint on purpose: a double application shows as a second row.
        await conn.execute(text("CREATE TABLE IF NOT EXISTS ticket_log (event_id text NOT NULL, "
                                "ticket_id text NOT NULL, consumer text)"))
        await conn.execute(text("CREATE TABLE IF NOT EXISTS contended (id int PRIMARY KEY, n int NOT NULL)"))
    yield fresh_database, engine
    await engine.dispose()


@pytest.fixture
def settings(db, kafka_bootstrap) -> CommonSettings:
    return CommonSettings(database_url=db[0], kafka_bootstrap_servers=kafka_bootstrap,
                          auth_token_secret=SECRET, consumer_poll_timeout_ms=50,
                          consumer_session_timeout_ms=6_000)


@pytest.fixture
async def producer(settings):
    p = EventProducer(settings, "hardening-test")
    await p.start()
    yield p
    await p.stop()




async def scalar(engine, sql: str, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def logged(engine, event_ids: list[str]) -> list[str]:
    async with engine.connect() as conn:
        return sorted((await conn.execute(text(
            "SELECT event_id FROM ticket_log WHERE event_id = ANY(:ids)"), {"ids": event_ids})).scalars())




async def eventually(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def fail_once_trigger(engine, table: str, group: str) -> None:
    """Make the next write of ``group`` to ``table`` fail once, inside PostgreSQL. The counter is a
    sequence because nextval survives the rollback of the failing transaction."""
    name = "f_" + "".join(c if c.isalnum() else "_" for c in group)[-40:]
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE SEQUENCE {name}_seq"))
        await conn.execute(text(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.consumer_group = '{group}' AND nextval('{name}_seq') = 1 THEN "
            f"RAISE EXCEPTION 'injected failure writing {table}'; END IF; RETURN NEW; END $$"))
        await conn.execute(text(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------------------------------------- 1


async def test_a_real_deadlock_in_the_handler_is_retried_and_applied_not_dead_lettered(
        db, settings, producer, make_topics):
    (topic,) = await make_topics("deadlock", partitions=1)
    group = f"g-{topic}"
    engine = db[1]
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO contended VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING"))
    calls, others = 0, []

    async def other_side(locked: asyncio.Event) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("SET LOCAL deadlock_timeout = '10s'"))  # the handler is the victim
            await conn.execute(text("UPDATE contended SET n = n + 1 WHERE id = 2"))
            locked.set()
            await conn.execute(text("UPDATE contended SET n = n + 1 WHERE id = 1"))

    async def deadlocking(conn, events):
        nonlocal calls
        calls += 1
        if calls <= 3:  # the batch, and (before the fix) both single-record attempts
            await conn.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
            await conn.execute(text("UPDATE contended SET n = n + 1 WHERE id = 1"))
            locked = asyncio.Event()
            others.append(asyncio.create_task(other_side(locked)))
            await locked.wait()
            await eventually(lambda: _waiting_for_lock(engine), 10, "the other transaction to wait")
            await conn.execute(text("UPDATE contended SET n = n + 1 WHERE id = 2"))  # 40P01 here
            raise AssertionError("expected a deadlock")
        await log_handler()(conn, events)

    runner = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                            handler=deadlocking, max_attempts=2)
    retries_before = metric("comp_consumer_transient_retries_total", group=group)
    event = ticket_event(1)
    await runner.start()
    try:
        await send(producer, topic, event)
        await eventually(lambda: _has(engine, event.event_id), 30, "the event to be applied")
        await runner.run_until_idle(idle_seconds=0.5, timeout=30)
    finally:
        await runner.stop()
        await asyncio.gather(*others)
    assert await logged(engine, [event.event_id]) == [event.event_id]
    assert await scalar(engine, "SELECT count(*) FROM dead_letters WHERE consumer_group = :g", g=group) == 0
    assert calls == 4
    assert metric("comp_consumer_transient_retries_total", group=group) - retries_before == 3


async def _waiting_for_lock(engine) -> bool:
    return bool(await scalar(engine, "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"))


async def _has(engine, event_id: str) -> bool:
    return bool(await logged(engine, [event_id]))


# ---------------------------------------------------------------------------------------------- 2


async def test_a_crashed_loop_is_reported_not_ready_and_restarts_from_the_stored_offsets(
        db, settings, producer, kafka_bootstrap, make_topics):
    (topic,) = await make_topics("crash", partitions=1)
    group = f"g-{topic}"
    service = ServiceSettings(database_url=db[0], kafka_bootstrap_servers=kafka_bootstrap,
                              auth_token_secret=SECRET, consumer_poll_timeout_ms=50,
                              consumer_session_timeout_ms=6_000)
    ctx = ServiceContext.create(f"svc-{topic}", SCHEMA, service)
    await fail_once_trigger(db[1], "dead_letters", group)

    async def picky(conn, events):
        if any(d.payload.ticket_id == "T666" for d in events):
            raise PermanentError("T666 can never apply")
        await log_handler()(conn, events)

    runner = ctx.add_consumer(group, [topic], picky, restart_backoff=0.3)
    good = [ticket_event(100 + i) for i in range(5)] + [ticket_event(200 + i) for i in range(5)]
    poison = ticket_event(666)
    restarts_before = metric("comp_consumer_loop_restarts_total", group=group)
    # Everything is on the partition before the consumer starts, so the first batch holds the poison
    # record between good ones and the dead-letter write fails in the middle of the fallback path.
    for e in [*good[:5], poison, *good[5:]]:
        await send(producer, topic, e)
    states: list[str] = []

    async def sample() -> None:
        while True:
            states.append((await ctx.check_ready())[f"consumer:{group}"])
            await asyncio.sleep(0.03)

    await ctx.start()
    sampler = asyncio.create_task(sample())
    try:
        ids = [e.event_id for e in good]
        await eventually(lambda: _all_logged(ctx.engine, ids), 40, "every good event to be applied")
        await eventually(lambda: _dead_lettered(ctx.engine, group, 1), 20, "the dead letter")
        await eventually(lambda: _ready_again(states), 20, "readiness to come back")
        await runner.run_until_idle(idle_seconds=0.5, timeout=30)
    finally:
        sampler.cancel()
        await ctx.stop()
    engine = db[1]
    async with engine.connect() as conn:
        counted = dict((await conn.execute(text(
            "SELECT event_id, count(*) FROM ticket_log WHERE event_id = ANY(:ids) GROUP BY event_id"),
            {"ids": [e.event_id for e in good]})).all())
        processed = (await conn.execute(text(
            "SELECT count(*) FROM processed_events WHERE consumer_group = :g"), {"g": group})).scalar()
        offset = (await conn.execute(text(
            "SELECT next_offset FROM consumer_offsets WHERE consumer_group = :g"), {"g": group})).scalar()
    assert counted == {e.event_id: 1 for e in good}, "every good event exactly once"
    assert processed == len(good)  # the poison one was never recorded as processed
    assert offset == len(good) + 1
    assert await scalar(engine, "SELECT count(*) FROM dead_letters WHERE consumer_group = :g", g=group) == 1
    assert metric("comp_consumer_loop_restarts_total", group=group) - restarts_before == 1
    assert runner.restarts == 1
    failing = [i for i, s in enumerate(states) if s.startswith("failing")]
    assert failing, f"readiness never reported the crash: {sorted(set(states))}"
    assert states[-1] == "ok" and "restarting after" in states[failing[0]]
    assert any(s == "ok" for s in states[failing[-1]:])


async def _all_logged(engine, ids: list[str]) -> bool:
    return len(set(await logged(engine, ids))) == len(ids)


async def _dead_lettered(engine, group: str, n: int) -> bool:
    return await scalar(engine, "SELECT count(*) FROM dead_letters WHERE consumer_group = :g", g=group) >= n


async def _ready_again(states: list[str]) -> bool:
    seen_failing = False
    for s in states:
        seen_failing = seen_failing or s.startswith("failing")
        if seen_failing and s == "ok":
            return True
    return False


# ---------------------------------------------------------------------------------------------- 3


async def test_a_crash_between_dead_letter_and_offset_still_yields_exactly_one_dead_letter(
        db, settings, producer, make_topics):
    (topic,) = await make_topics("dl-once", partitions=1)
    group = f"g-{topic}"
    engine = db[1]
    # The offset write of the dead-lettering transaction fails once: before the fix the dead letter had
    # already committed on its own, and the restarted consumer dead-lettered (and published) it again.
    await fail_once_trigger(engine, "consumer_offsets", group)

    async def rejecting(conn, events):
        raise PermanentError("never applies")

    poison = ticket_event(777)
    await send(producer, topic, poison)
    first = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                           handler=rejecting, restart_backoff=0.2)
    await first.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not await _dead_lettered(engine, group, 1):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        # The process "crashes" here, whatever state it reached (before the fixes stop() could raise and
        # leave the Kafka consumer open; close it so the restart below gets the partition either way).
        with contextlib.suppress(Exception):
            await first.stop()
        if first._consumer is not None:
            await first._consumer.stop()
    second = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                            handler=rejecting)
    await second.start()
    try:
        await eventually(lambda: _offset_at_least(engine, group, 1), 30, "the offset past the poison record")
        await second.run_until_idle(idle_seconds=0.5, timeout=30)
    finally:
        await second.stop()
    assert await scalar(engine, "SELECT count(*) FROM dead_letters WHERE consumer_group = :g", g=group) == 1
    published = await scalar(engine, "SELECT count(*) FROM outbox WHERE topic = :t AND headers @> CAST(:h AS jsonb)",
                             t=Topic.DEAD_LETTERS.value, h=f'[["dlq.consumer_group", "{group}"]]')
    assert published == 1, "the dead letter must be published exactly once"


async def _offset_at_least(engine, group: str, n: int) -> bool:
    got = await scalar(engine, "SELECT max(next_offset) FROM consumer_offsets WHERE consumer_group = :g", g=group)
    return got is not None and got >= n


# ---------------------------------------------------------------------------------------------- 4


POISON_HEADERS: list[tuple[str, bytes | None]] = [
    ("traceparent", b"00-abc\x00def-01"), ("binary", b"\xff\xfe\x00\x80"), ("latin", b"caf\xe9"),
    ("utf8", "Zürich".encode()), ("absent", None), ("event_type", b"ticket.opened")]


async def test_headers_with_nul_bytes_and_a_poison_payload_are_dead_lettered_byte_for_byte(
        db, settings, producer, make_topics):
    (topic,) = await make_topics("nul", partitions=1)
    group = f"g-{topic}"
    engine = db[1]
    relay = OutboxRelay(engine, producer, f"nul-{topic}")
    runner = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                            handler=log_handler(), on_commit=relay.wake)
    dlq = AIOKafkaConsumer(Topic.DEAD_LETTERS.value, bootstrap_servers=settings.kafka_bootstrap_servers,
                           auto_offset_reset="latest", group_id=None)
    await dlq.start()
    await dlq.seek_to_end()
    payload = b"\x00\xff not an envelope \x00"
    good = ticket_event(888)
    await relay.start()
    await runner.start()
    dead = []
    try:
        await (await producer.producer.send(topic, value=payload, key=b"B1", headers=POISON_HEADERS))
        await send(producer, topic, good)  # the partition keeps flowing after it
        await eventually(lambda: _has(engine, good.event_id), 30, "the event after the poison one")
        deadline = time.monotonic() + 20
        while not dead and time.monotonic() < deadline:
            for recs in (await dlq.getmany(timeout_ms=500)).values():
                dead += [r for r in recs if dict(r.headers).get("dlq.consumer_group") == group.encode()]
    finally:
        await runner.stop()
        await relay.stop()
        await dlq.stop()
    assert len(dead) == 1
    assert dead[0].value == payload
    assert [h for h in dead[0].headers if not h[0].startswith("dlq.")] == POISON_HEADERS
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT id, value, headers, error FROM dead_letters WHERE consumer_group = :g"), {"g": group})).one()
    assert bytes(row[1]) == payload
    assert [h for h in decode_headers(row[2]) if not h[0].startswith("dlq.")] == POISON_HEADERS
    assert row[3].startswith("contract violation")


async def test_replay_restores_the_original_header_bytes(db):
    engine = db[1]
    async with engine.begin() as conn:
        await conn.execute(text(
            'INSERT INTO dead_letters (consumer_group, topic, partition, "offset", key, value, headers, error) '
            "VALUES ('replay-g', 'tickets.v1', 0, 1, 'B1', :v, CAST(:h AS jsonb), 'boom') RETURNING id"),
            {"v": b"\x00payload", "h": __import__("shared.outbox", fromlist=["x"]).headers_json(
                [*POISON_HEADERS, ("dlq.error", b"boom")])})
        dead_id = (await conn.execute(text("SELECT id FROM dead_letters WHERE consumer_group = 'replay-g'"))).scalar()
    await replay_dead_letter(engine, dead_id)
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT value, headers FROM outbox WHERE topic = 'tickets.v1' ORDER BY id DESC LIMIT 1"))).one()
    assert bytes(row[0]) == b"\x00payload"
    assert decode_headers(row[1]) == POISON_HEADERS


# ---------------------------------------------------------------------------------------------- 5


async def test_stop_leaves_the_group_even_when_the_batch_in_hand_fails_while_stopping(
        db, settings, producer, make_topics):
    (topic,) = await make_topics("stop", partitions=2)
    group = f"g-{topic}"
    engine = db[1]
    in_flight = asyncio.Event()
    holder: dict[str, ConsumerRunner] = {}

    async def dies_on_stop(conn, events):
        in_flight.set()
        while not holder["runner"]._stopping.is_set():
            await asyncio.sleep(0.02)
        # The database goes away under the batch in hand during shutdown (a transient error).
        await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    event = ticket_event(900)
    await send(producer, topic, event)
    runner = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                            handler=dies_on_stop)
    holder["runner"] = runner
    await runner.start()
    try:
        await asyncio.wait_for(in_flight.wait(), 30)
        await runner.stop()  # must neither raise nor leave the Kafka consumer running
    finally:
        leaked = runner._consumer
        if leaked is not None:
            await leaked.stop()
    assert leaked is None
    assert await logged(engine, [event.event_id]) == []  # the uncommitted batch is redone by the next owner
    successor = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                               handler=log_handler("successor"))
    await successor.start()
    try:
        everything = {TopicPartition(topic, 0), TopicPartition(topic, 1)}
        started = time.monotonic()
        # A member left open would keep heartbeating and keep a partition: the successor must get both
        # promptly, without waiting for any session to expire.
        while successor._consumer is None or successor._consumer.assignment() != everything:
            assert time.monotonic() - started < 15, "a new member did not get every partition"
            await asyncio.sleep(0.1)
        await eventually(lambda: _has(engine, event.event_id), 30, "the successor to apply the batch")
        await successor.run_until_idle(idle_seconds=0.5, timeout=30)
    finally:
        await successor.stop()
    assert await logged(engine, [event.event_id]) == [event.event_id]


# ---------------------------------------------------------------------------------------------- 6


async def test_sigterm_finishes_the_batch_in_hand_then_exits(db, settings, producer, make_topics, tmp_path):
    (topic,) = await make_topics("sigterm", partitions=1)
    group = f"g-{topic}"
    engine = db[1]
    marker = tmp_path / "in-flight"
    event = ticket_event(950)
    await send(producer, topic, event)
    log = open(tmp_path / "service.log", "w")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": settings.database_url,
           "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "AUTH_TOKEN_SECRET": SECRET,
           "CONSUMER_SESSION_TIMEOUT_MS": "6000", "LOG_JSON": "false", "LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("sigterm_service.py")), SCHEMA,
                             topic, group, str(marker)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "service.log").read_text()
            assert time.monotonic() < deadline, "the service never took the batch"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # the handler is still sleeping inside the batch transaction
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = (tmp_path / "service.log").read_text()
    # uvicorn re-raises the captured SIGTERM once its shutdown is complete, so -SIGTERM is a clean exit too.
    assert code in (0, -signal.SIGTERM), output
    assert "service stopped" in output, output
    assert await logged(engine, [event.event_id]) == [event.event_id]
    assert await _offset_at_least(engine, group, 1)


# ---------------------------------------------------------------------------------------------- hand-over


async def test_partitions_leaving_a_runner_are_handed_over_after_the_batch_in_hand(db, settings, producer,
                                                                                   make_topics):
    """``on_revoke`` (auto_comp's allowances, ADR 0012): called with the revoked partitions when a second
    member joins, after the batch in hand committed, and with the rest when the runner stops; a failing
    hook neither stops the rebalance nor the shutdown."""
    (topic,) = await make_topics("handover", partitions=2)
    group = f"g-{topic}"
    engine = db[1]
    calls: list[tuple[str, list[int], int]] = []  # (why, partitions, events committed at that moment)
    committed = asyncio.Event()

    async def handler(conn, events):
        await log_handler("first")(conn, events)
        committed.set()

    async def on_revoke(partitions, why):
        calls.append((why, [tp.partition for tp in partitions], await scalar(
            engine, "SELECT count(*) FROM ticket_log WHERE consumer = 'first'")))
        raise RuntimeError("a failing hook must not stop anything")

    first = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic], handler=handler,
                           on_revoke=on_revoke)
    second = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                            handler=log_handler("second"))
    await first.start()
    try:
        await send(producer, topic, ticket_event(950))
        await asyncio.wait_for(committed.wait(), 30)
        await second.start()
        await eventually(lambda: _assigned(second, 1), 30, "the second member to get a partition")
        assert calls and calls[0][0] == "revoked" and calls[0][2] == 1  # the committed batch came first
        assert sorted(calls[0][1]) == [0, 1]  # an eager rebalance revokes everything, then reassigns
    finally:
        await first.stop()
        await second.stop()
    why, partitions, _ = calls[-1]
    assert why == "shutdown" and len(partitions) in (1, 2)  # what it held when it stopped


async def _assigned(runner: ConsumerRunner, n: int) -> bool:
    return runner._consumer is not None and len(runner._consumer.assignment()) >= n


async def test_an_event_type_the_handler_does_not_consume_is_dead_lettered_with_the_reason(
        db, settings, producer, make_topics):
    (topic,) = await make_topics("stray", partitions=1)
    group = f"g-{topic}"
    engine = db[1]
    handler = log_handler()
    handler.consumes = frozenset({"ticket.opened"})  # type: ignore[attr-defined]
    runner = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic], handler=handler)
    stray = make_envelope("buyer.order_placed", ev.BuyerOrderPlaced(
        order_id="O-stray", buyer_id="B1", amount=ev.PositiveMoney(amount_minor=100, currency="SGD")),
        source="test", region="SG", occurred_at=datetime(2026, 11, 22, 8, 0, tzinfo=UTC))
    good = ticket_event(889)
    await runner.start()
    try:
        await send(producer, topic, stray)
        await send(producer, topic, good)  # the partition keeps flowing after it
        await eventually(lambda: _has(engine, good.event_id), 30, "the ticket after the stray event")
    finally:
        await runner.stop()
    async with engine.connect() as conn:
        errors = (await conn.execute(text(
            "SELECT error FROM dead_letters WHERE consumer_group = :g"), {"g": group})).scalars().all()
        applied = (await conn.execute(text(
            "SELECT count(*) FROM ticket_log WHERE event_id = :e"), {"e": stray.event_id})).scalar()
    assert errors == [f"unexpected event type buyer.order_placed on {topic}: {group} consumes ticket.opened"]
    assert applied == 0
