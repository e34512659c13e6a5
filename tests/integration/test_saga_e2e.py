"""The budget saga end to end with the real ledger: auto_comp and the ledger run in-process on the real
broker and PostgreSQL. Reserved -> voucher issued -> charged to the liable party; budget exhausted ->
denied, and no voucher."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text

from services.auto_comp.app import build_context
from services.auto_comp.config import Settings as AutoCompSettings
from services.ledger.app import build_app as build_ledger
from services.ledger.config import Settings as LedgerSettings
from services.ledger.domain.periods import period_of
from shared.contracts import events as ev
from shared.contracts.registry import encode_envelope, make_envelope
from shared.contracts.topics import Topic
from shared.db import make_engine, migrate
from shared.regions import region

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = """
strategies:
  - id: th-late-e2e
    version: 1
    scenario: late_delivery
    regions: [TH]
    currency: THB
    effective_from: "2026-01-01T00:00:00+07:00"
    enabled: true
    priority: 100
    match: {reasons: [late_delivery], thresholds: {days_late: {min: 3}}}
    compensation:
      kind: voucher
      amount: {percent: 10, floor: "20.00", cap: "150.00"}
      voucher: {validity_days: 30, min_spend: "200.00"}
    liability:
      - {when: carrier_delay, if_handoff_missing: next_rule, shares: [{party: carrier, percent: 100}]}
      - {when: otherwise, shares: [{party: seller, percent: 50}, {party: platform, percent: 50}]}
"""


def ticket(ticket_id: str, buyer: str, order: int, carrier: str | None = None) -> bytes:
    """A late-delivery ticket whose correlation id is ``corr-<ticket_id>``."""
    now = datetime.now(UTC)
    promised = now - timedelta(days=6)
    payload = ev.TicketOpened(
        ticket_id=ticket_id, order_id=f"O-{ticket_id}", buyer_id=buyer, seller_id="S-e2e", carrier_id=carrier,
        reason=ev.TicketReason.LATE_DELIVERY, order_amount=ev.PositiveMoney(amount_minor=order, currency="THB"),
        dispatch_due_at=promised - timedelta(days=3), shipped_at=promised - timedelta(days=4),
        promised_delivery_at=promised, delivered_at=promised + timedelta(days=4))
    return encode_envelope(make_envelope("ticket.opened", payload, source="e2e", region="TH", occurred_at=now,
                                         correlation_id=f"corr-{ticket_id}"))


async def start_at_topic_end(engine, group: str, topics: list[str], bootstrap: str) -> None:
    """Store the current end of the shared topics as the group's next offsets (the runner seeks to stored
    offsets), so this test's services skip what other tests published before. Not airtight (a record
    fetched before the seek can slip through), hence also a region (TH) no other test budgets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    async with engine.begin() as conn:
        for tp, offset in ends.items():
            await conn.execute(text(
                "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
                "VALUES (:g, :t, :p, :o)"), {"g": group, "t": tp.topic, "p": tp.partition, "o": offset})


async def wait_for(engine, sql: str, expected, timeout: float = 40.0, **params) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            value = (await conn.execute(text(sql), params)).scalar()
        if value == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sql!r} is {value!r}, expected {expected!r}")


async def test_reserved_issued_charged_then_budget_exhausted_denied(fresh_database, kafka_bootstrap, make_topics,
                                                                    unique_topic_prefix, tmp_path, caplog):
    await migrate(fresh_database, "auto_comp", ROOT / "services" / "auto_comp" / "migrations")
    await migrate(fresh_database, "ledger", ROOT / "services" / "ledger" / "migrations")
    (tickets_topic,) = await make_topics("tickets", partitions=2)
    (tmp_path / "s.yaml").write_text(STRATEGY)
    common = {"database_url": fresh_database, "kafka_bootstrap_servers": kafka_bootstrap,
              "consumer_poll_timeout_ms": 20, "outbox_poll_interval_ms": 10}
    auto_settings = AutoCompSettings(**common, strategies_dir=tmp_path, tickets_topic=tickets_topic,
                                     budget_results_topic=Topic.BUDGET_RESULTS.value,
                                     consumer_group=f"{unique_topic_prefix}-ac")
    ledger_settings = LedgerSettings(**common, consumer_group=f"{unique_topic_prefix}-ledger")
    auto_ctx, _ = build_context(auto_settings)
    ledger_ctx = build_ledger(ledger_settings, housekeeping=False).state.ctx
    auto_db = make_engine(fresh_database, "auto_comp")
    ledger_db = make_engine(fresh_database, "ledger")
    period = period_of(datetime.now(UTC), region("TH"))
    for ctx, db in ((ledger_ctx, ledger_db), (auto_ctx, auto_db)):
        for runner in ctx.runners:
            await start_at_topic_end(db, runner.group_id, runner.topics, kafka_bootstrap)
    async with ledger_db.begin() as conn:
        # 150.00 THB: room for the first 100.00 voucher, not for a second one
        await conn.execute(text("INSERT INTO budgets (region, period, currency, limit_minor) "
                                "VALUES ('TH', :p, 'THB', 15000)"), {"p": period})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    caplog.set_level(logging.INFO)
    try:
        await asyncio.gather(auto_ctx.start(), ledger_ctx.start())
        await producer.send_and_wait(tickets_topic, ticket("E2E-1", "B-e2e-1", 100_000, carrier="C-e2e"),
                                     key=b"B-e2e-1")
        await wait_for(auto_db, "SELECT outcome FROM decisions WHERE ticket_id = 'E2E-1'", "issued")
        comp_id = await _scalar(auto_db, "SELECT compensation_id FROM compensations WHERE ticket_id = 'E2E-1'")
        # the ledger charged the carrier (shipped on time, delivered late) for the whole voucher
        await wait_for(ledger_db, "SELECT current_amount_minor FROM compensations WHERE compensation_id = :c",
                       10_000, c=comp_id)
        shares = await _scalar(ledger_db, "SELECT current_shares FROM compensations WHERE compensation_id = :c",
                               c=comp_id)
        assert "carrier" in str(shares) and "C-e2e" in str(shares)
        assert await _scalar(ledger_db, "SELECT count(*) FROM (SELECT tx_id FROM journal_entries GROUP BY tx_id, "
                                        "currency HAVING sum(amount_minor) <> 0) x") == 0

        await producer.send_and_wait(tickets_topic, ticket("E2E-2", "B-e2e-2", 100_000), key=b"B-e2e-2")
        await wait_for(auto_db, "SELECT outcome FROM decisions WHERE ticket_id = 'E2E-2'", "budget_denied")
        assert await _scalar(auto_db, "SELECT voucher_code FROM compensations WHERE ticket_id = 'E2E-2'") is None
        assert await _scalar(ledger_db, "SELECT status FROM reservations WHERE ticket_id = 'E2E-2'") == "denied"
        assert await _scalar(ledger_db, "SELECT reserved_minor + posted_auto_minor FROM budgets "
                                        "WHERE region = 'TH' AND period = :p", p=period) <= 15_000

        # An operator follows each ticket through both services by its correlation id (issue 13, make logs).
        def followed(cid: str) -> list[tuple[str, str | None]]:
            return [(r.getMessage(), r.__dict__.get("outcome") or r.__dict__.get("kind"))
                    for r in caplog.records if r.levelno == logging.INFO and r.__dict__.get("correlation_id") == cid]

        assert followed("corr-E2E-1") == [("ticket decided", "pending_budget"), ("budget answered", "reserved"),
                                          ("compensation issued", "voucher")]
        assert followed("corr-E2E-2") == [("ticket decided", "pending_budget"), ("budget answered", "denied"),
                                          ("compensation denied by the budget", "budget_denied")]
        denial = [r for r in caplog.records if r.getMessage() == "budget answered"
                  and r.__dict__.get("correlation_id") == "corr-E2E-2"]
        assert denial[0].denial_reason and denial[0].ticket_id == "E2E-2"
    finally:
        await producer.stop()
        await asyncio.gather(auto_ctx.stop(), ledger_ctx.stop())
        await auto_db.dispose()
        await ledger_db.dispose()


async def _scalar(engine, sql: str, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()
