"""Queue capacity under concurrent consumers, on the real PostgreSQL: several transactions route
compensations into the same queue-day at once; the daily capacity holds and every overflow is a
recorded capacity drop (nothing lost)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from sqlalchemy import text

from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.handlers import ManualCompensationHandler
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import make_envelope, validate_payload
from shared.db import make_engine
from shared.kafka import Delivered

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
CAPACITY = 10


@pytest.fixture(scope="module")
async def engine(audit_database):
    eng = make_engine(audit_database, "audit_sampler", pool_size=12)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> PolicySet:
    folder = tmp_path_factory.mktemp("policies")
    # Everything is sampled into one capped queue; quality issues carry twice the risk of the rest.
    (folder / "default.yaml").write_text(yaml.safe_dump({
        "region": "default", "seed": "capacity-race-1", "baseline_rate": 1.0, "agent_weekly_minimum": 0,
        "risk_boosts": {"error_prone_reasons": {"codes": ["quality_issue"], "multiplier": 2}},
        "queues": {"normal": {"sla_hours": 48, "daily_capacity": CAPACITY, "min_risk": 0}}}))
    return PolicySet.load(folder)


def manual(cid: str, at: datetime, reason: str, agent: str | None = None) -> Envelope:
    payload = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id=f"T-{cid}", order_id=f"O-{cid}", buyer_id=f"B-{cid}", seller_id="S1",
        agent_id=agent or f"A-{cid}", team="team-1", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=1_000, currency="USD"),
        order_amount=ev.PositiveMoney(amount_minor=100_000, currency="USD"), reason_code=reason,
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S1"), amount_minor=1_000)])
    return make_envelope("compensation.manual_issued", payload, source="test", region="US", occurred_at=at)


async def consume(engine, policies: PolicySet, envelopes: list[Envelope], partition: int) -> None:
    """One consumer's batch in its own transaction, as the runner hands it over."""
    handler = ManualCompensationHandler(lambda: policies, lambda: NOW)
    async with engine.begin() as conn:
        await handler(conn, [Delivered(e, validate_payload(e), "manual", partition, i, None, 0)
                             for i, e in enumerate(envelopes)])


def serialization_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) == "40001":
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


async def consume_with_retries(engine, policies: PolicySet, envelopes: list[Envelope], partition: int) -> int:
    """As the consumer runner does: a batch that fails with a serialization failure is run again."""
    for attempt in range(5):
        try:
            await consume(engine, policies, envelopes, partition)
            return attempt
        except Exception as exc:
            if not serialization_failure(exc):
                raise
    raise AssertionError("still failing after 5 attempts")


async def scalar(engine, sql: str, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def test_parallel_consumers_never_exceed_a_queue_days_capacity(engine, policies):
    rng = random.Random(7)
    for round_ in range(6):
        day = NOW + timedelta(days=round_)  # each round fills a queue-day of its own
        prefix = f"race{round_}-"
        comps = [manual(f"{prefix}{i}", day, "quality_issue" if rng.random() < 0.25 else "damaged")
                 for i in range(36)]
        high = sum(1 for c in comps if c.payload["reason_code"] == "quality_issue")
        # six consumers (partitions) route six compensations each, all at the same moment
        await asyncio.gather(*(consume(engine, policies, comps[p::6], p) for p in range(6)))

        like = {"p": prefix + "%"}
        open_items = await scalar(engine, "SELECT count(*) FROM audit_items WHERE compensation_id LIKE :p "
                                          "AND status <> 'dropped'", **like)
        assert open_items == CAPACITY, f"round {round_}: {open_items} open items in a queue of {CAPACITY}"
        # nothing lost: every compensation is in the population, and every one sampled but not queued is a
        # recorded capacity drop (dropped on arrival, or evicted by a higher-risk one)
        assert await scalar(engine, "SELECT count(*) FROM population WHERE compensation_id LIKE :p", **like) == 36
        assert await scalar(engine, "SELECT count(*) FROM population WHERE compensation_id LIKE :p "
                                    "AND sampled", **like) == CAPACITY
        assert await scalar(engine, "SELECT count(*) FROM population WHERE compensation_id LIKE :p "
                                    "AND capacity_dropped AND NOT sampled", **like) == 36 - CAPACITY
        assert await scalar(engine, "SELECT count(*) FROM capacity_drops WHERE compensation_id LIKE :p",
                            **like) == 36 - CAPACITY
        # the documented admission: the highest-risk ones keep the places
        assert await scalar(engine, "SELECT count(*) FROM audit_items i JOIN population p USING (compensation_id) "
                                    "WHERE i.compensation_id LIKE :p AND i.status = 'queued' "
                                    "AND p.reason_code = 'quality_issue'", **like) == min(high, CAPACITY)
        # and the estimator's bookkeeping saw every selection exactly once
        assert await scalar(engine, "SELECT selected || '/' || kept FROM queue_days WHERE local_day = :d",
                            d=day.date()) == f"36/{CAPACITY}"


async def test_a_compensation_replayed_on_two_partitions_at_once_is_counted_once(engine, policies):
    """The upstream re-sent compensations under new event ids and the copies landed on another partition:
    two consumers decide the same compensations at the same moment. Only one may count them (agents'
    counts, the queue-day's selection); the other's batch is retried and finds them known."""
    retried = 0
    for round_ in range(6):
        day = NOW + timedelta(days=20 + round_)
        prefix, agent = f"dup{round_}-", f"A-dup-{round_}"
        first = [manual(f"{prefix}{i}", day, "damaged", agent) for i in range(6)]
        copies = [manual(f"{prefix}{i}", day, "damaged", agent) for i in range(6)]  # new event ids
        attempts = await asyncio.gather(consume_with_retries(engine, policies, first, 0),
                                        consume_with_retries(engine, policies, copies, 1))
        retried += sum(attempts)
        like = {"p": prefix + "%"}
        assert await scalar(engine, "SELECT count(*) FROM population WHERE compensation_id LIKE :p", **like) == 6
        assert await scalar(engine, "SELECT count(*) FROM audit_items WHERE compensation_id LIKE :p", **like) == 6
        assert await scalar(engine, "SELECT compensations_seen || '/' || sampled_this_week FROM agents "
                                    "WHERE agent_id = :a", a=agent) == "6/6", f"round {round_}"
        assert await scalar(engine, "SELECT selected || '/' || kept FROM queue_days WHERE local_day = :d",
                            d=day.date()) == "6/6", f"round {round_}"
    assert retried >= 1  # the race did happen (and was resolved by a retry)
