"""auto_comp as deployed: two replicas in one consumer group on the real broker and PostgreSQL. Tickets of
one buyer spread over every partition (so both replicas decide for that buyer at once), each delivered
twice; they wait for their partitions' first allowances, whose grants then arrive over the broker."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from services.auto_comp.app import build_context
from services.auto_comp.config import Settings
from shared.contracts.envelope import Envelope
from shared.contracts.registry import encode_envelope
from tests.integration.auto_comp.autocomp_support import (
    STRATEGIES,
    autocomp_engine,
    grant,
    late_ticket,
    rows,
    scalar,
    write_strategies,
)

pytestmark = pytest.mark.integration


async def produce(bootstrap: str, topic: str, envelopes: list[Envelope], *, random_keys: bool = False,
                  key: Any = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for env in envelopes:
            key_of = key or (lambda e: str(random.random()) if random_keys else e.payload["buyer_id"])
            key_value = key_of(env)
            await producer.send(topic, encode_envelope(env), key=key_value.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def wait_for(engine, sql: str, expected: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await scalar(engine, sql) == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sql!r} never reached {expected} (now {await scalar(engine, sql)})")


async def open_requests(engine) -> list[dict]:
    """The request in flight of every open allowance, as its payload."""
    found = await rows(engine, "SELECT allowance_id, region, period, pacing_percent, request_seq, currency "
                               "FROM allowances WHERE status = 'open' AND request_seq > answered_seq")
    return [{"allowance_id": a["allowance_id"], "request_seq": a["request_seq"], "budget_period": a["period"],
             "wanted": {"amount_minor": 1, "currency": a["currency"]}} for a in found]


async def test_two_replicas_same_buyer_replayed_then_ledger_grants(fresh_database, kafka_bootstrap, make_topics,
                                                                   unique_topic_prefix, tmp_path):
    tickets_topic, grants_topic = await make_topics("tickets", "grants", partitions=4)
    engine = await autocomp_engine(fresh_database)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        strategies_dir=write_strategies(tmp_path / "strategies"), tickets_topic=tickets_topic,
                        grants_topic=grants_topic, consumer_group=unique_topic_prefix,
                        consumer_poll_timeout_ms=20, consumer_session_timeout_ms=6_000, consumer_max_batch=3)
    replicas = [build_context(settings)[0] for _ in range(2)]
    try:
        await asyncio.gather(*(ctx.start() for ctx in replicas))
        tickets = [late_ticket(f"T-bk{i}", "B-hot") for i in range(12)]
        tickets += [late_ticket(f"T-other{i}", f"B-other{i}") for i in range(6)]
        # every event twice: once as is (same event id), once re-sent upstream with a new event id
        again = [late_ticket(e.payload["ticket_id"], e.payload["buyer_id"]) for e in tickets]
        await produce(kafka_bootstrap, tickets_topic, tickets + tickets + again, random_keys=True)
        await wait_for(engine, "SELECT count(*) FROM decisions", 18)

        assert await scalar(engine, "SELECT count(*) FROM compensations WHERE buyer_id = 'B-hot'") == 2
        hot = await rows(engine, "SELECT outcome, count(*) AS n FROM decisions WHERE buyer_id = 'B-hot' "
                                 "GROUP BY outcome ORDER BY outcome")
        assert {r["outcome"]: r["n"] for r in hot} == {"capped_by_abuse_guard": 10, "pending_budget": 2}
        assert await scalar(engine, "SELECT count(*) FROM compensations") == 8
        # every partition with waiting tickets has its allowance asked for, once
        assert await scalar(engine, "SELECT count(*) FROM allowances WHERE status = 'open' "
                                    "AND request_seq = 1 AND answered_seq = 0") == \
            await scalar(engine, "SELECT count(DISTINCT partition) FROM compensations WHERE status = 'pending'")

        # The ledger answers over the broker, every answer twice.
        answers = [grant(r, 100_000) for r in await open_requests(engine)]
        await produce(kafka_bootstrap, grants_topic, answers + answers, key=lambda e: e.payload["allowance_id"])
        await wait_for(engine, "SELECT count(*) FROM compensations WHERE status = 'issued'", 8)
        await wait_for(engine, "SELECT count(*) FROM decisions WHERE outcome = 'issued'", 8)
        assert await scalar(engine, "SELECT count(DISTINCT voucher_code) FROM compensations") == 8
        assert await scalar(engine, "SELECT sum(spent_minor) FROM allowances") == \
            await scalar(engine, "SELECT sum(issued_minor) FROM compensations")
        # the relay published everything it was given
        await wait_for(engine, "SELECT count(*) FROM outbox", 0)
    finally:
        await asyncio.gather(*(ctx.stop() for ctx in replicas))
        # Stopping returned every allowance: what each spent is in its return event (relayed or waiting).
        assert await scalar(engine, "SELECT count(*) FROM allowances WHERE status = 'open'") == 0
        await engine.dispose()


async def test_issued_event_reaches_the_topic(fresh_database, kafka_bootstrap, make_topics, unique_topic_prefix,
                                              tmp_path):
    """The outbox relay publishes the issued compensation to compensations.issued.v1 for the ledger."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tickets_topic, grants_topic = await make_topics("tickets", "grants", partitions=1)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        strategies_dir=write_strategies(tmp_path / "s"), tickets_topic=tickets_topic,
                        grants_topic=grants_topic, consumer_group=unique_topic_prefix + "-2",
                        consumer_poll_timeout_ms=20)
    engine = await autocomp_engine(fresh_database)
    ctx, _ = build_context(settings)
    ticket_id = f"T-pub-{unique_topic_prefix}"
    # No consumer group (assigned partitions, from their current end): no join to wait for.
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="latest")
    await consumer.start()
    try:
        partitions = [TopicPartition("compensations.issued.v1", p)
                      for p in consumer.partitions_for_topic("compensations.issued.v1") or {0}]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        await ctx.start()
        await produce(kafka_bootstrap, tickets_topic, [late_ticket(ticket_id, "B-pub")])
        await wait_for(engine, f"SELECT count(*) FROM compensations WHERE ticket_id = '{ticket_id}'", 1)
        await wait_for(engine, "SELECT count(*) FROM allowances WHERE status = 'open' "
                               "AND request_seq > answered_seq", 1)
        [request] = await open_requests(engine)
        await produce(kafka_bootstrap, grants_topic, [grant(request, 100_000)], key=lambda e: e.payload["allowance_id"])
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for record in (r for recs in batch.values() for r in recs):
                env = orjson.loads(record.value)
                if env["payload"]["ticket_id"] == ticket_id:
                    found = env
        assert found is not None, "compensation.issued never published"
        assert found["event_type"] == "compensation.issued"
        assert found["payload"]["amount"] == {"amount_minor": 1_000, "currency": "SGD"}
        assert found["payload"]["allowance_id"] == request["allowance_id"]
    finally:
        await consumer.stop()
        await ctx.stop()
        await engine.dispose()


async def test_readyz_names_a_failed_strategy_reload_and_stays_ready(fresh_database, kafka_bootstrap, make_topics,
                                                                      unique_topic_prefix, tmp_path):
    """Issue 13: /readyz covers the strategy files. A failed reload keeps the last good set in force, so the
    service stays ready (every replica reads the same files: not-ready would take them all out at once) and
    /readyz names the file, the error and the version still serving, until a good reload clears it."""
    import httpx

    from services.auto_comp.app import build_app

    tickets_topic, results_topic = await make_topics("tickets", "results", partitions=1)
    folder = write_strategies(tmp_path / "s")
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        strategies_dir=folder, tickets_topic=tickets_topic, budget_results_topic=results_topic,
                        consumer_group=unique_topic_prefix + "-ready", consumer_poll_timeout_ms=20)
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://auto-comp") as client:
            async def readyz() -> httpx.Response:
                for _ in range(600):  # until the consumers have joined: a positive signal, bounded
                    r = await client.get("/readyz")
                    if r.status_code == 200:
                        return r
                    await asyncio.sleep(0.1)
                raise AssertionError(r.text)

            assert "warnings" not in (await readyz()).json()
            serving = app.state.store.current.version
            (folder / "strategies.yaml").write_text(STRATEGIES.replace("version: 3", "version: zero"))
            assert not app.state.store.reload().ok
            body = (await readyz()).json()
            assert body["status"] == "ready"
            warning = body["warnings"]["strategies"]
            assert "strategies.yaml" in warning and "sg-late" in warning and "version" in warning
            assert f"still serving version {serving}" in warning
            (folder / "strategies.yaml").write_text(STRATEGIES)
            assert app.state.store.reload().ok
            assert "warnings" not in (await readyz()).json()
