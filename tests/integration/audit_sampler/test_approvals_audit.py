"""The approval stage on the real PostgreSQL (issue 14): requests judged against the authority limits (within
at once, above into the queue), the daily total and buyer window cut in the region's local days, a 0-decimal
currency, parallel consumers racing one agent's daily limit, approvers' decisions with reasons and region
grants, SLA escalation, and issued-vs-approved mismatches of each kind becoming flagged audit items."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import yaml
from sqlalchemy import text

from services.audit_sampler.domain.authority import LimitsSet
from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.handlers import ManualCompensationHandler, RequestHandler
from services.audit_sampler.operations import approvals, claims
from services.audit_sampler.operations.errors import AuditError
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.problems import problem_for
from shared.auth import Principal
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import make_envelope, validate_payload
from shared.db import make_engine
from shared.kafka import Delivered
from shared.outbox import decode_headers

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)  # 11:00 in Singapore
CURRENCY = {"SG": "SGD", "GB": "GBP", "ID": "IDR"}


@pytest.fixture(scope="module")
async def engine(audit_database):
    eng = make_engine(audit_database, "audit_sampler", pool_size=12)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> PolicySet:
    folder = tmp_path_factory.mktemp("policies")
    # Nothing is sampled by chance: every audit item here exists because a check flagged it.
    (folder / "default.yaml").write_text(yaml.safe_dump({
        "region": "default", "seed": "approvals-test-1", "baseline_rate": 0.0, "agent_weekly_minimum": 0}))
    return PolicySet.load(folder)


@pytest.fixture(scope="module")
def limits(tmp_path_factory, policies) -> LimitsSet:
    folder = tmp_path_factory.mktemp("limits")
    rule = {"name": "agents", "max_single": 3000, "daily_total_per_agent": 10000, "buyer_window_total": 6000}
    (folder / "sg.yaml").write_text(yaml.safe_dump({
        "region": "SG", "currency": "SGD", "buyer_window_days": 7, "approval_sla_hours": 4,
        "escalation_sla_hours": 8, "request_required_above": 1000, "rules": [rule]}))
    (folder / "gb.yaml").write_text(yaml.safe_dump({
        "region": "GB", "currency": "GBP", "rules": [rule]}))
    (folder / "id.yaml").write_text(yaml.safe_dump({
        "region": "ID", "currency": "IDR", "rules": [
            {"name": "agents", "max_single": 150000, "daily_total_per_agent": 300000,
             "buyer_window_total": 10 ** 7}]}))
    return LimitsSet.load(folder)


def request(rid: str, amount: int, *, at: datetime = NOW, agent: str = "A-1", buyer: str | None = None,
            region: str = "SG", reason: str = "late_delivery") -> Envelope:
    payload = ev.CompensationRequested(
        request_id=rid, ticket_id=f"T-{rid}", order_id=f"O-{rid}", buyer_id=buyer or f"B-{rid}", agent_id=agent,
        team="sg-tier1", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=amount, currency=CURRENCY[region]), reason_code=reason,
        note="parcel four days late",
        case=ev.CaseSnapshot(ticket_reason=ev.TicketReason.LATE_DELIVERY, carrier_id="C-ninja",
                             promised_delivery_at=at - timedelta(days=5), delivered_at=at - timedelta(days=1)))
    return make_envelope("compensation.requested", payload, source="cs-tool", region=region, occurred_at=at)


def manual(cid: str, amount: int, *, request_id: str | None, buyer: str, at: datetime = NOW,
           region: str = "SG") -> Envelope:
    currency = CURRENCY[region]
    payload = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id=f"T-{cid}", order_id=f"O-{cid}", buyer_id=buyer, agent_id="A-9",
        team="sg-tier1", kind=ev.CompensationKind.VOUCHER, amount=ev.PositiveMoney(amount_minor=amount,
                                                                                   currency=currency),
        reason_code="late_delivery", request_id=request_id,
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=amount)],
        case=ev.CaseSnapshot(ticket_reason=ev.TicketReason.LATE_DELIVERY, carrier_id="C-ninja",
                             promised_delivery_at=at - timedelta(days=5), delivered_at=at - timedelta(days=1)))
    return make_envelope("compensation.manual_issued", payload, source="cs-tool", region=region, occurred_at=at)


def delivered(envelopes: list[Envelope], partition: int = 0) -> list[Delivered]:
    return [Delivered(e, validate_payload(e), "t", partition, i, None, 0) for i, e in enumerate(envelopes)]


async def consume_requests(engine, limits, policies, envelopes, partition: int = 0, now: datetime = NOW) -> None:
    handler = RequestHandler(lambda: limits, lambda: policies, lambda: now)
    async with engine.begin() as conn:
        await handler(conn, delivered(envelopes, partition))


async def consume_manual(engine, limits, policies, envelopes) -> None:
    handler = ManualCompensationHandler(lambda: policies, lambda: NOW, lambda: limits)
    async with engine.begin() as conn:
        await handler(conn, delivered(envelopes))


async def row(engine, sql: str, **params) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).first()


async def outbox_events(engine, event_type: str, key: str) -> list[dict[str, Any]]:
    """Payloads of ``event_type`` in the outbox whose payload mentions ``key`` (a request or compensation)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT value, headers FROM outbox ORDER BY id"))).all()
    out = []
    for value, headers in rows:
        if dict(decode_headers(headers)).get("event_type") == event_type.encode():
            payload = orjson.loads(value)["payload"]
            if key in (payload.get("request_id"), payload.get("compensation_id")):
                out.append(payload)
    return out


def person(name: str, *roles: str, regions: tuple[str, ...] = ("SG",)) -> Principal:
    return Principal(subject=name, kind="token", roles=frozenset(roles), regions=frozenset(regions))


async def test_within_limits_is_approved_at_once_and_above_waits_with_its_reasons(engine, limits, policies):
    await consume_requests(engine, limits, policies, [request("RQ-w1", 3000), request("RQ-w2", 3001)])
    approved = await row(engine, "SELECT status, approved_amount_minor, automatic, decided_by FROM "
                                 "compensation_requests WHERE request_id = 'RQ-w1'")
    assert tuple(approved) == ("approved", 3000, True, "authority_limits")  # equal to the limit is within
    waiting = await row(engine, "SELECT status, exceeded, due_at FROM compensation_requests "
                                "WHERE request_id = 'RQ-w2'")
    assert waiting.status == "awaiting_approval" and waiting.exceeded == ["max_single"]
    assert waiting.due_at == NOW + timedelta(hours=4)
    (event,) = await outbox_events(engine, "compensation.request_decided", "RQ-w1")
    assert event["outcome"] == "approved" and event["approved_amount"]["amount_minor"] == 3000
    (event,) = await outbox_events(engine, "compensation.request_decided", "RQ-w2")
    assert event["outcome"] == "awaiting_approval" and "above the single limit 3000" in event["reason"]
    # A replay of the same request under a new event id changes nothing.
    await consume_requests(engine, limits, policies, [request("RQ-w1", 3000)])
    assert len(await outbox_events(engine, "compensation.request_decided", "RQ-w1")) == 1


async def test_the_agents_day_and_the_buyers_window_are_local_days(engine, limits, policies):
    # 15:59 and 16:01 UTC are two Singapore days (16:00 UTC is midnight there): each day has its own total.
    day_end = datetime(2026, 11, 20, 15, 59, tzinfo=UTC)
    next_day = datetime(2026, 11, 20, 16, 1, tzinfo=UTC)
    batch = [request(f"RQ-tz{i}", 2500, at=day_end, agent="A-tz") for i in range(4)]
    batch += [request(f"RQ-tz{i}", 2500, at=next_day, agent="A-tz") for i in range(4, 8)]
    await consume_requests(engine, limits, policies, batch, now=next_day)
    days = (await row(engine, "SELECT string_agg(local_day || ':' || status, ',' ORDER BY request_id) "
                              "FROM compensation_requests WHERE agent_id = 'A-tz'"))[0].split(",")
    assert days == ["2026-11-20:approved"] * 4 + ["2026-11-21:approved"] * 4  # 4 x 2500 = 10000: within
    # The buyer's 7-day window: 6000 approved within it, the next request is above; 7 local days later
    # the first approvals have left the window.
    buyer = [request(f"RQ-bw{i}", 3000, at=NOW, agent=f"A-bw{i}", buyer="B-window") for i in range(3)]
    await consume_requests(engine, limits, policies, buyer)
    statuses = (await row(engine, "SELECT array_agg(status ORDER BY request_id) FROM compensation_requests "
                                  "WHERE buyer_id = 'B-window'"))[0]
    assert statuses == ["approved", "approved", "awaiting_approval"]
    later = NOW + timedelta(days=7)
    await consume_requests(engine, limits, policies, [request("RQ-bw9", 3000, at=later, agent="A-bw9",
                                                              buyer="B-window")], now=later)
    assert (await row(engine, "SELECT status FROM compensation_requests WHERE request_id = 'RQ-bw9'"))[0] == \
        "approved"


async def test_a_zero_decimal_currency(engine, limits, policies):
    await consume_requests(engine, limits, policies, [
        request("RQ-id1", 150000, region="ID", agent="A-id"), request("RQ-id2", 150000, region="ID", agent="A-id"),
        request("RQ-id3", 1, region="ID", agent="A-id")])
    rows = (await row(engine, "SELECT array_agg(status || ':' || currency ORDER BY request_id) "
                              "FROM compensation_requests WHERE agent_id = 'A-id'"))[0]
    assert rows == ["approved:IDR", "approved:IDR", "awaiting_approval:IDR"]  # 300000 rupiah a day


async def test_parallel_consumers_racing_one_agents_daily_limit_never_both_pass(engine, limits, policies):
    """Six consumers (partitions: the requests are for different buyers) judge requests of one agent at
    the same moment, in six transactions: exactly as many fit as the daily limit allows, whatever the
    interleaving."""
    for round_ in range(5):
        at = NOW + timedelta(days=30 + round_)
        agent = f"A-race{round_}"
        reqs = [request(f"RQ-race{round_}-{i}", 3000, at=at, agent=agent) for i in range(12)]
        await asyncio.gather(*(consume_requests(engine, limits, policies, reqs[p::6], p, now=at)
                               for p in range(6)))
        total, approved = await row(engine, "SELECT coalesce(sum(approved_amount_minor), 0), count(*) FILTER "
                                            "(WHERE status = 'approved') FROM compensation_requests "
                                            "WHERE agent_id = :a", a=agent)
        assert total <= 10000, f"round {round_}: {total} approved against a daily limit of 10000"
        assert approved == 3  # 3 x 3000 fits, a fourth would not: the limit is used, never exceeded


async def test_approvers_decide_with_reasons_within_their_grants(engine, limits, policies):
    await consume_requests(engine, limits, policies, [
        request("RQ-d1", 5000), request("RQ-d2", 5000), request("RQ-d3", 5000, region="GB"),
        request("RQ-d4", 5000, agent="lee-sg")])
    lead = person("lee-sg", "lead")
    with pytest.raises(AuditError) as info:
        await approvals.decide(engine, lead, "RQ-d1", approve=True, reason="  ", now=NOW)
    assert problem_for(info.value).status == 422 and info.value.errors[0]["field"] == "reason"
    with pytest.raises(AuditError) as info:  # a lead of SG cannot approve a GB request
        await approvals.decide(engine, lead, "RQ-d3", approve=True, reason="ok", now=NOW)
    assert problem_for(info.value).status == 403
    with pytest.raises(AuditError) as info:  # nor their own
        await approvals.decide(engine, lead, "RQ-d4", approve=True, reason="ok", now=NOW)
    assert problem_for(info.value).status == 403
    with pytest.raises(AuditError) as info:  # an auditor is no approver
        await approvals.decide(engine, person("aud", "auditor"), "RQ-d1", approve=True, reason="ok", now=NOW)
    assert problem_for(info.value).status == 403
    with pytest.raises(AuditError) as info:
        await approvals.decide(engine, lead, "RQ-d1", approve=True, reason="too much", amount_minor=5001, now=NOW)
    assert problem_for(info.value).status == 422 and info.value.errors[0]["field"] == "amount"

    later = NOW + timedelta(minutes=30)
    await approvals.decide(engine, lead, "RQ-d1", approve=True, reason="damaged twice; goodwill",
                           amount_minor=4000, now=later)
    await approvals.decide(engine, lead, "RQ-d2", approve=False, reason="order already refunded", now=later)
    with pytest.raises(AuditError) as info:  # decided once
        await approvals.decide(engine, lead, "RQ-d2", approve=True, reason="changed my mind", now=later)
    assert problem_for(info.value).status == 409
    decided = await approvals.get_request(engine, lead, "RQ-d1")
    assert decided["status"] == "approved" and decided["approved_amount_minor"] == 4000
    assert [(s["action"], s["actor"]) for s in decided["trail"]] == [
        ("requested", "A-1"), ("queued", "authority_limits"), ("approved", "lee-sg")]
    assert decided["trail"][-1]["reason"] == "damaged twice; goodwill"
    events = await outbox_events(engine, "compensation.request_decided", "RQ-d2")
    assert [(e["outcome"], e["decided_by"], e["automatic"]) for e in events] == [
        ("awaiting_approval", "authority_limits", True), ("rejected", "lee-sg", False)]
    assert events[-1]["reason"] == "order already refunded"


async def test_overdue_requests_escalate_and_then_only_senior_auditors_decide(engine, limits, policies):
    await consume_requests(engine, limits, policies, [request("RQ-e1", 9000), request("RQ-e2", 9000)])
    lead, senior = person("lee", "lead"), person("sam", "senior_auditor")
    await approvals.escalate(engine, lead, "RQ-e2", reason="unusual amount for the reason",
                             runtime=Runtime(policies, limits=limits), now=NOW)
    await approvals.escalate_overdue(engine, NOW + timedelta(hours=3, minutes=59),
                                     runtime=Runtime(policies, limits=limits))
    assert (await approvals.get_request(engine, lead, "RQ-e1"))["status"] == "awaiting_approval"
    runtime = Runtime(policies, limits=limits)
    at_sla = await approvals.escalate_overdue(engine, NOW + timedelta(hours=4), runtime=runtime)
    assert at_sla >= 1  # RQ-e1 at its SLA
    e1 = await approvals.get_request(engine, lead, "RQ-e1")
    e2 = await approvals.get_request(engine, lead, "RQ-e2")
    assert [s["action"] for s in e2["trail"]] == ["requested", "queued", "escalated"]  # once, by the lead
    assert e1["status"] == "escalated" and e1["due_at"] == NOW + timedelta(hours=12)
    assert e1["trail"][-1]["actor"] == "approval_sla"
    with pytest.raises(AuditError) as info:
        await approvals.decide(engine, lead, "RQ-e1", approve=True, reason="fine", now=NOW + timedelta(hours=5))
    assert problem_for(info.value).status == 403
    await approvals.decide(engine, senior, "RQ-e1", approve=True, reason="fine", now=NOW + timedelta(hours=5))
    outcomes = [e["outcome"] for e in await outbox_events(engine, "compensation.request_decided", "RQ-e1")]
    assert outcomes == ["awaiting_approval", "escalated", "approved"]


async def flagged_item(engine, compensation_id: str):
    return await row(engine, "SELECT i.id, i.finding, i.mandatory, c.status, c.mismatches FROM issue_checks c "
                             "LEFT JOIN audit_items i ON i.compensation_id = c.compensation_id "
                             "AND i.item_kind = 'sample' WHERE c.compensation_id = :c", c=compensation_id)


@pytest.mark.parametrize(("kind", "amount", "buyer", "request_id", "finding"), [
    ("above_approved", 2001, "B-RQ-m1", "RQ-m1", "issued 20.01 SGD, request RQ-m1 approved 20.00 SGD"),
    ("other_buyer", 2000, "B-someone-else", "RQ-m1", "was for buyer B-RQ-m1"),
    ("no_request", 1001, "B-x", None, "without a request"),
    ("not_approved", 900, "B-RQ-m2", "RQ-m2", "awaiting approval"),
])
async def test_each_mismatch_becomes_a_flagged_audit_item(engine, limits, policies, kind, amount, buyer,
                                                          request_id, finding):
    await consume_requests(engine, limits, policies, [request("RQ-m1", 2000, agent="A-m"),
                                                      request("RQ-m2", 9000, agent="A-m")])
    cid = f"MC-{kind}"
    await consume_manual(engine, limits, policies, [manual(cid, amount, request_id=request_id, buyer=buyer)])
    item = await flagged_item(engine, cid)
    assert item.status == "flagged" and item.mismatches == [kind]
    assert item.id is not None and item.mandatory and finding in item.finding
    (event,) = await outbox_events(engine, "compensation.issue_flagged", cid)
    assert event["mismatches"] == [kind] and event["item_id"] == item.id


async def test_a_matching_issue_is_not_flagged(engine, limits, policies):
    await consume_requests(engine, limits, policies, [request("RQ-ok", 2000, agent="A-ok")])
    await consume_manual(engine, limits, policies, [
        manual("MC-ok", 2000, request_id="RQ-ok", buyer="B-RQ-ok"),
        manual("MC-small", 1000, request_id=None, buyer="B-small")])  # at the required-above amount: fine
    for cid in ("MC-ok", "MC-small"):
        item = await flagged_item(engine, cid)
        assert item.status == "ok" and item.id is None


async def test_an_issue_before_its_request_arrives_is_judged_when_it_does(engine, limits, policies):
    await consume_manual(engine, limits, policies, [manual("MC-early", 5000, request_id="RQ-late", buyer="B-RQ-late")])
    assert (await flagged_item(engine, "MC-early")).status == "awaiting_request"
    # The request arrives: above the single limit, it waits for an approver, so the issue came before approval.
    await consume_requests(engine, limits, policies, [request("RQ-late", 5000, agent="A-late")])
    item = await flagged_item(engine, "MC-early")
    assert item.status == "flagged" and item.mismatches == ["not_approved"] and item.id is not None
    population = await row(engine, "SELECT sampled, mandatory, inclusion_probability FROM population "
                                    "WHERE compensation_id = 'MC-early'")
    assert tuple(population) == (True, True, 1.0)
    assert len(await outbox_events(engine, "compensation.issue_flagged", "MC-early")) == 1


async def test_the_auditor_sees_the_whole_case_and_the_trail_but_not_why_it_was_sampled(engine, limits, policies):
    await consume_requests(engine, limits, policies, [request("RQ-case", 5000, agent="A-case")])
    lead = person("lee-case", "lead")
    await approvals.decide(engine, lead, "RQ-case", approve=True, reason="carrier lost it twice", amount_minor=4000,
                           now=NOW + timedelta(hours=1))
    await consume_manual(engine, limits, policies, [manual("MC-case", 4500, request_id="RQ-case", buyer="B-RQ-case",
                                                           at=NOW + timedelta(hours=2))])
    auditor = Principal(subject="ada", kind="token", roles=frozenset({"auditor"}), regions=frozenset({"SG"}))
    claimed = None
    for _ in range(20):  # the flagged item, among other tests' flagged items in SG
        claimed = await claims.claim_next(engine, auditor, "SG", runtime=Runtime(policies))
        if claimed is None or claimed["compensation_id"] == "MC-case":
            break
        await claims.release_item(engine, auditor, claimed["id"])
        async with engine.begin() as conn:  # set it aside for this test
            await conn.execute(text("UPDATE audit_items SET status = 'done' WHERE id = :i"), {"i": claimed["id"]})
    assert claimed is not None and claimed["compensation_id"] == "MC-case"
    item = await claims.get_item(engine, auditor, claimed["id"])
    assert item["case"]["ticket_reason"] == "late_delivery" and item["case"]["carrier_id"] == "C-ninja"
    assert item["case"]["promised_delivery_at"] and item["case"]["delivered_at"]
    assert item["compensation"]["occurred_at"].startswith("2026-11-18T05:00")  # when it was issued
    assert item["request"]["approved_amount_minor"] == 4000 and item["request"]["decided_by"] == "lee-case"
    assert [s["action"] for s in item["approval_trail"]] == ["requested", "queued", "approved"]
    assert "issued 45.00 SGD, request RQ-case approved 40.00 SGD" in item["finding"]
    assert item["issue_check"]["mismatches"] == ["above_approved"]
    # Blind: nothing says why the item was sampled.
    assert "reasons" not in item and "risk_score" not in item and "mandatory" not in item
