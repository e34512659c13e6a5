"""Claims with leases on the real PostgreSQL: no double claims, lease expiry, release, reassignment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from sqlalchemy import text

from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.domain.verdicts import ATTRIBUTES, VerdictInput
from services.audit_sampler.handlers import ManualCompensationHandler
from services.audit_sampler.operations import claims, verdicts
from services.audit_sampler.operations.errors import AuditError
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.problems import problem_for
from shared.auth import Principal
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope, validate_payload
from shared.db import make_engine
from shared.kafka import Delivered

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
ALL_OK = dict.fromkeys(ATTRIBUTES, True)


def auditor(name: str, *roles: str, regions: tuple[str, ...] = ("US",)) -> Principal:
    return Principal(subject=name, kind="token", roles=frozenset(roles or ("auditor",)),
                     regions=frozenset(regions))


@pytest.fixture(scope="module")
async def env(audit_database, tmp_path_factory):
    engine = make_engine(audit_database, "audit_sampler", pool_size=25)
    folder = tmp_path_factory.mktemp("policies")
    base = {"seed": "claims-seed-0001", "baseline_rate": 1.0, "lease_seconds": 600, "agent_weekly_minimum": 0}
    (folder / "default.yaml").write_text(yaml.safe_dump({**base, "region": "default"}))
    policies = PolicySet.load(folder)
    runtime = Runtime(policies)
    handler = ManualCompensationHandler(lambda: policies, lambda: NOW)
    yield engine, runtime, handler
    await engine.dispose()


async def enqueue(env, prefix: str, n: int, region: str = "US", agent: str = "agent-1") -> None:
    engine, _, handler = env
    currency = {"US": "USD", "GB": "GBP", "SG": "SGD"}[region]
    envelopes = []
    for i in range(n):
        payload = ev.ManualCompensationIssued(
            compensation_id=f"{prefix}-{i}", ticket_id=f"T{i}", order_id=f"O{i}", buyer_id=f"B{prefix}{i}",
            agent_id=agent, team="team-1", kind=ev.CompensationKind.VOUCHER,
            amount=ev.PositiveMoney(amount_minor=500, currency=currency), reason_code="damaged",
            liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=500)])
        envelopes.append(make_envelope("compensation.manual_issued", payload, source="test", region=region,
                                       occurred_at=NOW))
    async with engine.begin() as conn:
        await handler(conn, [Delivered(e, validate_payload(e), "manual", 0, i, None, 0)
                             for i, e in enumerate(envelopes)])


async def test_twenty_concurrent_claimers_never_share_an_item(env):
    engine, runtime, _ = env
    await enqueue(env, "race", 30)
    claimers = [auditor(f"aud-{i}") for i in range(20)]

    async def claim_all(p: Principal) -> list[int]:
        got = []
        while (item := await claims.claim_next(engine, p, "US", runtime=runtime, now=NOW)) is not None:
            got.append(item["id"])
            await verdicts.submit_verdict(engine, p, item["id"], VerdictInput(ALL_OK, True), runtime=runtime,
                                          now=NOW)
        return got

    results = await asyncio.gather(*(claim_all(p) for p in claimers))
    claimed = [i for r in results for i in r]
    assert len(claimed) == len(set(claimed)) == 30


async def test_a_claim_is_exclusive_and_a_lapsed_lease_returns_the_item(env):
    engine, runtime, _ = env
    await enqueue(env, "lease", 1, region="GB")
    alice, bob = auditor("alice", regions=("GB",)), auditor("bob", regions=("GB",))
    item = await claims.claim_next(engine, alice, "GB", runtime=runtime, now=NOW)
    assert item is not None and item["claimed_by"] == "alice"
    assert item["item_kind"] == "audit"  # auditors never see whether an item is gold or a re-audit
    # claiming again gives alice the item she already holds; bob finds nothing
    assert (await claims.claim_next(engine, alice, "GB", runtime=runtime, now=NOW))["id"] == item["id"]
    assert await claims.claim_next(engine, bob, "GB", runtime=runtime, now=NOW + timedelta(seconds=599)) is None
    # claiming again renews alice's lease
    renewed = await claims.claim_next(engine, alice, "GB", runtime=runtime, now=NOW + timedelta(seconds=100))
    assert renewed["id"] == item["id"] and renewed["lease_expires_at"] == NOW + timedelta(seconds=700)
    assert await claims.claim_next(engine, bob, "GB", runtime=runtime, now=NOW + timedelta(seconds=650)) is None
    # the lease lapses: the item returns to the queue and bob gets it
    later = NOW + timedelta(seconds=701)
    overview = {q["queue"]: q for q in await claims.queue_overview(engine, bob, "GB", runtime=runtime,
                                                                      now=later)}
    assert overview["normal"]["waiting"] == 1 and overview["normal"]["claimed"] == 0
    assert overview["high"]["waiting"] == 0  # empty queues are listed too
    taken = await claims.claim_next(engine, bob, "GB", runtime=runtime, now=later)
    assert taken is not None and taken["id"] == item["id"] and taken["claimed_by"] == "bob"
    # alice's stale lease no longer lets her release it
    with pytest.raises(AuditError) as info:
        await claims.release_item(engine, alice, item["id"])
    assert problem_for(info.value).status == 403
    released = await claims.release_item(engine, bob, item["id"])
    assert released["status"] == "queued" and released["claimed_by"] is None


async def test_leads_reassign_and_auditors_cannot(env):
    engine, runtime, _ = env
    await enqueue(env, "reassign", 1, agent="agent-9")
    lead = auditor("lead-1", "lead")
    carol, dave = auditor("carol"), auditor("dave")
    item = await claims.claim_next(engine, carol, "US", runtime=runtime, now=NOW + timedelta(days=1))
    assert item is not None
    with pytest.raises(AuditError) as info:
        await claims.reassign_item(engine, carol, item["id"], "dave", runtime=runtime)
    assert problem_for(info.value).status == 403
    moved = await claims.reassign_item(engine, lead, item["id"], "dave", runtime=runtime, now=NOW)
    assert moved["claimed_by"] == "dave" and moved["assigned_to"] == "dave"
    assert moved["item_kind"] == "sample"  # a lead sees what kind of item it is
    # reserved for dave: even after the lease lapses, nobody else gets it
    late = NOW + timedelta(days=2)
    await claims.release_item(engine, lead, item["id"])
    with pytest.raises(AuditError) as info:
        await claims.reassign_item(engine, lead, item["id"], "agent-9", runtime=runtime)
    assert problem_for(info.value).status == 409  # an agent never audits their own compensation
    await claims.reassign_item(engine, lead, item["id"], "dave", runtime=runtime, now=NOW)
    other = await claims.claim_next(engine, carol, "US", runtime=runtime, now=late)
    assert other is None or other["id"] != item["id"]
    mine = await claims.claim_next(engine, dave, "US", runtime=runtime, now=late)
    assert mine is not None and mine["id"] == item["id"] and mine["claimed_by"] == "dave"


async def test_claims_outside_granted_regions_or_roles_are_refused(env):
    engine, runtime, _ = env
    with pytest.raises(AuditError) as info:
        await claims.claim_next(engine, auditor("us-only"), "GB", runtime=runtime)
    assert problem_for(info.value).status == 403
    with pytest.raises(AuditError) as info:
        await claims.claim_next(engine, auditor("fin", "finance"), "US", runtime=runtime)
    assert problem_for(info.value).status == 403
    with pytest.raises(AuditError) as info:
        await claims.claim_next(engine, auditor("x", regions=("*",)), "ZZ", runtime=runtime)
    assert problem_for(info.value).status == 404


async def test_blind_re_audit_pairs_verdicts_and_agent_results_switch_sampling(env, tmp_path):
    engine, _, _ = env
    base = {"seed": "claims-seed-0001", "baseline_rate": 1.0, "agent_weekly_minimum": 0, "calibration_share": 1.0}
    (tmp_path / "default.yaml").write_text(yaml.safe_dump({**base, "region": "default"}))
    runtime = Runtime(PolicySet.load(tmp_path))
    await enqueue(env, "calib", 2, region="SG", agent="agent-calib")
    first, second = auditor("first", regions=("SG",)), auditor("second", regions=("SG",))
    failed = {**ALL_OK, "evidence_sufficient": False}
    originals = []
    for _ in range(2):
        item = await claims.claim_next(engine, first, "SG", runtime=runtime, now=NOW)
        assert item is not None and item["compensation_id"].startswith("calib")
        originals.append(await verdicts.submit_verdict(engine, first, item["id"], VerdictInput(
            failed, False, "missing_evidence"), runtime=runtime))
    # the re-audits exist, but never for the auditor who gave the first verdict
    assert await claims.claim_next(engine, first, "SG", runtime=runtime, now=NOW) is None
    for _ in range(2):
        again = await claims.claim_next(engine, second, "SG", runtime=runtime, now=NOW)
        assert again is not None and again["item_kind"] == "audit" and "parent_item_id" not in again
        # blind: neither the item page nor the agent's history shows the first verdict
        seen_by_second = await claims.get_item(engine, second, again["id"])
        assert seen_by_second["verdict"] is None
        assert again["compensation_id"] not in {h["compensation_id"] for h in seen_by_second["agent_history"]}
        with pytest.raises(AuditError) as info:
            await claims.get_item(engine, first, again["id"])
        assert problem_for(info.value).status == 403
        await verdicts.submit_verdict(engine, second, again["id"], VerdictInput(ALL_OK, True), runtime=runtime)
    async with engine.connect() as conn:
        pairs = (await conn.execute(text(
            "SELECT primary_auditor, second_auditor FROM calibration_pairs WHERE region = 'SG'"))).all()
        agent = (await conn.execute(text(
            "SELECT sampling_state, recent_results FROM agents WHERE agent_id = 'agent-calib'"))).one()
    assert [tuple(p) for p in pairs] == [("first", "second")] * 2
    # the re-audits do not count twice against the agent; two failures in five switch to tightened
    assert agent.recent_results == [False, False] and agent.sampling_state == "tightened"
    lead = auditor("lead-sg", "lead", regions=("SG",))
    detail = await claims.get_item(engine, lead, originals[0]["item_id"])
    assert detail["agent_state"] == "tightened" and len(detail["agent_history"]) == 2
