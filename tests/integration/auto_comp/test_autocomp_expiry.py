"""Reservation expiry against real PostgreSQL: the saga's sweeper and a late budget answer race, and
exactly one of them settles each compensation."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from autocomp_support import (
    answer,
    apply,
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

pytestmark = pytest.mark.integration

RESULTS = BudgetResultHandler()



@pytest.fixture(scope="module")
def tickets(tmp_path_factory):
    return TicketHandler(StrategyStore(write_strategies(tmp_path_factory.mktemp("strategies"))))


async def decide(engine, tickets, ticket_ids: list[str]) -> dict[str, dict]:
    """Decide one late-delivery ticket per id (own buyer each); their reservation requests by ticket."""
    await apply(engine, tickets, [late_ticket(t, f"B-{t}") for t in ticket_ids])
    out = {}
    for t in ticket_ids:
        [request] = await requests_for(engine, t)
        out[t] = request["payload"]
    return out


async def expire_in(engine, ticket_id: str, seconds: float) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE compensations SET expires_at = now() + make_interval(secs => :s) "
                                "WHERE ticket_id = :t"), {"s": seconds, "t": ticket_id})


async def state(engine, ticket_id: str) -> tuple[str, str, int]:
    """(compensation status, decision outcome, compensation.issued events published for it)."""
    [row] = await rows(engine, "SELECT c.status, d.outcome, c.voucher_code FROM compensations c "
                               "JOIN decisions d USING (ticket_id) WHERE c.ticket_id = :t", t=ticket_id)
    events = [e for e in await issued_events(engine) if e["payload"]["ticket_id"] == ticket_id]
    return row["status"], row["outcome"], len(events)


async def test_a_reserved_answer_after_the_expiry_issues_nothing(engine, tickets):
    requests = await decide(engine, tickets, ["T-late-answer"])
    await expire_in(engine, "T-late-answer", -1)
    await apply(engine, RESULTS, [answer(requests["T-late-answer"], reserved=1_000)])
    assert await state(engine, "T-late-answer") == ("expired", "reservation_expired", 0)
    [d] = await rows(engine, "SELECT failed_rule, detail, issued_minor FROM decisions WHERE ticket_id = :t",
                     t="T-late-answer")
    assert d["failed_rule"] == "budget" and d["issued_minor"] is None
    assert d["detail"].startswith("no budget answer before the reservation expired at ")
    assert await scalar(engine, "SELECT voucher_code FROM compensations WHERE ticket_id = 'T-late-answer'") is None
    # the same answer again, or a denial: an expired compensation stays expired
    await apply(engine, RESULTS, [answer(requests["T-late-answer"], reserved=1_000)])
    await apply(engine, RESULTS, [answer(requests["T-late-answer"], denial="budget_exhausted",
                                         event_id="late-denial")])
    assert await state(engine, "T-late-answer") == ("expired", "reservation_expired", 0)


async def test_the_sweeper_expires_stops_resending_and_wins_over_a_later_answer(engine, tickets):
    requests = await decide(engine, tickets, ["T-swept", "T-alive"])
    await expire_in(engine, "T-swept", -1)
    async with engine.begin() as conn:  # both unanswered for longer than the timeout
        await conn.execute(text("UPDATE compensations SET last_sent_at = now() - interval '1 hour' "
                                "WHERE ticket_id IN ('T-swept', 'T-alive')"))
    saga = SagaTimeouts(engine, timeout_seconds=30, interval_seconds=3600)
    assert await saga.run_once() == 1  # only the live one is re-sent
    assert [r["ticket_id"] for r in saga.last_expired] == ["T-swept"]
    assert len(await requests_for(engine, "T-swept")) == 1 and len(await requests_for(engine, "T-alive")) == 2
    assert await state(engine, "T-swept") == ("expired", "reservation_expired", 0)
    assert await saga.run_once() == 0 and saga.last_expired == []  # settled once
    # the ledger's answer arrives after the sweeper: nothing is issued; the live one is issued as usual
    await apply(engine, RESULTS, [answer(requests["T-swept"], reserved=1_000),
                                  answer(requests["T-alive"], reserved=1_000)])
    assert await state(engine, "T-swept") == ("expired", "reservation_expired", 0)
    assert await state(engine, "T-alive") == ("issued", "issued", 1)


async def test_an_expired_compensation_frees_the_order_and_the_buyers_allowance(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-free-1", "B-free", order_id="O-free")])
    await expire_in(engine, "T-free-1", -1)
    await SagaTimeouts(engine, timeout_seconds=30, interval_seconds=3600).run_once()
    # a new ticket on the same order and buyer: like a budget denial, an expiry used nothing up
    await apply(engine, tickets, [late_ticket("T-free-2", "B-free", order_id="O-free")])
    [d] = await rows(engine, "SELECT outcome FROM decisions WHERE ticket_id = 'T-free-2'")
    assert d["outcome"] == "pending_budget"


async def test_sweeper_and_late_answers_racing_settle_each_compensation_exactly_once(engine, tickets):
    """Many rounds: reservations expiring from 100 ms ago to 150 ms ahead (and one in a minute), their
    (reserved) answers applied in random order and batches, some twice at once, while the sweeper runs in
    a loop. Each compensation must end issued (announced once, before its expiry: the ledger charges it) or
    expired (never announced: the ledger releases the reservation at that expiry) - never both, never
    neither."""
    rng = random.Random(20261118)
    all_ids: list[str] = []
    for round_ in range(8):
        ids = [f"T-race-{round_}-{i}" for i in range(12)]
        all_ids += ids
        requests = await decide(engine, tickets, ids)
        for i, t in enumerate(ids):  # the last one outlives the round whatever the scheduling
            await expire_in(engine, t, 60 if i == len(ids) - 1 else (i - 4) * 0.025)
        saga = SagaTimeouts(engine, timeout_seconds=3600, interval_seconds=3600)
        done = asyncio.Event()

        async def sweep(saga: SagaTimeouts = saga, done: asyncio.Event = done) -> None:
            while not done.is_set():
                await saga.run_once()
                await asyncio.sleep(rng.uniform(0, 0.01))

        async def answer_all(requests: dict[str, dict] = requests, ids: list[str] = ids) -> None:
            order = ids[:]
            rng.shuffle(order)
            while order:
                batch = order[:rng.randint(1, 3)]
                order = order[len(batch):]
                envelopes = [answer(requests[t], reserved=requests[t]["amount"]["amount_minor"]) for t in batch]
                if rng.random() < 0.3:  # the same answers delivered to two consumers at once
                    await asyncio.gather(apply(engine, RESULTS, envelopes), apply(engine, RESULTS, envelopes))
                else:
                    await apply(engine, RESULTS, envelopes)
                await asyncio.sleep(rng.uniform(0, 0.03))

        sweeper = asyncio.create_task(sweep())
        await answer_all()
        done.set()
        await sweeper

    issued_per_ticket = Counter(e["payload"]["ticket_id"] for e in await issued_events(engine))
    settled = await rows(engine, "SELECT c.ticket_id, c.status, d.outcome, c.settled_at < c.expires_at AS before "
                                 "FROM compensations c JOIN decisions d USING (ticket_id) "
                                 "WHERE c.ticket_id = ANY(CAST(:ids AS text[]))", ids=all_ids)
    assert len(settled) == len(all_ids)
    outcomes: Counter[str] = Counter()
    for r in settled:
        charged = issued_per_ticket[r["ticket_id"]]
        if r["status"] == "issued":
            assert (r["outcome"], charged, r["before"]) == ("issued", 1, True), r
        else:
            assert (r["status"], r["outcome"], charged, r["before"]) == ("expired", "reservation_expired", 0,
                                                                        False), r
        outcomes[r["status"]] += 1
    # the first reservations of every round had expired before any answer, the last ones outlive the round
    assert outcomes["issued"] >= 8 and outcomes["expired"] >= 8 * 4
    assert sum(outcomes.values()) == len(all_ids)


async def test_a_ledger_denial_for_a_voided_hold_is_an_expiry_not_a_budget_denial(engine, tickets):
    # A re-sent request reached the ledger after it voided the hold: its "denied: reservation_expired"
    # must not be reported to finance as a budget shortfall.
    requests = await decide(engine, tickets, ["T-voided-hold"])
    await expire_in(engine, "T-voided-hold", -1)
    await apply(engine, RESULTS, [answer(requests["T-voided-hold"], denial="reservation_expired")])
    assert await state(engine, "T-voided-hold") == ("expired", "reservation_expired", 0)
