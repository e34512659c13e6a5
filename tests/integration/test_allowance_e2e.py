"""Budget allowances end to end with the real ledger (ADR 0012): auto_comp and the ledger run in-process on
the real broker and PostgreSQL. The first ticket waits for its partition's grant, later ones issue in their
own transaction; the ledger charges each against the allowance; an exhausted budget denies; stopping
auto_comp returns its allowances and the ledger releases what was not spent. Then several auto_comp
consumers of one group against one small budget: never beyond it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text

from services.auto_comp.app import build_context
from services.auto_comp.config import Settings as AutoCompSettings
from services.ledger import invariants
from services.ledger.app import build_app as build_ledger
from services.ledger.config import Settings as LedgerSettings
from shared.contracts import events as ev
from shared.contracts.registry import encode_envelope, make_envelope
from shared.db import make_engine, migrate
from shared.periods import period_of
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
    now = datetime.now(UTC)
    promised = now - timedelta(days=6)
    payload = ev.TicketOpened(
        ticket_id=ticket_id, order_id=f"O-{ticket_id}", buyer_id=buyer, seller_id="S-e2e", carrier_id=carrier,
        reason=ev.TicketReason.LATE_DELIVERY, order_amount=ev.PositiveMoney(amount_minor=order, currency="THB"),
        dispatch_due_at=promised - timedelta(days=3), shipped_at=promised - timedelta(days=4),
        promised_delivery_at=promised, delivered_at=promised + timedelta(days=4))
    return encode_envelope(make_envelope("ticket.opened", payload, source="e2e", region="TH", occurred_at=now))


async def start_at_topic_end(engine, group: str, topics: list[str], bootstrap: str) -> None:
    """Store the current end of the shared topics as the group's next offsets (the runner seeks to stored
    offsets), so this test's services skip what other tests published before. Not airtight (a record
    fetched before the seek can slip through), hence also a region (TH) no other test budgets, and each
    side ignores allowances it does not know."""
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
                "VALUES (:g, :t, :p, :o) ON CONFLICT DO NOTHING"),
                {"g": group, "t": tp.topic, "p": tp.partition, "o": offset})


async def wait_for(engine, sql: str, expected, timeout: float = 60.0, **params) -> None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            value = (await conn.execute(text(sql), params)).scalar()
        if value == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sql!r} is {value!r}, expected {expected!r}")


async def _scalar(engine, sql: str, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


class World:
    """A migrated database, the ledger and ``instances`` auto_comp processes (one consumer group) on it."""

    def __init__(self, database, bootstrap, tickets_topic, prefix, folder, instances: int = 1) -> None:
        common = {"database_url": database, "kafka_bootstrap_servers": bootstrap,
                  "consumer_poll_timeout_ms": 20, "outbox_poll_interval_ms": 10, "consumer_session_timeout_ms": 6_000}
        self.auto_settings = AutoCompSettings(**common, strategies_dir=folder, tickets_topic=tickets_topic,
                                              consumer_group=f"{prefix}-ac", allowance_check_seconds=0.2)
        self.ledger_settings = LedgerSettings(**common, consumer_group=f"{prefix}-ledger")
        self.database, self.bootstrap, self.instances = database, bootstrap, instances
        self.auto = [build_context(self.auto_settings)[0] for _ in range(instances)]
        self.ledger = build_ledger(self.ledger_settings, housekeeping=False).state.ctx
        self.auto_db = make_engine(database, "auto_comp")
        self.ledger_db = make_engine(database, "ledger")
        self.period = period_of(datetime.now(UTC), region("TH"))

    async def start(self, limit: int) -> None:
        for ctx, db in ((self.ledger, self.ledger_db), (self.auto[0], self.auto_db)):
            for runner in ctx.runners:
                await start_at_topic_end(db, runner.group_id, runner.topics, self.bootstrap)
        async with self.ledger_db.begin() as conn:
            await conn.execute(text("INSERT INTO budgets (region, period, currency, limit_minor) "
                                    "VALUES ('TH', :p, 'THB', :l)"), {"p": self.period, "l": limit})
        await self.ledger.start()
        await asyncio.gather(*(ctx.start() for ctx in self.auto))

    async def stop_auto_comp(self) -> None:
        await asyncio.gather(*(ctx.stop() for ctx in self.auto))

    async def relay_leftovers(self) -> None:
        """Publish what the stopped instances left in the outbox and wait until the ledger has every
        allowance back."""
        ctx = build_context(self.auto_settings)[0]
        await ctx.producer.start()
        await ctx.relay.start()
        try:
            await wait_for(self.ledger_db, "SELECT count(*) FROM allowances WHERE status = 'open'", 0)
        finally:
            await ctx.relay.stop()
            await ctx.producer.stop()
            await ctx.engine.dispose()

    async def close(self) -> None:
        await self.ledger.stop()
        await self.auto_db.dispose()
        await self.ledger_db.dispose()

    async def violations(self) -> dict[str, int]:
        async with self.ledger_db.connect() as conn:
            found = await invariants.check(conn, datetime.now(UTC), 86_400)
        return {k: v for k, v in found.items() if v}


@pytest.fixture
async def world_factory(make_database, kafka_bootstrap, make_topics, unique_topic_prefix, tmp_path):
    (tmp_path / "s.yaml").write_text(STRATEGY)
    worlds: list[World] = []

    async def make(instances: int = 1, partitions: int = 2) -> tuple[World, str]:
        database = await make_database("allowance-e2e")  # a world of its own: budgets, allowances, books
        await migrate(database, "auto_comp", ROOT / "services" / "auto_comp" / "migrations")
        await migrate(database, "ledger", ROOT / "services" / "ledger" / "migrations")
        (tickets_topic,) = await make_topics(f"tickets{len(worlds)}", partitions=partitions)
        world = World(database, kafka_bootstrap, tickets_topic, f"{unique_topic_prefix}-{len(worlds)}",
                      tmp_path, instances)
        worlds.append(world)
        return world, tickets_topic

    yield make
    for world in worlds:
        await world.stop_auto_comp()
        await world.close()


async def test_granted_issued_charged_then_exhausted_denied_and_returned_on_stop(world_factory, kafka_bootstrap):
    world, tickets_topic = await world_factory(partitions=1)
    # 250.00 THB: the first grant covers the first 100.00 voucher (and a share of the rest), not a third one
    await world.start(limit=25_000)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(tickets_topic, ticket("E2E-1", "B-e2e-1", 100_000, carrier="C-e2e"),
                                     key=b"B-e2e-1")
        await wait_for(world.auto_db, "SELECT outcome FROM decisions WHERE ticket_id = 'E2E-1'", "issued")
        comp_id, allowance_id = (await _rows(world.auto_db, "SELECT compensation_id, allowance_id FROM compensations "
                                                            "WHERE ticket_id = 'E2E-1'"))[0]
        # the ledger charged the carrier (shipped on time, delivered late) for the whole voucher, against
        # the allowance it granted
        await wait_for(world.ledger_db, "SELECT current_amount_minor FROM compensations WHERE compensation_id = :c",
                       10_000, c=comp_id)
        shares = await _scalar(world.ledger_db, "SELECT current_shares FROM compensations "
                                                "WHERE compensation_id = :c", c=comp_id)
        assert "carrier" in str(shares) and "C-e2e" in str(shares)
        assert await _scalar(world.ledger_db, "SELECT allowance_id FROM reservations WHERE compensation_id = :c",
                             c=comp_id) == allowance_id
        granted = await _scalar(world.ledger_db, "SELECT granted_minor FROM allowances WHERE allowance_id = :a",
                                a=allowance_id)
        assert granted >= 10_000

        for i in (2, 3, 4):
            await producer.send_and_wait(tickets_topic, ticket(f"E2E-{i}", f"B-e2e-{i}", 100_000),
                                         key=f"B-e2e-{i}".encode())
        await wait_for(world.auto_db, "SELECT count(*) FROM decisions WHERE ticket_id IN ('E2E-2', 'E2E-3', "
                                      "'E2E-4') AND outcome IN ('issued', 'budget_denied')", 3)
        outcomes = dict(await _rows(world.auto_db, "SELECT outcome, count(*) FROM decisions GROUP BY outcome"))
        assert outcomes["issued"] == 2 and outcomes["budget_denied"] == 2
        assert await _scalar(world.ledger_db, "SELECT allotted_minor + reserved_minor + posted_auto_minor "
                                              "FROM budgets WHERE region = 'TH' AND period = :p", p=world.period) \
            <= 25_000
    finally:
        await producer.stop()
    # Stopping auto_comp returns its allowance with exactly what it spent; the ledger releases the rest.
    await world.stop_auto_comp()
    await world.relay_leftovers()  # as a replica's relay would: the returns the stopped ones left behind
    await wait_for(world.ledger_db, "SELECT allotted_minor FROM budgets WHERE region = 'TH' AND period = :p", 0,
                   p=world.period)
    assert await _scalar(world.ledger_db, "SELECT reserved_minor FROM budgets WHERE region = 'TH' "
                                          "AND period = :p", p=world.period) == 20_000
    assert await world.violations() == {}


async def test_several_consumers_against_one_small_budget_never_issue_beyond_it(world_factory, kafka_bootstrap):
    world, tickets_topic = await world_factory(instances=3, partitions=4)
    limit = 61_000  # room for at most 30 vouchers of 20.00 THB (orders of 100.00: the floor)
    await world.start(limit=limit)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        n = 120
        for i in range(n):
            await producer.send(tickets_topic, ticket(f"C-{i}", f"B-c-{i}", 10_000), key=f"B-c-{i}".encode())
        await producer.flush()
        await wait_for(world.auto_db, "SELECT count(*) FROM decisions WHERE ticket_id LIKE 'C-%' "
                                      "AND outcome IN ('issued', 'budget_denied')", n, timeout=120)
        issued = await _scalar(world.auto_db, "SELECT coalesce(sum(issued_minor), 0) FROM compensations "
                                              "WHERE ticket_id LIKE 'C-%' AND status = 'issued'")
        assert 0 < issued <= limit
        await wait_for(world.ledger_db, "SELECT coalesce(sum(amount_minor), 0) FROM compensations "
                                        "WHERE region = 'TH'", issued, timeout=60)
        committed = await _scalar(world.ledger_db, "SELECT allotted_minor + reserved_minor + posted_auto_minor "
                                                   "FROM budgets WHERE region = 'TH' AND period = :p", p=world.period)
        assert committed <= limit
    finally:
        await producer.stop()
    await world.stop_auto_comp()
    await world.relay_leftovers()  # as a replica's relay would: the returns the stopped ones left behind
    # every allotted unit was spent (and charged) or returned
    assert await _scalar(world.ledger_db, "SELECT allotted_minor FROM budgets WHERE region = 'TH' AND period = :p",
                         p=world.period) == 0
    assert await _scalar(world.ledger_db, "SELECT sum(granted_minor) - sum(charged_minor) - sum(released_minor) "
                                          "FROM allowances WHERE region = 'TH'") == 0
    assert await world.violations() == {}


async def _rows(engine, sql: str, **params):
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
