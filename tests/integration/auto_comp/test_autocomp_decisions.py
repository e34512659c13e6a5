"""Decisions, issued from budget allowances in the decision's transaction, against real PostgreSQL through the
real handlers (the ledger's answers are built as the ledger publishes them). Each test spends from its own
partition's allowance, so tests of the module do not share one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from services.auto_comp.handlers import GrantHandler, TicketHandler
from services.auto_comp.store import StrategyStore
from tests.integration.auto_comp.autocomp_support import (
    NOW,
    RULES,
    allowance_requests,
    apply,
    damaged_ticket,
    grant,
    issued_events,
    late_ticket,
    rows,
    scalar,
    write_strategies,
)

pytestmark = pytest.mark.integration

GRANTS = GrantHandler(RULES)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return StrategyStore(write_strategies(tmp_path_factory.mktemp("strategies")))


@pytest.fixture(scope="module")
def tickets(store):
    return TicketHandler(store, RULES)


async def decision(engine, ticket_id):
    found = await rows(engine, "SELECT * FROM decisions WHERE ticket_id = :t", t=ticket_id)
    return found[0] if found else None


async def allowance_of(engine, partition: int) -> dict:
    [row] = await rows(engine, "SELECT * FROM allowances WHERE partition = :p AND status = 'open'", p=partition)
    return row


async def request_of(engine, partition: int) -> dict:
    """The latest request of the partition's open allowance (its payload)."""
    a = await allowance_of(engine, partition)
    return (await allowance_requests(engine, a["allowance_id"]))[-1]["payload"]


async def test_first_ticket_waits_for_a_grant_then_later_ones_issue_at_once(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-issue", "B-issue", days_late=4, order=12_345)], partition=1)
    d = await decision(engine, "T-issue")
    assert d["outcome"] == "pending_budget" and d["strategy_id"] == "sg-late" and d["strategy_version"] == 3
    assert d["proposed_minor"] == 1_235 and d["tier"] == "late_3_5"  # 10% of 123.45 = 12.345 -> 12.35 half up
    assert d["inputs"]["days_late"] == 4
    a = await allowance_of(engine, 1)
    [request] = await allowance_requests(engine, a["allowance_id"])
    p = request["payload"]
    period = RULES.period("SG", datetime.now(UTC))[0]
    assert (p["request_seq"], p["budget_period"], p["pacing_allowance_percent"]) == (1, period, 10)
    assert p["at_least"] == {"amount_minor": 1_235, "currency": "SGD"} and p["wanted"]["amount_minor"] >= 1_235
    assert request["event_id"] == f"{a['allowance_id']}.1.1" and p["owner"] == "test.tickets:1"

    await apply(engine, GRANTS, [grant(p, 100_000)])
    d = await decision(engine, "T-issue")
    assert d["outcome"] == "issued" and d["issued_minor"] == 1_235 and a["allowance_id"] in d["detail"]
    [comp] = await rows(engine, "SELECT * FROM compensations WHERE ticket_id = 'T-issue'")
    assert comp["status"] == "issued" and len(comp["voucher_code"]) == 25 and comp["allowance_id"] == a["allowance_id"]
    [issued] = [e for e in await issued_events(engine) if e["payload"]["ticket_id"] == "T-issue"]
    assert issued["payload"]["voucher_code"] == comp["voucher_code"]
    assert issued["payload"]["allowance_id"] == a["allowance_id"]
    assert issued["payload"]["reservation_id"] == comp["compensation_id"]  # the hold the ledger opens for it
    assert issued["payload"]["min_spend"] == {"amount_minor": 2_000, "currency": "SGD"}
    assert issued["payload"]["liability"] == [{"party": {"type": "platform", "id": None}, "amount_minor": 1_235}]

    # Covered by the allowance now: decided and issued in the ticket's own transaction, nothing asked.
    await apply(engine, tickets, [late_ticket("T-issue-2", "B-issue-2", order=10_000)], partition=1)
    d2 = await decision(engine, "T-issue-2")
    assert (d2["outcome"], d2["issued_minor"]) == ("issued", 1_000)
    assert len(await allowance_requests(engine, a["allowance_id"])) == 1
    a = await allowance_of(engine, 1)
    assert (a["granted_minor"], a["spent_minor"], a["spent_count"]) == (100_000, 2_235, 2)

    # The same answer again (redelivered, or answering a re-sent request): nothing changes.
    await apply(engine, GRANTS, [grant(p, 100_000)])
    again = await allowance_of(engine, 1)
    assert (again["granted_minor"], again["spent_minor"]) == (100_000, 2_235)
    assert len([e for e in await issued_events(engine) if e["payload"]["ticket_id"].startswith("T-issue")]) == 2


async def test_replayed_ticket_keeps_its_decision(engine, tickets):
    first = late_ticket("T-replay", "B-replay", days_late=7)
    await apply(engine, tickets, [first], partition=2)
    before = await decision(engine, "T-replay")
    # Same ticket, new event id (re-sent upstream) and the very same event: no second decision or compensation.
    await apply(engine, tickets, [late_ticket("T-replay", "B-replay", days_late=7), first], partition=2)
    assert await decision(engine, "T-replay") == before
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE ticket_id = 'T-replay'") == 1
    a = await allowance_of(engine, 2)
    assert len(await allowance_requests(engine, a["allowance_id"])) == 1


async def test_split_liability_and_degraded_tier(engine, tickets):
    due = NOW - timedelta(days=20)
    await apply(engine, tickets, [late_ticket("T-split", "B-split", days_late=8, order=5_005, carrier_id="C1",
                                              dispatch_due_at=due, shipped_at=due + timedelta(days=1))], partition=3)
    p = await request_of(engine, 3)
    assert p["at_least"]["amount_minor"] == 1_001  # 20% of 50.05 = 10.01; the lower tier 10% = 5.005 -> 5.01
    # The ledger has only 6.00 left: the lower tier fits what it granted.
    await apply(engine, GRANTS, [grant(p, 600, limited_by="budget_exhausted", detail="budget exhausted")])
    d = await decision(engine, "T-split")
    assert d["outcome"] == "issued" and d["issued_minor"] == 501 and "degraded from 10.01 SGD" in d["detail"]
    [issued] = [e for e in await issued_events(engine) if e["payload"]["ticket_id"] == "T-split"]
    shares = [(s["party"]["type"], s["party"]["id"], s["amount_minor"]) for s in issued["payload"]["liability"]]
    assert shares == [("seller", "S1", 251), ("platform", None, 250)]  # seller late: 50/50, exact sum


async def test_denials_become_budget_denied_or_paced_without_asking_again_until_retry(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-exhausted", "B-den1")], partition=4)
    await apply(engine, tickets, [late_ticket("T-paced", "B-den2")], partition=5)
    await apply(engine, GRANTS, [grant(await request_of(engine, 4), 0, limited_by="budget_exhausted",
                                       detail="budget exhausted: usage 50.00 SGD of 50.00 SGD"),
                                 grant(await request_of(engine, 5), 0, limited_by="paced", detail="paced")])
    d1, d2 = await decision(engine, "T-exhausted"), await decision(engine, "T-paced")
    assert (d1["outcome"], d1["failed_rule"]) == ("budget_denied", "budget") and "budget exhausted" in d1["detail"]
    assert d2["outcome"] == "paced"
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE ticket_id IN ('T-exhausted', 'T-paced') "
                                "AND status = 'denied' AND voucher_code IS NULL") == 2
    # While the ledger's answer stands (retry_after ahead), the next ticket is decided without asking.
    await apply(engine, tickets, [late_ticket("T-exhausted-2", "B-den3")], partition=4)
    assert (await decision(engine, "T-exhausted-2"))["outcome"] == "budget_denied"
    a = await allowance_of(engine, 4)
    assert len(await allowance_requests(engine, a["allowance_id"])) == 1
    # Once it passed, the ledger is asked again (a return or a raised limit may have freed room).
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE allowances SET retry_after = now() - interval '1 second' "
                                "WHERE allowance_id = :a"), {"a": a["allowance_id"]})
    await apply(engine, tickets, [late_ticket("T-exhausted-3", "B-den4")], partition=4)
    assert (await decision(engine, "T-exhausted-3"))["outcome"] == "pending_budget"
    requests = await allowance_requests(engine, a["allowance_id"])
    assert [r["payload"]["request_seq"] for r in requests] == [1, 2]


async def test_not_eligible_holdout_free_outcomes_and_shadow(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-short", "B-ne", days_late=2), damaged_ticket("T-dmg", "B-dmg"),
                                  damaged_ticket("T-gb", "B-gb", region="GB", currency="GBP")], partition=6)
    short = await decision(engine, "T-short")
    assert (short["outcome"], short["failed_rule"]) == ("not_eligible", "match.thresholds.days_late")
    assert "days_late = 2, needs >= 3" in short["detail"] and short["compensation_id"] is None
    dmg = await decision(engine, "T-dmg")
    assert dmg["outcome"] == "pending_budget" and dmg["proposed_minor"] == 600  # 15% of 40.00
    [shadow] = await rows(engine, "SELECT * FROM shadow_decisions WHERE ticket_id = 'T-dmg'")
    assert (shadow["strategy_id"], shadow["outcome"], shadow["proposed_minor"]) == ("sg-damaged-trial",
                                                                                   "would_issue", 800)
    gb = await decision(engine, "T-gb")
    assert gb["region"] == "GB" and gb["currency"] == "GBP" and gb["proposed_minor"] == 400
    # One allowance per (region, period, partition, pacing): SG paced at 10% (late) and unpaced (damaged)
    # never share one, nor do SG and GB.
    keys = await rows(engine, "SELECT region, pacing_percent FROM allowances WHERE partition = 6 ORDER BY 1, 2")
    assert [(k["region"], k["pacing_percent"]) for k in keys] == [("GB", 100), ("SG", 100)]


async def test_one_compensation_per_order_and_scenario(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-o1", "B-order", order_id="O-shared"),
                                  late_ticket("T-o2", "B-order", order_id="O-shared")], partition=7)
    outcomes = sorted([(await decision(engine, t))["outcome"] for t in ("T-o1", "T-o2")])
    assert outcomes == ["not_eligible", "pending_budget"]
    assert (await decision(engine, "T-o2"))["failed_rule"] == "one_per_order_and_scenario"


async def test_abuse_guard_counts_waiting_and_issued(engine, tickets):
    base = NOW - timedelta(days=3)
    await apply(engine, tickets, [late_ticket(f"T-g{i}", "B-guard", occurred_at=base + timedelta(hours=i))
                                  for i in range(4)], partition=8)
    outcomes = [(await decision(engine, f"T-g{i}"))["outcome"] for i in range(4)]
    assert outcomes == ["pending_budget", "pending_budget", "capped_by_abuse_guard", "capped_by_abuse_guard"]
    # a later batch sees the waiting ones
    await apply(engine, tickets, [late_ticket("T-g9", "B-guard", occurred_at=base + timedelta(days=1))], partition=8)
    assert (await decision(engine, "T-g9"))["outcome"] == "capped_by_abuse_guard"
    # ...but not denied ones: budget denials free the buyer's allowance
    await apply(engine, GRANTS, [grant(await request_of(engine, 8), 0, limited_by="budget_exhausted")])
    assert [(await decision(engine, f"T-g{i}"))["outcome"] for i in range(2)] == ["budget_denied"] * 2
    await apply(engine, tickets, [late_ticket("T-g10", "B-guard", occurred_at=base + timedelta(days=1))],
                partition=8)
    assert (await decision(engine, "T-g10"))["outcome"] == "budget_denied"  # past the guard, denied by budget


async def test_abuse_guard_holds_with_two_concurrent_transactions(engine, tickets):
    """Two consumers deciding different tickets of the same buyer at the same moment (each in its own
    transaction): the per-buyer lock makes the second wait and count the first one's compensations."""
    for round_ in range(5):
        buyer = f"B-race-{round_}"
        batch_a = [late_ticket(f"T-ra{round_}-{i}", buyer) for i in range(3)]
        batch_b = [late_ticket(f"T-rb{round_}-{i}", buyer) for i in range(3)]
        await asyncio.gather(apply(engine, tickets, batch_a, partition=9),
                             apply(engine, tickets, batch_b, partition=10))
        granted = await scalar(engine, "SELECT count(*) FROM compensations WHERE buyer_id = :b "
                                       "AND status <> 'denied'", b=buyer)
        assert granted == 2
        assert await scalar(engine, "SELECT count(*) FROM decisions WHERE buyer_id = :b", b=buyer) == 6


async def test_same_ticket_in_two_concurrent_batches_is_decided_once(engine, tickets):
    env = late_ticket("T-twice", "B-twice")
    await asyncio.gather(apply(engine, tickets, [env], partition=11),
                         apply(engine, tickets, [late_ticket("T-twice", "B-twice")], partition=11))
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE ticket_id = 'T-twice'") == 1
    a = await allowance_of(engine, 11)
    assert len(await allowance_requests(engine, a["allowance_id"])) == 1


async def test_unknown_allowance_answers_are_ignored(engine):
    stray = {"allowance_id": "al-unknown", "request_seq": 1, "budget_period": "2026-11",
             "wanted": {"amount_minor": 100, "currency": "SGD"}}
    await apply(engine, GRANTS, [grant(stray, 100)])
    assert await scalar(engine, "SELECT count(*) FROM allowances WHERE allowance_id = 'al-unknown'") == 0


async def decisions_recorded(engine, ticket_id):
    """decision.recorded events in the outbox for a ticket, decoded through the contract."""
    from shared.contracts.registry import decode_envelope

    found = []
    for r in await rows(engine, "SELECT key, value FROM outbox WHERE topic = 'decisions.v1' ORDER BY id"):
        envelope, payload = decode_envelope(r["value"])
        if payload.ticket_id == ticket_id:
            assert r["key"] == payload.buyer_id.encode()
            found.append((envelope, payload))
    return found


async def test_every_final_decision_is_announced_once_in_its_transaction(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-ann-ne", "B-ann1", days_late=2), damaged_ticket("T-ann-d", "B-ann2"),
                                  late_ticket("T-ann-i", "B-ann3", days_late=8, order=5_005, carrier_id="C9")],
                partition=11)
    [(_, ne)] = await decisions_recorded(engine, "T-ann-ne")
    assert (ne.outcome.value, ne.failed_rule, ne.shadow) == ("not_eligible", "match.thresholds.days_late", False)
    assert (ne.strategy_id, ne.strategy_version, ne.reason.value, ne.seller_id) == ("sg-late", 3, "late_delivery", "S1")
    # a decision waiting for its allowance is not final: only its shadow (would_issue) is announced for now
    assert [(p.shadow, p.outcome.value) for _, p in await decisions_recorded(engine, "T-ann-d")] == [
        (True, "would_issue")]
    assert await decisions_recorded(engine, "T-ann-i") == []
    requests = {r["payload"]["pacing_allowance_percent"]: r["payload"] for r in await allowance_requests(engine)
                if r["payload"]["owner"] == "test.tickets:11"}
    await apply(engine, GRANTS, [grant(requests[10], 100_000)])  # the late-delivery strategy's (paced) allowance
    [(env, issued)] = await decisions_recorded(engine, "T-ann-i")
    assert (issued.outcome.value, issued.tier, issued.kind.value) == ("issued", "late_6_plus", "voucher")
    assert issued.amount is not None and issued.amount.amount_minor == 1_001
    assert sum(s.amount_minor for s in issued.liability) == 1_001 and issued.compensation_id
    assert (issued.seller_id, issued.carrier_id) == ("S1", "C9")  # ticket facts kept for the settle-time event
    assert issued.ticket_occurred_at == NOW and env.correlation_id
    assert issued.order_amount is not None and issued.order_amount.amount_minor == 5_005  # settle-time: from inputs
    await apply(engine, GRANTS, [grant(requests[100], 0, limited_by="paced", detail="paced")])
    assert sorted((p.shadow, p.outcome.value) for _, p in await decisions_recorded(engine, "T-ann-d")) == [
        (False, "paced"), (True, "would_issue")]
    # redelivered answers announce nothing more
    await apply(engine, GRANTS, [grant(requests[10], 100_000)])
    assert len(await decisions_recorded(engine, "T-ann-i")) == 1
    # a ticket issued at once from the granted allowance is announced in its own transaction, with its split
    await apply(engine, tickets, [late_ticket("T-ann-now", "B-ann5", days_late=8, order=5_005)], partition=11)
    [(_, now_issued)] = await decisions_recorded(engine, "T-ann-now")
    assert now_issued.outcome.value == "issued" and sum(s.amount_minor for s in now_issued.liability) == 1_001
    assert now_issued.order_amount is not None and now_issued.order_amount.amount_minor == 5_005


async def test_backtest_charges_the_same_parties_as_live_decisions_when_the_handoff_is_missing(engine, store,
                                                                                                tickets):
    """Issue 13: the liability fallback for a missing carrier hand-off time is one engine call, so a backtest
    over the same tickets attributes them to the same rules as the live service did."""
    from collections import Counter

    from services.auto_comp.domain.backtest import HistoricalTicket, run_backtest
    from shared.contracts.registry import validate_payload

    due = NOW - timedelta(days=20)
    evidence = [  # (carrier, shipped_at): late, on time, unknown with and without a carrier
        ("C1", due + timedelta(days=2)), ("C1", due - timedelta(days=1)), ("C1", None), (None, None),
        (None, due - timedelta(days=1))]
    envelopes = [late_ticket(f"HO-{i}", f"B-ho-{i}", days_late=5, carrier_id=carrier, dispatch_due_at=due,
                             shipped_at=shipped) for i, (carrier, shipped) in enumerate(evidence)]
    await apply(engine, tickets, envelopes)
    live = await rows(engine, "SELECT inputs->>'liability_rule' AS rule, proposed_minor FROM decisions "
                              "WHERE ticket_id LIKE 'HO-%' AND outcome IN ('pending_budget', 'issued')")
    assert len(live) == len(evidence)  # all compensated: the comparison covers every case
    report = {r.region: r for r in run_backtest(store.current, [
        HistoricalTicket(e.region, e.occurred_at, validate_payload(e)) for e in envelopes])}["SG"]
    assert {rule: (b.count, b.total_minor) for rule, b in report.by_liability_rule.items()} == {
        rule: (n, sum(r["proposed_minor"] for r in live if r["rule"] == rule))
        for rule, n in Counter(r["rule"] for r in live).items()}
    # the support strategy states ticket_time for the seller and next_rule for the carrier
    assert Counter(r["rule"] for r in live) == {"seller_late_dispatch": 3, "carrier_delay": 1, "otherwise": 1}
