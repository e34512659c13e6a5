"""Budget allowances in the ledger's book (ADR 0012): grant sizing, charges against an allowance in any order
with its return, duplicates, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.domain.allowance import GrantPolicy, size_grant
from services.ledger.domain.book import Book, HoldStatus, Rejected
from services.ledger.domain.budget import BudgetState, pacing_cap
from shared.contracts.events import AllowanceLimit, AllowanceOutcome
from shared.periods import elapsed_fraction, period_bounds
from shared.regions import region
from tests.unit.ledger.ledger_factories import (
    NOW,
    allowance_request,
    allowance_return,
    issued_from,
    payload_of,
    redeemed,
)

START, END = period_bounds("2026-11", region("SG"))
POLICY = GrantPolicy()


def budget(limit: int | None = 1_000_000, **used: int) -> BudgetState:
    return BudgetState("SG", "2026-11", "SGD", limit, **used)


def grant(b: BudgetState | None, *, at_least: int = 0, wanted: int = 10_000, pacing: int = 100,
          now: datetime = NOW, policy: GrantPolicy = POLICY):
    return size_grant(b, at_least=at_least, wanted=wanted, pacing_percent=pacing, now=now, start=START, end=END,
                      policy=policy)


# ------------------------------------------------------------------ sizing


def test_no_budget_no_grant():
    g = grant(None, at_least=100)
    assert (g.amount, g.limited_by) == (0, AllowanceLimit.NO_BUDGET)
    assert grant(budget(None)).limited_by is AllowanceLimit.NO_BUDGET


def test_what_waiting_tickets_need_is_granted_in_full_and_the_rest_is_a_share_of_the_room():
    g = grant(budget(1_000_000, posted_manual=200_000), at_least=5_000, wanted=500_000)
    # room 800,000; beyond the 5,000 needed at most 10% of the 795,000 left
    assert g.amount == 5_000 + 79_500 and g.limited_by is None and g.retry_after is None
    assert g.expires_at == NOW + POLICY.lease


def test_grants_shrink_as_the_budget_nears_its_limit():
    sizes = []
    b = budget(100_000)
    for _ in range(30):
        g = grant(b, wanted=100_000)
        b.allotted += g.amount
        sizes.append(g.amount)
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] // 10
    assert b.automatic_committed <= b.limit


def test_exhausted_budget_denies_and_says_when_to_ask_again():
    g = grant(budget(10_000, allotted=6_000, reserved=2_000, posted_auto=2_000), at_least=100)
    assert (g.amount, g.limited_by, g.retry_after) == (0, AllowanceLimit.BUDGET_EXHAUSTED, NOW + POLICY.retry)


def test_less_than_asked_for_is_granted_with_the_reason():
    g = grant(budget(10_000, reserved=9_400), at_least=1_000, wanted=2_000)
    assert (g.amount, g.limited_by) == (600, AllowanceLimit.BUDGET_EXHAUSTED)


def test_pacing_uses_usage_with_allowances_and_says_when_the_pace_line_allows_more():
    limit = 3_000_000
    elapsed, total = elapsed_fraction(NOW, START, END)
    cap = pacing_cap(limit, 10, elapsed, total)
    b = budget(limit, allotted=cap - 100)
    g = grant(b, at_least=1_000, wanted=1_000, pacing=10)
    assert (g.amount, g.limited_by) == (100, AllowanceLimit.PACED)
    # At retry_after the pace line has room for the 1,000 asked for (used + 1,000), a microsecond before not.
    target = b.used + 1_000
    e_at, _ = elapsed_fraction(g.retry_after, START, END)
    assert pacing_cap(limit, 10, e_at, total) >= target
    assert pacing_cap(limit, 10, e_at - 1, total) < target
    # An unpaced strategy (100%) is not held back by the pace line.
    assert grant(b, at_least=1_000, wanted=1_000, pacing=100).amount == 1_000


def test_nothing_is_granted_for_a_period_about_to_end_and_expiry_never_passes_it():
    g = grant(budget(), at_least=10, now=END - timedelta(seconds=5))
    assert (g.amount, g.limited_by, g.retry_after) == (0, AllowanceLimit.PERIOD_ENDED, END)
    late = grant(budget(), at_least=10, now=END - timedelta(seconds=40))
    assert late.amount >= 10 and late.expires_at == END


@settings(max_examples=300, deadline=None)
@given(st.integers(1_000_000, 10**9), st.lists(st.tuples(st.integers(0, 5_000), st.integers(1, 10**7),
                                                         st.integers(0, 100), st.integers(0, 400)),
                                               min_size=1, max_size=60))
def test_unspent_allowance_at_the_period_end_stays_within_one_percent(limit, requests):
    """Requests over the period's last minutes, one after another (each waits for at_least, which auto_comp
    spends at once, and spends a random part of the rest; allowances return their unspent rest when they
    expire): what is still held unspent when the period ends is within 1% of the budget."""
    b = budget(limit)
    held: list[tuple[datetime, int]] = []  # (expiry, unspent) of allowances not returned yet
    for at_least, extra, spent_percent, seconds_left in sorted(requests, key=lambda r: -r[3]):
        now = END - timedelta(seconds=seconds_left + POLICY.min_lease.total_seconds())
        for expiry, unspent in [h for h in held if h[0] <= now]:
            b.allotted -= unspent  # returned at its expiry
            held.remove((expiry, unspent))
        g = grant(b, at_least=at_least, wanted=at_least + extra, now=now)
        if g.amount == 0:
            continue
        assert g.expires_at is not None and g.expires_at <= END
        spent = min(g.amount, at_least) + (g.amount - min(g.amount, at_least)) * spent_percent // 100
        b.allotted += g.amount - spent  # outstanding: granted, not spent (spends became holds)
        b.reserved += spent
        held.append((g.expires_at, g.amount - spent))
        assert b.automatic_committed <= limit
    assert sum(unspent for expiry, unspent in held if expiry >= END) <= limit // 100


# ------------------------------------------------------------------ the book


def book(limit: int = 1_000_000, **state) -> tuple[Book, dict]:
    s = {"budgets": {("SG", "2026-11"): budget(limit)}, "holds": {}, "compensations": {}, "allowances": {}, **state}
    return Book(now=NOW, **s), s


def apply(b: Book, *envs) -> None:
    for env in envs:
        b.apply(env, payload_of(env))


def test_a_grant_is_held_at_once_and_charges_move_it_to_holds_or_postings():
    b, s = book()
    apply(b, allowance_request("A1", at_least=1_000, wanted=20_000))
    [(_, answer)] = b.out.allowance_answers
    assert answer.outcome is AllowanceOutcome.GRANTED
    assert answer.granted_total.amount_minor == answer.granted.amount_minor
    granted = answer.granted.amount_minor
    budget_row = s["budgets"][("SG", "2026-11")]
    assert (budget_row.allotted, budget_row.used) == (granted, granted)
    apply(b, issued_from("A1", "c1", 700), issued_from("A1", "c2", 300, kind="store_credit"))
    assert (budget_row.allotted, budget_row.reserved, budget_row.posted_auto) == (granted - 1_000, 700, 300)
    assert s["holds"]["c1"].status is HoldStatus.PENDING and s["holds"]["c1"].allowance_id == "A1"
    assert s["holds"]["c2"].status is HoldStatus.POSTED
    a = s["allowances"]["A1"]
    assert (a.charged, a.charged_count, a.outstanding) == (1_000, 2, granted - 1_000)
    # the voucher closes as any voucher does: redeemed for less, the rest goes back to the budget
    apply(b, redeemed("c1", 500))
    assert (budget_row.reserved, budget_row.posted_auto, budget_row.released) == (0, 800, 200)


@pytest.mark.parametrize("return_first", [True, False])
def test_the_return_releases_the_unspent_rest_whatever_order_the_charges_arrive_in(return_first):
    b, s = book()
    apply(b, allowance_request("A2", at_least=2_000, wanted=2_000))
    granted = s["allowances"]["A2"].granted
    charges = [issued_from("A2", "d1", 1_200), issued_from("A2", "d2", 300)]
    ret = allowance_return("A2", 1_500, 2)
    apply(b, *([ret, *charges] if return_first else [*charges, ret]))
    a, row = s["allowances"]["A2"], s["budgets"][("SG", "2026-11")]
    assert (a.released, a.charged, a.outstanding, a.settled) == (granted - 1_500, 1_500, 0, True)
    assert (row.allotted, row.reserved, row.released) == (0, 1_500, granted - 1_500)


def test_repeated_requests_and_returns_change_nothing():
    b, s = book()
    first = allowance_request("A3", 1, at_least=500, wanted=5_000)
    apply(b, first, allowance_request("A3", 1, at_least=999, wanted=9_999))
    (_, one), (_, two) = b.out.allowance_answers
    assert one == two and len(b.out.new_grants) == 1  # answered from what was decided
    allotted = s["budgets"][("SG", "2026-11")].allotted
    assert allotted == s["allowances"]["A3"].granted == one.granted.amount_minor
    apply(b, allowance_return("A3", 0, 0), allowance_return("A3", 0, 0))
    assert s["budgets"][("SG", "2026-11")].allotted == 0
    assert b.out.ignored[-1][1] == "allowance already returned"
    with pytest.raises(Rejected, match="was returned with 0"):
        apply(b, allowance_return("A3", 100, 1))
    # asking under a returned allowance gets nothing
    apply(b, allowance_request("A3", 2, at_least=100, wanted=100))
    assert b.out.allowance_answers[-1][1].limited_by is AllowanceLimit.ALLOWANCE_CLOSED


def test_charges_beyond_the_grant_or_the_reported_spend_are_refused():
    b, s = book()
    apply(b, allowance_request("A4", at_least=1_000, wanted=1_000))
    granted = s["allowances"]["A4"].granted
    before = s["budgets"][("SG", "2026-11")].allotted
    with pytest.raises(Rejected, match="beyond the"):
        apply(b, issued_from("A4", "e1", granted + 1))
    assert s["budgets"][("SG", "2026-11")].allotted == before and "e1" not in s["compensations"]
    apply(b, issued_from("A4", "e2", 400), allowance_return("A4", 600, 2))
    with pytest.raises(Rejected, match="beyond the 600 reported spent"):
        apply(b, issued_from("A4", "e3", 201))
    apply(b, issued_from("A4", "e4", 200))
    with pytest.raises(Rejected, match="all charged already"):
        apply(b, issued_from("A4", "e5", 1))
    with pytest.raises(Rejected, match="unknown allowance"):
        apply(b, issued_from("A-none", "e6", 1))
    # A return with nothing granted before it: recorded, so a request arriving after it gets nothing.
    apply(b, allowance_return("A5", 0, 0), allowance_request("A5", at_least=10, wanted=10))
    assert s["allowances"]["A5"].returned and s["allowances"]["A5"].granted == 0
    assert b.out.allowance_answers[-1][1].limited_by is AllowanceLimit.ALLOWANCE_CLOSED
    with pytest.raises(Rejected, match="never granted anything"):
        apply(b, allowance_return("A6", 10, 1))


def test_a_return_cannot_report_less_than_was_charged_or_more_than_was_granted():
    b, s = book()
    apply(b, allowance_request("A7", at_least=1_000, wanted=1_000), issued_from("A7", "f1", 800))
    with pytest.raises(Rejected, match="already charged"):
        apply(b, allowance_return("A7", 700, 1))
    with pytest.raises(Rejected, match="reported spent of"):
        apply(b, allowance_return("A7", s["allowances"]["A7"].granted + 1, 2))


def test_allowances_and_manual_spend_share_the_limit():
    from tests.unit.ledger.ledger_factories import manual

    b, s = book(limit=10_000)
    apply(b, manual("m1", 9_000))
    apply(b, allowance_request("A8", at_least=2_000, wanted=2_000))
    answer = b.out.allowance_answers[-1][1]
    assert answer.granted.amount_minor == 1_000 and answer.limited_by is AllowanceLimit.BUDGET_EXHAUSTED
    assert answer.pace is not None and answer.pace.used.amount_minor == 10_000
    assert s["budgets"][("SG", "2026-11")].automatic_committed <= 10_000


def test_requests_for_a_period_the_ledger_does_not_budget_are_denied_as_no_budget():
    b, _ = book()
    apply(b, allowance_request("A9", period="2026-11-03", at_least=1, wanted=1))
    answer = b.out.allowance_answers[-1][1]
    assert answer.limited_by is AllowanceLimit.NO_BUDGET and "per month" in answer.detail


def test_grants_expire_by_the_lease_and_the_period_end():
    late = datetime(2026, 11, 30, 15, 59, 30, tzinfo=UTC)  # 30 s before the SG period ends (UTC+8)
    b = Book(now=late, budgets={("SG", "2026-11"): budget()}, allowances={})
    apply(b, allowance_request("A10", at_least=10, wanted=10, at=late))
    assert b.out.allowance_answers[-1][1].expires_at == END
