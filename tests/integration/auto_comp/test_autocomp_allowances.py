"""Budget allowances' life in auto_comp against real PostgreSQL (ADR 0012): closing at expiry and at the
period's end, on revocation and by any replica's keeper, with the exact spend reported; a grant arriving
too late; a request the ledger does not answer; tickets left waiting, from the saga too. Each test uses its
own partition's allowance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from services.auto_comp import persistence
from services.auto_comp.handlers import AllowanceKeeper, GrantHandler, TicketHandler, close_partitions
from services.auto_comp.store import StrategyStore
from tests.integration.auto_comp.autocomp_support import (
    RULES,
    allowance_requests,
    allowance_returns,
    apply,
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
def tickets(tmp_path_factory):
    return TicketHandler(StrategyStore(write_strategies(tmp_path_factory.mktemp("strategies"))), RULES)


@pytest.fixture
def keeper(engine):
    return AllowanceKeeper(engine, RULES, interval=3600, grant_timeout=10)


async def allowances_of(engine, partition: int) -> list[dict]:
    return await rows(engine, "SELECT * FROM allowances WHERE partition = :p ORDER BY opened_at, allowance_id",
                      p=partition)


async def open_allowance(engine, partition: int) -> dict:
    [a] = [a for a in await allowances_of(engine, partition) if a["status"] == "open"]
    return a


async def granted(engine, tickets, partition: int, ticket_ids: list[str], amount: int = 100_000) -> dict:
    """Tickets of a partition, its allowance granted ``amount``, every ticket issued; the allowance row."""
    await apply(engine, tickets, [late_ticket(t, f"B-{t}") for t in ticket_ids[:1]], partition=partition)
    a = await open_allowance(engine, partition)
    [request] = await allowance_requests(engine, a["allowance_id"])
    await apply(engine, GRANTS, [grant(request["payload"], amount)])
    await apply(engine, tickets, [late_ticket(t, f"B-{t}") for t in ticket_ids[1:]], partition=partition)
    outcomes = await rows(engine, "SELECT outcome FROM decisions WHERE ticket_id = ANY(CAST(:t AS text[]))",
                          t=ticket_ids)
    assert {r["outcome"] for r in outcomes} == {"issued"}
    return await open_allowance(engine, partition)


async def expire(engine, allowance_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE allowances SET close_at = now() - interval '1 second' "
                                "WHERE allowance_id = :a"), {"a": allowance_id})


async def test_keeper_closes_expired_allowances_and_reports_exactly_what_was_spent(engine, tickets, keeper):
    a = await granted(engine, tickets, 21, ["T-k1", "T-k2"])
    assert (a["spent_minor"], a["spent_count"]) == (2_000, 2)
    assert (await keeper.run_once())["closed"] == 0  # not due yet
    await expire(engine, a["allowance_id"])
    assert (await keeper.run_once())["closed"] == 1
    [returned] = [r for r in await allowance_returns(engine) if r["allowance_id"] == a["allowance_id"]]
    assert returned["spent"] == {"amount_minor": 2_000, "currency": "SGD"} and returned["spent_count"] == 2
    assert returned["reason"] == "expired" and returned["budget_period"] == a["period"]
    closed = await rows(engine, "SELECT status, close_reason FROM allowances WHERE allowance_id = :a",
                        a=a["allowance_id"])
    assert closed == [{"status": "closed", "close_reason": "expired"}]
    assert (await keeper.run_once())["closed"] == 0  # closed once, returned once

    # Nothing can be spent from it any more: the spend's conditional update refuses a closed row.
    _, held = await _locked(engine, a["allowance_id"])
    held.spent_now, held.count_now = 1_000, 1
    with pytest.raises(RuntimeError, match="refused"):
        async with engine.begin() as conn:
            await persistence.save_allowances(conn, [held])
    # The next ticket of the partition gets a new allowance (and waits for its grant).
    await apply(engine, tickets, [late_ticket("T-k3", "B-k3")], partition=21)
    assert (await scalar(engine, "SELECT outcome FROM decisions WHERE ticket_id = 'T-k3'")) == "pending_budget"
    assert (await open_allowance(engine, 21))["allowance_id"] != a["allowance_id"]


async def _locked(engine, allowance_id: str):
    async with engine.begin() as conn:
        now, found = await persistence.lock_allowances(conn, ids=[allowance_id])
    allowance = found[allowance_id]
    allowance.open = True  # as a buggy writer holding a stale copy would believe
    return now, allowance


async def test_a_ticket_touching_an_expired_allowance_closes_it_and_opens_the_next(engine, tickets):
    """The period's end works the same way: its allowance's close_at is the end less the safety margin."""
    a = await granted(engine, tickets, 22, ["T-e1"])
    await expire(engine, a["allowance_id"])
    await apply(engine, tickets, [late_ticket("T-e2", "B-e2")], partition=22)
    first, second = await allowances_of(engine, 22)
    assert (first["allowance_id"], first["status"]) == (a["allowance_id"], "closed")
    assert second["status"] == "open" and second["request_seq"] == 1
    [returned] = [r for r in await allowance_returns(engine) if r["allowance_id"] == a["allowance_id"]]
    assert (returned["spent"]["amount_minor"], returned["spent_count"]) == (1_000, 1)
    assert await scalar(engine, "SELECT outcome FROM decisions WHERE ticket_id = 'T-e2'") == "pending_budget"


async def test_a_grant_arriving_after_its_expiry_goes_straight_back(engine, tickets):
    await apply(engine, tickets, [late_ticket("T-late", "B-late")], partition=23)
    a = await open_allowance(engine, 23)
    [request] = await allowance_requests(engine, a["allowance_id"])
    # Valid for 2 more seconds: inside the safety margin (5 s), so it cannot be spent.
    await apply(engine, GRANTS, [grant(request["payload"], 50_000, expires_in=2)])
    first, second = await allowances_of(engine, 23)
    assert first["status"] == "closed" and first["spent_minor"] == 0 and first["granted_minor"] == 50_000
    [returned] = [r for r in await allowance_returns(engine) if r["allowance_id"] == a["allowance_id"]]
    assert (returned["spent"]["amount_minor"], returned["spent_count"]) == (0, 0)
    # The waiting ticket is neither lost nor denied: it waits for the next allowance's grant.
    assert await scalar(engine, "SELECT outcome FROM decisions WHERE ticket_id = 'T-late'") == "pending_budget"
    [again] = await allowance_requests(engine, second["allowance_id"])
    await apply(engine, GRANTS, [grant(again["payload"], 50_000)])
    assert await scalar(engine, "SELECT outcome FROM decisions WHERE ticket_id = 'T-late'") == "issued"


async def test_a_waiting_ticket_logs_its_final_outcome_when_its_allowance_issues_it(engine, tickets, caplog):
    """`make logs` follows a ticket to its end: the pending_budget line at decision time, then the issue."""
    import logging

    def lines(ticket_id: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "ticket decided"
                and getattr(r, "ticket_id", None) == ticket_id]

    wait = late_ticket("T-logged", "B-logged")
    with caplog.at_level(logging.INFO, logger="services.auto_comp.handlers"):
        await apply(engine, tickets, [wait], partition=26)
        [first] = lines("T-logged")
        assert first.outcome == "pending_budget" and first.correlation_id == wait.correlation_id
        a = await open_allowance(engine, 26)
        [request] = await allowance_requests(engine, a["allowance_id"])
        await apply(engine, GRANTS, [grant(request["payload"], 50_000)])
    first, final = lines("T-logged")
    assert final.outcome == "issued" and final.issued_minor == 1_000 and final.settled == "from_allowance"
    assert final.correlation_id == wait.correlation_id and final.compensation_id == first.compensation_id
    assert final.region == "SG" and final.failed_rule is None


async def test_unanswered_requests_are_sent_again_and_answered_once(engine, tickets, keeper):
    await apply(engine, tickets, [late_ticket("T-slow", "B-slow")], partition=24)
    a = await open_allowance(engine, 24)
    assert (await keeper.run_once())["resent"] == 0  # within the timeout
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE allowances SET requested_at = now() - interval '60 seconds' "
                                "WHERE allowance_id = :a"), {"a": a["allowance_id"]})
    assert (await keeper.run_once())["resent"] == 1
    first, second = await allowance_requests(engine, a["allowance_id"])
    assert first["payload"] == second["payload"]  # the same request: the ledger answers it once
    assert (first["event_id"], second["event_id"]) == (f"{a['allowance_id']}.1.1", f"{a['allowance_id']}.1.2")
    assert (await keeper.run_once())["resent"] == 0  # clock restarted
    # whichever copy the ledger answers (and if it answers both), the voucher is issued once
    await apply(engine, GRANTS, [grant(second["payload"], 10_000), grant(first["payload"], 10_000)])
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE ticket_id = 'T-slow' "
                                "AND voucher_code IS NOT NULL") == 1
    assert (await open_allowance(engine, 24))["granted_minor"] == 10_000


async def test_revoked_partitions_return_their_allowances_to_the_next_owner(engine, tickets):
    a = await granted(engine, tickets, 25, ["T-r1", "T-r2", "T-r3"])
    assert await close_partitions(engine, RULES, [25], "revoked") == 1
    [returned] = [r for r in await allowance_returns(engine) if r["allowance_id"] == a["allowance_id"]]
    assert (returned["spent"]["amount_minor"], returned["spent_count"], returned["reason"]) == (3_000, 3, "revoked")
    assert await close_partitions(engine, RULES, [25], "revoked") == 0
    await apply(engine, tickets, [late_ticket("T-r4", "B-r4")], partition=25)
    assert (await open_allowance(engine, 25))["allowance_id"] != a["allowance_id"]


async def test_keeper_finishes_compensations_left_pending_by_the_saga(engine, keeper):
    """Migration 0006 puts compensations the per-voucher saga left pending in a queue of their own
    (partition -1): any replica's keeper asks for an allowance for them and issues them."""
    valid_until = datetime.now(UTC) + timedelta(days=20)
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO decisions (ticket_id, region, order_id, buyer_id, reason, outcome, detail, strategy_id, "
            "strategy_version, config_version, scenario, currency, proposed_minor, compensation_id, inputs, "
            "event_id, ticket_occurred_at) VALUES ('T-saga', 'SG', 'O-saga', 'B-saga', 'late_delivery', "
            "'pending_budget', 'budget requested', 'sg-late', 3, 'v', 'late_delivery', 'SGD', 1500, 'ac-saga', "
            "'{}', 'e-saga', now())"))
        await conn.execute(text(
            "INSERT INTO compensations (compensation_id, reservation_id, ticket_id, strategy_id, strategy_version, "
            "order_id, scenario, buyer_id, region, reason, kind, currency, status, requested_minor, "
            "fallback_minor, liability_rule, shares, expires_at, request, ticket_occurred_at, partition, "
            "pacing_percent) VALUES ('ac-saga', 'res-saga', 'T-saga', 'sg-late', 3, 'O-saga', 'late_delivery', "
            "'B-saga', 'SG', 'late_delivery', 'voucher', 'SGD', 'pending', 1500, '{}', 'otherwise', "
            "'[{\"party\": \"platform\", \"id\": null, \"percent\": 100}]', :v, '{}', now(), -1, 10)"),
            {"v": valid_until})
    await keeper.run_once()
    [legacy] = [a for a in await allowances_of(engine, -1) if a["status"] == "open"]
    assert legacy["owner"] == "test.tickets:saga-upgrade"
    [request] = await allowance_requests(engine, legacy["allowance_id"])
    assert request["payload"]["at_least"]["amount_minor"] == 1_500
    await apply(engine, GRANTS, [grant(request["payload"], 1_500)])
    assert await scalar(engine, "SELECT outcome FROM decisions WHERE ticket_id = 'T-saga'") == "issued"
    [issued] = [e for e in await issued_events(engine) if e["payload"]["ticket_id"] == "T-saga"]
    assert issued["payload"]["allowance_id"] == legacy["allowance_id"]
    # the validity it was decided with, not a new one
    assert datetime.fromisoformat(issued["payload"]["valid_until"]) == valid_until
