"""Through the real broker and the real consumer runner: a budget request sent again is answered by the
reservation's state at that time, and the exact same request event again is deduplicated.

auto_comp re-sends a request it had no answer to (same reservation id, new event id) and issues on a
"reserved" answer, so that answer must only come while budget is behind it: a live hold, or one already
issued against and charged (an idempotent replay; auto_comp has issued and changes nothing). A hold that
lapsed unused, voided by the sweeper or past its expiry plus the grace and not swept yet, is denied
``reservation_expired``.
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from services.ledger.app import build_app
from services.ledger.config import Settings
from shared.contracts.topics import Topic
from shared.db import migrate
from shared.kafka import EventProducer
from tests.integration.ledger.ledger_support import MIGRATIONS, ledger_engine, scalar, send, set_budget, wait_for
from tests.unit.ledger.ledger_factories import NOW, issued, request

pytestmark = pytest.mark.integration

BUYER = "B-resend"  # one key, so one partition: the consumer sees every event below in the order sent
FAR = NOW + timedelta(days=3650)  # an expiry or validity the wall clock does not reach in these tests


async def answers_on_results_topic(bootstrap: str, tag: str, expected: int) -> dict[str, list[tuple]]:
    """Every published answer for this test's reservations, in publishing order, per reservation."""
    answers: dict[str, list[tuple]] = {}
    consumer = AIOKafkaConsumer(Topic.BUDGET_RESULTS.value, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        # Read past the expected count for a moment, so an extra (wrong) answer would be seen too.
        settle = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in sorted(records, key=lambda r: r.offset):
                    p = orjson.loads(rec.value)["payload"]
                    if p["reservation_id"].startswith(f"{tag}-"):
                        answers.setdefault(p["reservation_id"].removeprefix(f"{tag}-"), []).append(
                            (p["outcome"], p["denial_reason"],
                             p["reserved_amount"] and p["reserved_amount"]["amount_minor"]))
            if sum(len(v) for v in answers.values()) >= expected:
                settle = settle or time.monotonic() + 2
                if time.monotonic() >= settle:
                    break
    finally:
        await consumer.stop()
    return answers


async def test_resent_requests_are_answered_by_the_reservation_state(fresh_database, kafka_bootstrap, make_topics,
                                                                    unique_topic_prefix):
    (requests_topic,) = await make_topics("requests", partitions=2)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        consumer_group=f"ledger-{unique_topic_prefix}", consumer_max_batch=50,
                        consumer_session_timeout_ms=6_000)
    await migrate(fresh_database, "ledger", MIGRATIONS)
    engine = await ledger_engine(fresh_database)
    await set_budget(engine, "SG", "2026-11", 10_000, "SGD")
    tag = unique_topic_prefix.replace("_", "-")[-20:]
    producer = EventProducer(settings, "ledger-test")
    await producer.start()
    app = build_app(settings, topics=[requests_topic], housekeeping=False)
    status = "SELECT status FROM reservations WHERE reservation_id = :r"
    firsts = {
        "LIVE": request(f"{tag}-LIVE", 1_000, buyer=BUYER, expires_at=FAR),
        # expires NOW + 10 minutes: long past (with the default grace of a day) on the wall clock
        "SWEPT": request(f"{tag}-SWEPT", 1_000, buyer=BUYER),
        "CHARGED": request(f"{tag}-CHARGED", 1_000, buyer=BUYER),
    }
    # Sent after the sweep, so it is still pending when it is asked again: lapsed, but not voided yet.
    lapsed = request(f"{tag}-LAPSED", 1_000, buyer=BUYER)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        try:
            await send(producer, requests_topic, list(firsts.values()))
            await wait_for(engine, "SELECT count(*) FROM reservations", 3)
            # auto_comp issues against CHARGED: the voucher is charged to its liable party
            await send(producer, requests_topic, [issued(f"{tag}-CHARGED", 800, buyer=BUYER, valid_days=3650)])
            await wait_for(engine, "SELECT count(*) FROM compensations", 1)
            assert await scalar(engine, "SELECT count(*) FROM journal_transactions WHERE tx_id = :t",
                                t=f"charge:comp-{tag}-CHARGED:0") == 1
            # the real sweeper (the service's housekeeper, wall clock) voids SWEPT, and only SWEPT
            await app.state.housekeeper.run_once()
            assert await scalar(engine, status, r=f"{tag}-SWEPT") == "voided"
            assert await scalar(engine, status, r=f"{tag}-LIVE") == "pending"
            assert await scalar(engine, status, r=f"{tag}-CHARGED") == "pending"
            await send(producer, requests_topic, [lapsed])
            await wait_for(engine, "SELECT count(*) FROM reservations", 4)
            reserved_before = await scalar(engine, "SELECT reserved_minor FROM budgets WHERE region = 'SG'")

            firsts["LAPSED"] = lapsed
            # For each: a replay of the exact same event (redelivery, or a producer retry), then a re-send
            # by auto_comp's saga timeout with a new event id. Sent one after the other on one key.
            resends = []
            for name, first in firsts.items():
                await send(producer, requests_topic, [first])
                resend = first.model_copy(update={"event_id": f"{first.event_id}.1"})
                await send(producer, requests_topic, [resend])
                resends.append(resend.event_id)
            await wait_for(engine, "SELECT count(*) FROM processed_events WHERE event_id = ANY(CAST(:e AS text[]))",
                           len(resends), e=resends)
            await wait_for(engine, "SELECT count(*) FROM outbox WHERE topic = 'budget.results.v1'", 0)
            # Answering changes nothing: no second reservation, nothing voided or released by a re-send.
            assert await scalar(engine, "SELECT count(*) FROM reservations") == 4
            assert await scalar(engine, status, r=f"{tag}-LAPSED") == "pending"  # left for the sweeper
            assert await scalar(engine, "SELECT reserved_minor FROM budgets WHERE region = 'SG'") == reserved_before
        finally:
            await producer.stop()

    answers = await answers_on_results_topic(kafka_bootstrap, tag, expected=8)
    reserved = ("reserved", None, 1_000)
    expired = ("denied", "reservation_expired", None)
    # The first answer, then one for the re-send; none for the replayed event ids (deduplicated).
    assert answers == {
        "LIVE": [reserved, reserved],  # live: the same answer again
        "SWEPT": [reserved, expired],  # voided by the sweeper: no longer reserved
        "CHARGED": [reserved, reserved],  # issued and charged: an idempotent replay, the decided amount
        "LAPSED": [reserved, expired],  # past expiry + grace, not swept yet: lapsed all the same
    }
    await engine.dispose()

