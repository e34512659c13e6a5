"""Manual compensations through the real broker into the population and the audit queues."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from services.audit_sampler.config import Settings
from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.handlers import ManualCompensationHandler
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import encode_envelope, make_envelope, validate_payload
from shared.db import make_engine
from shared.kafka import ConsumerRunner, Delivered, EventProducer

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)  # a Wednesday


def manual(cid: str, *, amount: int = 1000, agent: str = "A1", buyer: str | None = None,
           reason: str = "damaged", region: str = "US", currency: str = "USD",
           at: datetime = NOW) -> Envelope:
    payload = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id=f"T-{cid}", order_id=f"O-{cid}", buyer_id=buyer or f"B-{cid}",
        seller_id="S1", agent_id=agent, team="team-1", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=amount, currency=currency),
        order_amount=ev.PositiveMoney(amount_minor=100_000, currency=currency), reason_code=reason,
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S1"),
                                     amount_minor=amount)])
    return make_envelope("compensation.manual_issued", payload, source="test", region=region, occurred_at=at)


def write_policies(folder: Path, **us: object) -> PolicySet:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"seed": "integration-seed-1", "baseline_rate": 0.2, "agent_weekly_minimum": 0}
    (folder / "default.yaml").write_text(yaml.safe_dump({**base, "region": "default"}))
    (folder / "us.yaml").write_text(yaml.safe_dump({**base, "region": "US", **us}))
    return PolicySet.load(folder)


@pytest.fixture(scope="module")
async def engine(audit_database):
    eng = make_engine(audit_database, "audit_sampler")
    yield eng
    await eng.dispose()


@pytest.fixture
def settings(fresh_database, kafka_bootstrap) -> Settings:
    return Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                    consumer_poll_timeout_ms=50)


async def consume(settings, engine, policies, envelopes, topic, group) -> ConsumerRunner:
    producer = EventProducer(settings, "audit-test")
    await producer.start()
    try:
        for env in envelopes:
            await producer.send(topic, encode_envelope(env), env.payload["buyer_id"].encode())
        await producer.producer.flush()
    finally:
        await producer.stop()
    runner = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic],
                            handler=ManualCompensationHandler(lambda: policies, lambda: NOW))
    await runner.start()
    try:
        await runner.run_until_idle(idle_seconds=1.0, timeout=60)
    finally:
        await runner.stop()
    return runner


async def apply(engine, policies, envelopes) -> None:
    """Hand a batch straight to the handler in one transaction, as the runner does (no broker needed)."""
    handler = ManualCompensationHandler(lambda: policies, lambda: NOW)
    async with engine.begin() as conn:
        await handler(conn, [Delivered(env, validate_payload(env), "manual", 0, i, None, 0)
                             for i, env in enumerate(envelopes)])


async def scalar(engine, sql: str, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def test_every_compensation_is_recorded_and_the_sample_is_queued(engine, settings, make_topics, tmp_path):
    (topic,) = await make_topics("manual")
    policies = write_policies(tmp_path / "p", always_audit_above={"USD": 50_000},
                              risk_boosts={"error_prone_reasons": {"codes": ["quality_issue"], "multiplier": 3}})
    n = 600
    envelopes = [manual(f"q1-{i}", reason="quality_issue" if i % 3 == 0 else "damaged",
                        amount=60_000 if i % 50 == 0 else 1000, agent=f"A{i % 7}") for i in range(n)]
    await consume(settings, engine, policies, envelopes, topic, f"g-{topic}")
    assert await scalar(engine, "SELECT count(*) FROM population WHERE compensation_id LIKE 'q1-%'") == n
    sampled = await scalar(engine, "SELECT count(*) FROM population WHERE compensation_id LIKE 'q1-%' "
                                   "AND sampled")
    items = await scalar(engine, "SELECT count(*) FROM audit_items WHERE compensation_id LIKE 'q1-%'")
    assert sampled == items > 0
    # every amount above the threshold is in the top queue with probability 1
    assert await scalar(engine, "SELECT count(*) FROM audit_items WHERE compensation_id LIKE 'q1-%' "
                                "AND mandatory AND queue = 'high' AND inclusion_probability = 1") == n // 50
    # stored probabilities and reasons explain each pick; the Horvitz-Thompson count recovers n
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT inclusion_probability, reasons, draw, sampled FROM population "
            "WHERE compensation_id LIKE 'q1-%'"))).all()
    assert all(r.sampled == (r.draw < r.inclusion_probability) for r in rows)
    assert {tuple(r.reasons) for r in rows} >= {("baseline",), ("baseline", "error_prone_reason"),
                                                ("amount_threshold",)}
    estimate = sum(1 / r.inclusion_probability for r in rows if r.sampled)
    variance = sum((1 - r.inclusion_probability) / r.inclusion_probability ** 2 for r in rows if r.sampled)
    assert abs(estimate - n) < 4 * math.sqrt(variance) + 1
    agents = await scalar(engine, "SELECT sum(compensations_seen) FROM agents WHERE agent_id LIKE 'A%'")
    assert agents >= n


async def test_replay_under_new_event_ids_changes_nothing(engine, settings, make_topics, tmp_path):
    (topic,) = await make_topics("manual")
    policies = write_policies(tmp_path / "p", baseline_rate=0.5)
    first = [manual(f"q2-{i}") for i in range(40)]
    await consume(settings, engine, policies, first, topic, f"g1-{topic}")
    before = await scalar(engine, "SELECT string_agg(compensation_id || sampled::text, ',' ORDER BY 1) "
                                  "FROM population WHERE compensation_id LIKE 'q2-%'")
    # the upstream re-sent everything with fresh event ids, and a new consumer group read it all again
    again = [manual(f"q2-{i}") for i in range(40)]
    await consume(settings, engine, policies, first + again, topic, f"g2-{topic}")
    after = await scalar(engine, "SELECT string_agg(compensation_id || sampled::text, ',' ORDER BY 1) "
                                 "FROM population WHERE compensation_id LIKE 'q2-%'")
    assert before == after
    assert await scalar(engine, "SELECT count(*) FROM audit_items WHERE compensation_id LIKE 'q2-%'") == \
        await scalar(engine, "SELECT count(*) FROM population WHERE compensation_id LIKE 'q2-%' AND sampled")


async def test_capacity_keeps_the_highest_risk_and_records_drops(engine, tmp_path):
    policies = write_policies(
        tmp_path / "p", baseline_rate=1.0, always_audit_above={"USD": 90_000},
        risk_boosts={"error_prone_reasons": {"codes": ["quality_issue"], "multiplier": 2}},
        queues={"normal": {"sla_hours": 48, "daily_capacity": 10, "min_risk": 0}})
    day = NOW + timedelta(days=30)  # a queue-day of its own: capacity counts per region, queue and day
    low = [manual(f"q3-low-{i}", reason="damaged", at=day) for i in range(12)]
    high = [manual(f"q3-high-{i}", reason="quality_issue", at=day) for i in range(6)]
    mandatory = [manual(f"q3-big-{i}", amount=95_000, at=day) for i in range(3)]
    # two deliveries: the high-risk ones arrive later and push out queued low-risk items
    await apply(engine, policies, low)
    await apply(engine, policies, high + mandatory)
    queued = await scalar(engine, "SELECT count(*) FROM audit_items WHERE compensation_id LIKE 'q3-%' "
                                  "AND status <> 'dropped' AND NOT mandatory")
    assert queued == 10
    assert await scalar(engine, "SELECT count(*) FROM audit_items WHERE compensation_id LIKE 'q3-high-%' "
                                "AND status = 'queued'") == 6
    assert await scalar(engine, "SELECT count(*) FROM audit_items WHERE compensation_id LIKE 'q3-big-%'") == 3
    assert await scalar(engine, "SELECT count(*) FROM capacity_drops WHERE compensation_id LIKE 'q3-%'") == 8
    assert await scalar(engine, "SELECT count(*) FROM population WHERE compensation_id LIKE 'q3-low-%' "
                                "AND capacity_dropped AND NOT sampled") == 8
    # kept low-risk items carry the kept share of the day's droppable selection: 10 of 18
    effective = await scalar(engine, "SELECT array_agg(DISTINCT round(effective_probability::numeric, 6)) "
                                     "FROM population WHERE compensation_id LIKE 'q3-%' AND NOT mandatory "
                                     "AND sampled")
    assert [float(e) for e in effective] == [round(10 / 18, 6)]
    assert await scalar(engine, "SELECT selected || '/' || kept FROM queue_days WHERE local_day = :d",
                        d=day.date()) == "18/10"
    assert await scalar(engine, "SELECT min(effective_probability) FROM population "
                                "WHERE compensation_id LIKE 'q3-big-%'") == 1.0


async def test_weekly_minimum_and_week_cut_in_region_time(engine, tmp_path):
    policies = write_policies(tmp_path / "p", baseline_rate=0.0001, agent_weekly_minimum=2)
    # 2026-11-23 02:00 UTC is still Sunday 22 Nov in New York: the same week as Wednesday the 18th
    times = [NOW, NOW + timedelta(hours=1), NOW + timedelta(hours=2), datetime(2026, 11, 23, 2, tzinfo=UTC),
             datetime(2026, 11, 23, 6, tzinfo=UTC)]  # 01:00 Monday in New York: a new week
    envelopes = [manual(f"q4-{i}", agent="weekly-agent", at=t) for i, t in enumerate(times)]
    await apply(engine, policies, envelopes[:2])
    await apply(engine, policies, envelopes[2:])
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT compensation_id, sampled, reasons[1] AS why, local_day FROM population "
            "WHERE compensation_id LIKE 'q4-%' ORDER BY compensation_id"))).all()
    assert [r.sampled for r in rows] == [True, True, False, False, True]
    assert rows[0].why == "agent_weekly_minimum" and rows[4].why == "agent_weekly_minimum"
    assert str(rows[3].local_day) == "2026-11-22"
