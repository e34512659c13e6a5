"""A shadow strategy counts its own earlier would-issue results for its abuse guard and its one-per-order
rule, so the live shadow record and the backtest agree on the same tickets (issue 15's field cases: 3
would-issue results where the guard allows 2; 12 under a limit of 5)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from services.auto_comp.domain.backtest import HistoricalTicket, run_backtest
from services.auto_comp.handlers import TicketHandler
from services.auto_comp.store import StrategyStore
from shared.contracts.registry import validate_payload
from tests.integration.auto_comp.autocomp_support import (
    NOW,
    RULES,
    STRATEGIES,
    apply,
    late_ticket,
    rows,
    write_strategies,
)

pytestmark = pytest.mark.integration

# A shadow trial that starts a day earlier than the live sg-late (days_late >= 1 against >= 3): on tickets
# 1-2 days late the live strategy grants nothing, so only the shadow's own results can hold its guard.
SHADOW_TRIAL = """
  - id: sg-late-early
    version: 1
    scenario: late_delivery
    regions: [SG]
    currency: SGD
    effective_from: "2026-01-01T00:00:00+08:00"
    enabled: true
    mode: shadow
    priority: 100
    match:
      reasons: [late_delivery]
      thresholds: {days_late: {min: 1}}
    compensation:
      kind: voucher
      amount: {fixed: "3.00"}
      voucher: {validity_days: 30}
    liability:
      - {when: otherwise, shares: [{party: platform, percent: 100}]}
    abuse_guard: {window_days: 30, max_count: %d}
"""


def _handler(tmp_path, max_count: int) -> tuple[TicketHandler, StrategyStore]:
    store = StrategyStore(write_strategies(tmp_path, STRATEGIES.rstrip() + "\n" + SHADOW_TRIAL % max_count))
    return TicketHandler(store, RULES), store


async def _shadow_outcomes(engine, prefix: str) -> Counter[str]:
    found = await rows(engine, "SELECT outcome, failed_rule FROM shadow_decisions WHERE strategy_id = "
                               "'sg-late-early' AND ticket_id LIKE :p", p=f"{prefix}%")
    return Counter(r["failed_rule"] or r["outcome"] for r in found)


def _backtest_outcomes(store: StrategyStore, envelopes) -> Counter[str]:
    tickets = [HistoricalTicket(e.region, e.occurred_at, validate_payload(e)) for e in envelopes]
    [report] = run_backtest(store.current, tickets)
    counts = report.shadow["sg-late-early"]
    # The backtest counts outcomes; one-per-order shows as not_eligible (the only not-eligible cause here).
    return Counter({("abuse_guard" if k == "capped_by_abuse_guard" else
                     "one_per_order_and_scenario" if k == "not_eligible" else k): v for k, v in counts.items() if v})


async def test_three_would_issue_where_the_guard_allows_two(engine, tmp_path):
    handler, store = _handler(tmp_path, 2)
    base = NOW - timedelta(days=5)
    batch = [late_ticket(f"T-sh3-{i}", "B-sh3", days_late=2, occurred_at=base + timedelta(hours=i))
             for i in range(3)]
    await apply(engine, handler, batch)  # all in one batch: later tickets see the earlier ones' results
    assert await _shadow_outcomes(engine, "T-sh3-") == Counter({"would_issue": 2, "abuse_guard": 1})
    live = await rows(engine, "SELECT DISTINCT outcome FROM decisions WHERE ticket_id LIKE 'T-sh3-%'")
    assert [r["outcome"] for r in live] == ["not_eligible"]  # the live strategy granted nothing to count
    assert _backtest_outcomes(store, batch) == await _shadow_outcomes(engine, "T-sh3-")


async def test_twelve_tickets_under_a_limit_of_five_across_batches(engine, tmp_path):
    handler, store = _handler(tmp_path, 5)
    base = NOW - timedelta(days=20)
    tickets = [late_ticket(f"T-sh12-{i:02}", "B-sh12", days_late=1, occurred_at=base + timedelta(days=i))
               for i in range(12)]
    for i in range(0, 12, 3):  # four batches: the guard reads the earlier batches' rows from the table
        await apply(engine, handler, tickets[i:i + 3])
    assert await _shadow_outcomes(engine, "T-sh12-") == Counter({"would_issue": 5, "abuse_guard": 7})
    assert _backtest_outcomes(store, tickets) == await _shadow_outcomes(engine, "T-sh12-")
    detail = await rows(engine, "SELECT detail FROM shadow_decisions WHERE ticket_id = 'T-sh12-11' "
                                "AND strategy_id = 'sg-late-early'")
    assert "5" in detail[0]["detail"]


async def test_one_per_order_counts_the_shadows_own_result(engine, tmp_path):
    handler, store = _handler(tmp_path, 5)
    first = late_ticket("T-sho-1", "B-sho", days_late=2, order_id="O-sho", occurred_at=NOW - timedelta(hours=2))
    second = late_ticket("T-sho-2", "B-sho", days_late=2, order_id="O-sho", occurred_at=NOW - timedelta(hours=1))
    await apply(engine, handler, [first])
    await apply(engine, handler, [second])  # another batch: the order rule reads the table
    assert await _shadow_outcomes(engine, "T-sho-") == Counter({"would_issue": 1,
                                                                 "one_per_order_and_scenario": 1})
    assert _backtest_outcomes(store, [first, second]) == await _shadow_outcomes(engine, "T-sho-")


async def test_a_live_compensation_does_not_use_up_the_shadows_allowance(engine, tmp_path):
    """The shadow would replace the live strategy, so the live grants are not its own: with a guard of 1,
    a buyer compensated live (days_late 4) still gets the shadow's one would-issue result, once."""
    handler, store = _handler(tmp_path, 1)
    batch = [late_ticket(f"T-shl-{i}", "B-shl", days_late=4, occurred_at=NOW - timedelta(hours=5 - i))
             for i in range(2)]
    await apply(engine, handler, batch)
    live = await rows(engine, "SELECT outcome FROM decisions WHERE ticket_id LIKE 'T-shl-%' ORDER BY ticket_id")
    assert [r["outcome"] for r in live] == ["pending_budget", "pending_budget"]
    assert await _shadow_outcomes(engine, "T-shl-") == Counter({"would_issue": 1, "abuse_guard": 1})
    assert _backtest_outcomes(store, batch) == await _shadow_outcomes(engine, "T-shl-")
    stored = await rows(engine, "SELECT buyer_id, order_id, scenario, ticket_occurred_at FROM shadow_decisions "
                                "WHERE ticket_id = 'T-shl-0' AND strategy_id = 'sg-late-early'")
    assert stored == [{"buyer_id": "B-shl", "order_id": "O-T-shl-0", "scenario": "late_delivery",
                       "ticket_occurred_at": batch[0].occurred_at}]
