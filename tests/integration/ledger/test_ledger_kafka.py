"""Through the real broker: three ledger consumers in one group over eight partitions, budget requests at
the boundary, a re-sent request, a redemption that overtakes its issue, and poison messages."""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from services.ledger.app import build_app
from services.ledger.config import Settings
from shared.contracts.registry import encode_envelope
from shared.contracts.topics import Topic
from shared.db import migrate
from shared.kafka import EventProducer
from tests.integration.ledger.ledger_support import MIGRATIONS, ledger_engine, rows, scalar, send, set_budget, wait_for
from tests.unit.ledger.ledger_factories import NOW, issued, redeemed, request

pytestmark = pytest.mark.integration


async def test_parallel_consumers_at_the_budget_boundary(fresh_database, kafka_bootstrap, make_topics,
                                                         unique_topic_prefix):
    requests_topic, lifecycle_topic = await make_topics("requests", "lifecycle", partitions=8)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        consumer_group=f"ledger-{unique_topic_prefix}", consumer_max_batch=100,
                        consumer_session_timeout_ms=6_000)
    await migrate(fresh_database, "ledger", MIGRATIONS)
    engine = await ledger_engine(fresh_database)
    await set_budget(engine, "SG", "2026-11", 5_000, "SGD")
    tag = unique_topic_prefix.replace("_", "-")[-20:]
    producer = EventProducer(settings, "ledger-test")
    await producer.start()
    apps = [build_app(settings, topics=[requests_topic, lifecycle_topic], housekeeping=False) for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
        try:
            # 400 requests of 10..30 from 400 buyers (spread over the partitions) against 5,000; live
            # holds (their expiry beyond the wall clock), so a re-sent one is answered the same again.
            reqs = [request(f"{tag}-R{n}", 10 + n % 21, buyer=f"buyer{n}", expires_at=NOW + timedelta(days=3650))
                    for n in range(400)]
            await send(producer, requests_topic, reqs)
            await wait_for(engine, "SELECT count(*) FROM reservations", 400)
            reserved = await scalar(engine, "SELECT reserved_minor FROM budgets WHERE region = 'SG'")
            granted = await scalar(engine, "SELECT sum(decided_minor) FROM reservations")
            assert reserved == granted and 5_000 - 30 < reserved <= 5_000

            # auto_comp re-sends one request after a timeout, with a new event id: the same answer again.
            first = reqs[0]
            await send(producer, requests_topic, [first.model_copy(update={"event_id": f"{tag}-resend"})])
            # a redemption overtakes its issue (different topics), and waits for it
            r = await rows(engine, "SELECT reservation_id, decided_minor FROM reservations WHERE status = 'pending' "
                                   "ORDER BY reservation_id LIMIT 1")
            rid, amount = r[0]
            buyer = f"buyer{rid.rsplit('R', 1)[1]}"
            await send(producer, lifecycle_topic, [redeemed(f"comp-{rid}", amount // 2, buyer=buyer)])
            await wait_for(engine, "SELECT count(*) FROM parked_events", 1)
            await send(producer, requests_topic, [issued(rid, amount, buyer=buyer)])
            await wait_for(engine, "SELECT status FROM reservations WHERE reservation_id = :r", "posted", r=rid)
            assert await scalar(engine, "SELECT posted_auto_minor FROM budgets WHERE region = 'SG'") == amount // 2

            # poison: money in the wrong currency for the region, and an undecodable message
            wrong = request(f"{tag}-BAD", 100, buyer="buyer-bad")
            raw = orjson.loads(encode_envelope(wrong))
            raw["payload"]["amount"]["currency"] = "USD"
            await send(producer, requests_topic, [wrong], value=orjson.dumps(raw))
            await send(producer, requests_topic, [wrong], value=b"not json")
            await wait_for(engine, "SELECT count(*) FROM dead_letters", 2)
            assert await scalar(engine, "SELECT count(*) FROM reservations WHERE reservation_id LIKE '%BAD'") == 0
            await wait_for(engine, "SELECT count(*) FROM outbox WHERE topic = 'budget.results.v1'", 0)
        finally:
            await producer.stop()

    # Every request got exactly one published answer (two for the re-sent one, identical).
    answers: dict[str, list] = {}
    consumer = AIOKafkaConsumer(Topic.BUDGET_RESULTS.value, bootstrap_servers=kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while sum(len(v) for v in answers.values()) < 401 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    p = orjson.loads(rec.value)["payload"]
                    if p["reservation_id"].startswith(f"{tag}-R"):
                        answers.setdefault(p["reservation_id"], []).append(
                            (p["outcome"], p["reserved_amount"], p["denial_reason"]))
    finally:
        await consumer.stop()
    assert len(answers) == 400
    assert sorted(len(v) for v in answers.values()) == [1] * 399 + [2]
    assert answers[f"{tag}-R0"][0] == answers[f"{tag}-R0"][1]
    assert sum(a[0][1]["amount_minor"] for a in answers.values() if a[0][0] == "reserved") == granted
    assert {a[0][2] for a in answers.values() if a[0][0] == "denied"} <= {"budget_exhausted"}
    await engine.dispose()
