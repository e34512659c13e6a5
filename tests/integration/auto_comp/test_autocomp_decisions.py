"""Decisions and the budget saga against real PostgreSQL, through the real handlers."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from autocomp_support import (
    NOW,
    answer,
    apply,
    damaged_ticket,
    issued_events,
    late_ticket,
    requests_for,
    rows,
    scalar,
    write_strategies,
)
from sqlalchemy import text

from services.auto_comp.handlers import BudgetResultHandler, SagaTimeouts, TicketHandler
from services.auto_comp.store import StrategyStore
from shared.kafka import PermanentError

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return StrategyStore(write_strategies(tmp_path_factory.mktemp("strategies")))


@pytest.fixture(scope="module")
def tickets(store):
    return TicketHandler(store)


RESULTS = BudgetResultHandler()


async def decision(engine, ticket_id):
    found = await rows(engine, "SELECT * FROM decisions WHERE ticket_id = :t", t=ticket_id)
    return found[0] if found else None


async def test_reserved_issues_a_voucher_once(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-issue", "B-issue", days_late=4, order=12_345)])
    d = await decision(engine, "T-issue")
    assert d["outcome"] == "pending_budget" and d["strategy_id"] == "sg-late" and d["strategy_version"] == 3
    assert d["proposed_minor"] == 1_235 and d["tier"] == "late_3_5"  # 10% of 123.45 = 12.345 -> 12.35 half up
    assert d["inputs"]["days_late"] == 4
    [request] = await requests_for(engine, "T-issue")
    p = request["payload"]
    assert p["amount"] == {"amount_minor": 1_235, "currency": "SGD"} and p["fallback_amounts"] == []
    assert p["pacing_allowance_percent"] == 10
    assert request["event_id"] == f"{p['reservation_id']}.1"

    await apply(engine, RESULTS, [answer(p, reserved=1_235)])
    d = await decision(engine, "T-issue")
    assert d["outcome"] == "issued" and d["issued_minor"] == 1_235
    [comp] = await rows(engine, "SELECT * FROM compensations WHERE ticket_id = 'T-issue'")
    assert comp["status"] == "issued" and len(comp["voucher_code"]) == 25
    [issued] = [e for e in await issued_events(engine) if e["payload"]["ticket_id"] == "T-issue"]
    assert issued["payload"]["voucher_code"] == comp["voucher_code"]
    assert issued["payload"]["min_spend"] == {"amount_minor": 2_000, "currency": "SGD"}
    assert issued["payload"]["liability"] == [{"party": {"type": "platform", "id": None}, "amount_minor": 1_235}]

    # The same answer again (redelivered, or answering a re-sent request): nothing changes.
    await apply(engine, RESULTS, [answer(p, reserved=1_235), answer(p, denial="budget_exhausted")])
    [again] = await rows(engine, "SELECT * FROM compensations WHERE ticket_id = 'T-issue'")
    assert again["voucher_code"] == comp["voucher_code"] and again["status"] == "issued"
    assert len([e for e in await issued_events(engine) if e["payload"]["ticket_id"] == "T-issue"]) == 1


async def test_replayed_ticket_keeps_its_decision(engine, tickets):
    first = late_ticket("T-replay", "B-replay", days_late=7)
    await apply(engine, tickets, [first])
    before = await decision(engine, "T-replay")
    # Same ticket, new event id (re-sent upstream) and the very same event: no second decision or request.
    await apply(engine, tickets, [late_ticket("T-replay", "B-replay", days_late=7), first])
    assert await decision(engine, "T-replay") == before
    assert len(await requests_for(engine, "T-replay")) == 1
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE ticket_id = 'T-replay'") == 1


async def test_split_liability_and_degraded_tier(engine, tickets):
    due = NOW - timedelta(days=20)
    await apply(engine, tickets, [late_ticket("T-split", "B-split", days_late=8, order=5_005, carrier_id="C1",
                                              dispatch_due_at=due, shipped_at=due + timedelta(days=1))])
    [request] = await requests_for(engine, "T-split")
    p = request["payload"]
    # 20% of 50.05 = 10.01; the lower tier 10% = 5.005 -> 5.01 half up
    assert p["amount"]["amount_minor"] == 1_001
    assert [m["amount_minor"] for m in p["fallback_amounts"]] == [501]
    await apply(engine, RESULTS, [answer(p, reserved=501)])
    d = await decision(engine, "T-split")
    assert d["outcome"] == "issued" and d["issued_minor"] == 501 and "degraded from 10.01 SGD" in d["detail"]
    [issued] = [e for e in await issued_events(engine) if e["payload"]["ticket_id"] == "T-split"]
    shares = [(s["party"]["type"], s["party"]["id"], s["amount_minor"]) for s in issued["payload"]["liability"]]
    assert shares == [("seller", "S1", 251), ("platform", None, 250)]  # seller late: 50/50, exact sum


async def test_denials_become_budget_denied_or_paced(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-exhausted", "B-den1"), late_ticket("T-paced", "B-den2")])
    [r1] = await requests_for(engine, "T-exhausted")
    [r2] = await requests_for(engine, "T-paced")
    await apply(engine, RESULTS, [answer(r1["payload"], denial="budget_exhausted"),
                                  answer(r2["payload"], denial="paced")])
    d1, d2 = await decision(engine, "T-exhausted"), await decision(engine, "T-paced")
    assert (d1["outcome"], d1["failed_rule"]) == ("budget_denied", "budget")
    assert "budget_exhausted" in d1["detail"]
    assert d2["outcome"] == "paced"
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE ticket_id IN ('T-exhausted', 'T-paced') "
                                "AND status = 'denied' AND voucher_code IS NULL") == 2


async def test_ledger_reserving_an_amount_never_offered_is_rejected(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-odd", "B-odd")])
    [r] = await requests_for(engine, "T-odd")
    with pytest.raises(PermanentError, match="not one of the offered amounts"):
        await apply(engine, RESULTS, [answer(r["payload"], reserved=7)])
    assert (await decision(engine, "T-odd"))["outcome"] == "pending_budget"


async def test_not_eligible_holdout_free_outcomes_and_shadow(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-short", "B-ne", days_late=2), damaged_ticket("T-dmg", "B-dmg"),
                                  damaged_ticket("T-gb", "B-gb", region="GB", currency="GBP")])
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


async def test_one_compensation_per_order_and_scenario(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-o1", "B-order", order_id="O-shared"),
                                  late_ticket("T-o2", "B-order", order_id="O-shared")])
    outcomes = sorted([(await decision(engine, t))["outcome"] for t in ("T-o1", "T-o2")])
    assert outcomes == ["not_eligible", "pending_budget"]
    assert (await decision(engine, "T-o2"))["failed_rule"] == "one_per_order_and_scenario"


async def test_abuse_guard_counts_pending_and_issued(engine, tickets):
    base = NOW - timedelta(days=3)
    await apply(engine, tickets, [late_ticket(f"T-g{i}", "B-guard", occurred_at=base + timedelta(hours=i))
                                  for i in range(4)])
    outcomes = [(await decision(engine, f"T-g{i}"))["outcome"] for i in range(4)]
    assert outcomes == ["pending_budget", "pending_budget", "capped_by_abuse_guard", "capped_by_abuse_guard"]
    # a later batch sees the earlier pending ones
    await apply(engine, tickets, [late_ticket("T-g9", "B-guard", occurred_at=base + timedelta(days=1))])
    assert (await decision(engine, "T-g9"))["outcome"] == "capped_by_abuse_guard"
    # ...but not a denied one: budget denials free the buyer's allowance
    [r] = await requests_for(engine, "T-g0")
    await apply(engine, RESULTS, [answer(r["payload"], denial="budget_exhausted")])
    await apply(engine, tickets, [late_ticket("T-g10", "B-guard", occurred_at=base + timedelta(days=1))])
    assert (await decision(engine, "T-g10"))["outcome"] == "pending_budget"


async def test_abuse_guard_holds_with_two_concurrent_transactions(engine, tickets):
    """Two consumers deciding different tickets of the same buyer at the same moment (each in its own
    transaction): the per-buyer lock makes the second wait and count the first one's compensations."""
    for round_ in range(5):
        buyer = f"B-race-{round_}"
        batch_a = [late_ticket(f"T-ra{round_}-{i}", buyer) for i in range(3)]
        batch_b = [late_ticket(f"T-rb{round_}-{i}", buyer) for i in range(3)]
        await asyncio.gather(apply(engine, tickets, batch_a), apply(engine, tickets, batch_b))
        granted = await scalar(engine, "SELECT count(*) FROM compensations WHERE buyer_id = :b "
                                       "AND status <> 'denied'", b=buyer)
        assert granted == 2
        assert await scalar(engine, "SELECT count(*) FROM decisions WHERE buyer_id = :b", b=buyer) == 6


async def test_same_ticket_in_two_concurrent_batches_is_decided_once(engine, tickets):
    env = late_ticket("T-twice", "B-twice")
    await asyncio.gather(apply(engine, tickets, [env]), apply(engine, tickets, [late_ticket("T-twice", "B-twice")]))
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE ticket_id = 'T-twice'") == 1
    assert len(await requests_for(engine, "T-twice")) == 1


async def test_saga_timeout_resends_with_the_same_reservation_id(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-slow", "B-slow")])
    saga = SagaTimeouts(engine, timeout_seconds=30, interval_seconds=3600)
    assert await saga.run_once() == 0  # answered within the timeout: nothing to re-send
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE compensations SET last_sent_at = now() - interval '31 seconds' "
                                "WHERE ticket_id = 'T-slow'"))
    assert await saga.run_once() == 1
    first, second = await requests_for(engine, "T-slow")
    assert first["payload"] == second["payload"]
    assert first["event_id"] != second["event_id"] and second["event_id"].endswith(".2")
    assert await saga.run_once() == 0  # clock restarted
    # whichever copy the ledger answers, the voucher is issued once
    await apply(engine, RESULTS, [answer(second["payload"], reserved=1_000),
                                  answer(first["payload"], reserved=1_000)])
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE ticket_id = 'T-slow' "
                                "AND voucher_code IS NOT NULL") == 1
    assert await scalar(engine, "SELECT attempts FROM compensations WHERE ticket_id = 'T-slow'") == 2


async def test_unknown_reservation_answers_are_ignored(engine):
    stray = {"reservation_id": "res-unknown", "compensation_id": "ac-unknown", "ticket_id": "T-none",
             "buyer_id": "B-none", "amount": {"amount_minor": 100, "currency": "SGD"}}
    await apply(engine, RESULTS, [answer(stray, reserved=100)])
    assert await decision(engine, "T-none") is None


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
                                  late_ticket("T-ann-i", "B-ann3", days_late=8, order=5_005, carrier_id="C9")])
    [(_, ne)] = await decisions_recorded(engine, "T-ann-ne")
    assert (ne.outcome.value, ne.failed_rule, ne.shadow) == ("not_eligible", "match.thresholds.days_late", False)
    assert (ne.strategy_id, ne.strategy_version, ne.reason.value, ne.seller_id) == ("sg-late", 3, "late_delivery", "S1")
    # a pending decision is not final: only its shadow (would_issue) is announced for now
    assert [(p.shadow, p.outcome.value) for _, p in await decisions_recorded(engine, "T-ann-d")] == [
        (True, "would_issue")]
    assert await decisions_recorded(engine, "T-ann-i") == []
    [request] = await requests_for(engine, "T-ann-i")
    await apply(engine, RESULTS, [answer(request["payload"], reserved=1_001)])
    [(env, issued)] = await decisions_recorded(engine, "T-ann-i")
    assert (issued.outcome.value, issued.tier, issued.kind.value) == ("issued", "late_6_plus", "voucher")
    assert issued.amount is not None and issued.amount.amount_minor == 1_001
    assert sum(s.amount_minor for s in issued.liability) == 1_001 and issued.compensation_id
    assert (issued.seller_id, issued.carrier_id) == ("S1", "C9")  # ticket facts kept for the settle-time event
    assert issued.ticket_occurred_at == NOW and env.causation_id is not None
    [request_d] = await requests_for(engine, "T-ann-d")
    await apply(engine, RESULTS, [answer(request_d["payload"], denial="paced")])
    assert sorted((p.shadow, p.outcome.value) for _, p in await decisions_recorded(engine, "T-ann-d")) == [
        (False, "paced"), (True, "would_issue")]
    # redelivered answers announce nothing more
    await apply(engine, RESULTS, [answer(request["payload"], reserved=1_001)])
    assert len(await decisions_recorded(engine, "T-ann-i")) == 1


async def test_reservations_expired_by_the_sweeper_are_announced(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-ann-x", "B-ann4")])
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE compensations SET expires_at = now() - interval '1 second' "
                                "WHERE ticket_id = 'T-ann-x'"))
    await SagaTimeouts(engine, timeout_seconds=30, interval_seconds=3600).run_once()
    [(_, expired)] = await decisions_recorded(engine, "T-ann-x")
    assert (expired.outcome.value, expired.failed_rule) == ("reservation_expired", "budget")


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
                              "WHERE ticket_id LIKE 'HO-%' AND outcome = 'pending_budget'")
    assert len(live) == len(evidence)  # all compensated: the comparison covers every case
    report = {r.region: r for r in run_backtest(store.current, [
        HistoricalTicket(e.region, e.occurred_at, validate_payload(e)) for e in envelopes])}["SG"]
    assert {rule: (b.count, b.total_minor) for rule, b in report.by_liability_rule.items()} == {
        rule: (n, sum(r["proposed_minor"] for r in live if r["rule"] == rule))
        for rule, n in Counter(r["rule"] for r in live).items()}
    # the support strategy states ticket_time for the seller and next_rule for the carrier
    assert Counter(r["rule"] for r in live) == {"seller_late_dispatch": 3, "carrier_delay": 1, "otherwise": 1}
