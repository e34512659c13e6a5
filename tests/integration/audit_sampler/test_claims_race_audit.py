"""An auditor's concurrent claims on the real PostgreSQL: they never lease a second item; what they do
not take stays queued for others."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from sqlalchemy import text

from services.audit_sampler import persistence as db
from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.handlers import ManualCompensationHandler
from services.audit_sampler.operations import claims
from services.audit_sampler.operations.runtime import Runtime
from shared.auth import Principal
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope, validate_payload
from shared.db import make_engine
from shared.kafka import Delivered

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)


def auditor(name: str, region: str = "US") -> Principal:
    return Principal(subject=name, kind="token", roles=frozenset({"auditor"}), regions=frozenset({region}))


@pytest.fixture(scope="module")
async def env(audit_database, tmp_path_factory):
    engine = make_engine(audit_database, "audit_sampler", pool_size=25)
    folder = tmp_path_factory.mktemp("policies")
    # everything is sampled; quality issues (risk 2) go to the high queue, the rest to normal
    (folder / "default.yaml").write_text(yaml.safe_dump({
        "region": "default", "seed": "claims-race-1", "baseline_rate": 1.0, "agent_weekly_minimum": 0,
        "lease_seconds": 600,
        "risk_boosts": {"error_prone_reasons": {"codes": ["quality_issue"], "multiplier": 2}},
        "queues": {"high": {"sla_hours": 24, "daily_capacity": None, "min_risk": 2},
                   "normal": {"sla_hours": 72, "daily_capacity": None, "min_risk": 0}}}))
    policies = PolicySet.load(folder)
    yield engine, Runtime(policies), ManualCompensationHandler(lambda: policies, lambda: NOW)
    await engine.dispose()


async def enqueue(env, prefix: str, n: int, reason: str = "damaged", region: str = "US") -> None:
    engine, _, handler = env
    envelopes = []
    for i in range(n):
        payload = ev.ManualCompensationIssued(
            compensation_id=f"{prefix}-{i}", ticket_id=f"T{i}", order_id=f"O{i}", buyer_id=f"B{prefix}{i}",
            agent_id="agent-1", team="team-1", kind=ev.CompensationKind.VOUCHER,
            amount=ev.PositiveMoney(amount_minor=500, currency={"US": "USD", "GB": "GBP"}[region]),
            reason_code=reason,
            liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=500)])
        envelopes.append(make_envelope("compensation.manual_issued", payload, source="test", region=region,
                                       occurred_at=NOW))
    async with engine.begin() as conn:
        await handler(conn, [Delivered(e, validate_payload(e), "manual", 0, i, None, 0)
                             for i, e in enumerate(envelopes)])


async def held_by(engine, who: str) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(
            "SELECT id FROM audit_items WHERE status = 'claimed' AND claimed_by = :a ORDER BY id"),
            {"a": who})).scalars())


async def test_concurrent_claims_of_one_auditor_lease_one_item(env):
    engine, runtime, _ = env
    await enqueue(env, "dup", 12)
    for round_ in range(5):
        who = auditor(f"clicker-{round_}")
        got = await asyncio.gather(*(claims.claim_next(engine, who, "US", runtime=runtime, now=NOW)
                                     for _ in range(8)))
        ids = {g["id"] for g in got if g is not None}
        assert len(ids) == 1, f"round {round_}: one auditor leased {sorted(ids)}"
        assert await held_by(engine, who.subject) == sorted(ids)
    # the overflow stays in the queue for the others: 5 leased, 7 still waiting
    async with engine.connect() as conn:
        waiting = (await conn.execute(text(
            "SELECT count(*) FROM audit_items WHERE compensation_id LIKE 'dup-%' AND status = 'queued'"))).scalar()
    assert waiting == 7


async def test_claiming_a_named_queue_returns_the_item_held_there(env):
    engine, runtime, _ = env
    await enqueue(env, "hq", 2, reason="quality_issue")
    await enqueue(env, "nq", 3)
    who = auditor("two-queues")
    high = await claims.claim_next(engine, who, "US", "high", runtime=runtime, now=NOW)
    normal = await claims.claim_next(engine, who, "US", "normal", runtime=runtime, now=NOW)
    assert high["queue"] == "high" and normal["queue"] == "normal"
    # asking again for either queue gives back the item held there (lease renewed), not a third one
    later = NOW + timedelta(seconds=60)
    again = await asyncio.gather(*(claims.claim_next(engine, who, "US", q, runtime=runtime, now=later)
                                   for q in ("normal", "high", "normal", "high")))
    assert [a["id"] for a in again] == [normal["id"], high["id"], normal["id"], high["id"]]
    assert all(a["lease_expires_at"] == later + timedelta(seconds=600) for a in again)
    assert await held_by(engine, who.subject) == sorted([high["id"], normal["id"]])


async def test_a_lease_taken_over_between_read_and_renewal_is_not_renewed(env):
    """The renewal is conditional on the auditor still holding the item: here bob takes the lapsed item
    after alice's claim read it as hers and before her renewal; she must not get it back."""
    engine, runtime, _ = env
    await enqueue(env, "lapse", 1, reason="quality_issue", region="GB")  # a region of its own
    alice, bob = auditor("alice-lapse", "GB"), auditor("bob-lapse", "GB")
    start = NOW + timedelta(days=1)
    first = await claims.claim_next(engine, alice, "GB", "high", runtime=runtime, now=start)
    assert first is not None and first["compensation_id"] == "lapse-0"
    async with engine.begin() as conn:
        await db.lock_auditor(conn, "GB", "alice-lapse")
        held = await db.held_item(conn, "GB", "alice-lapse", start + timedelta(seconds=599), "high")
        assert held is not None and held["id"] == first["id"]
        taken = await claims.claim_next(engine, bob, "GB", "high", runtime=runtime,
                                          now=start + timedelta(seconds=601))
        assert taken["id"] == first["id"] and taken["claimed_by"] == "bob-lapse"
        assert await db.renew_lease(conn, held["id"], "alice-lapse", start + timedelta(seconds=1200)) is None
    assert await held_by(engine, "bob-lapse") == [first["id"]]
    assert await held_by(engine, "alice-lapse") == []
