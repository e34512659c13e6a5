"""The ledger's pure domain: periods, budget decisions, journal rules and the book's event handling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.ledger.domain import journal
from services.ledger.domain.book import Book, HoldStatus, Rejected
from services.ledger.domain.budget import BudgetState, crossed_thresholds, decide, pacing_cap
from shared.contracts.events import DenialReason
from shared.periods import (
    InvalidPeriod,
    elapsed_fraction,
    period_bounds,
    period_of,
    validate_period,
)
from shared.regions import region
from tests.unit.ledger.ledger_factories import (
    NOW,
    PLATFORM,
    carrier,
    correction,
    expired,
    issued,
    manual,
    payload_of,
    redeemed,
    request,
    revoked,
    seller,
)


def book(limit: int | None = 10_000, region_code: str = "SG", period: str = "2026-11", **kw) -> Book:
    currency = {"SG": "SGD", "ID": "IDR", "US": "USD"}[region_code]
    budgets = {(region_code, period): BudgetState(region_code, period, currency, limit)}
    return Book(now=kw.pop("now", NOW), budgets=budgets, **kw)


def run(b: Book, *envelopes) -> Book:
    """Apply the envelopes as one batch, closed as the handler closes it (the budget posted once)."""
    for env in envelopes:
        b.apply(env, payload_of(env))
    b.finish()
    return b


def budget_of(b: Book, region_code: str = "SG", period: str = "2026-11") -> BudgetState:
    return b.budgets[(region_code, period)]


def party_net(b: Book, compensation_id: str) -> dict[str, int]:
    """Net charge per liable party of one compensation over the book's journal output."""
    net: dict[str, int] = {}
    for t in b.out.transactions:
        if t.compensation_id == compensation_id:
            for e in t.entries:
                if journal.is_party_account(e.account):
                    net[e.account] = net.get(e.account, 0) + e.amount_minor
    return net


# ---------------------------------------------------------------- periods


def test_month_is_cut_in_the_region_time_zone():
    jakarta = region("ID")  # UTC+7
    assert period_of(datetime(2026, 10, 31, 16, 59, tzinfo=UTC), jakarta) == "2026-10"
    assert period_of(datetime(2026, 10, 31, 17, 0, tzinfo=UTC), jakarta) == "2026-11"
    assert period_bounds("2026-11", jakarta) == (datetime(2026, 10, 31, 17, tzinfo=UTC),
                                                 datetime(2026, 11, 30, 17, tzinfo=UTC))


def test_month_bounds_follow_daylight_saving():
    start, end = period_bounds("2026-11", region("US"))  # EDT at the start, EST at the end
    assert start == datetime(2026, 11, 1, 4, tzinfo=UTC)
    assert end == datetime(2026, 12, 1, 5, tzinfo=UTC)
    assert period_bounds("2026-12", region("US"))[1] == datetime(2027, 1, 1, 5, tzinfo=UTC)


def test_day_periods():
    assert period_of(datetime(2026, 11, 21, 16, 0, tzinfo=UTC), region("SG"), "day") == "2026-11-22"
    assert period_bounds("2026-11-22", region("SG")) == (datetime(2026, 11, 21, 16, tzinfo=UTC),
                                                         datetime(2026, 11, 22, 16, tzinfo=UTC))


@pytest.mark.parametrize("bad", ["2026-13", "2026-1", "26-11", "2026-02-30", "november", ""])
def test_invalid_periods_are_refused(bad):
    with pytest.raises(InvalidPeriod):
        period_bounds(bad, region("SG"))


def test_period_must_match_granularity():
    assert validate_period("2026-11", "month") == "2026-11"
    with pytest.raises(InvalidPeriod):
        validate_period("2026-11-01", "month")
    with pytest.raises(InvalidPeriod):
        validate_period("2026-11", "day")


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError):
        period_of(datetime(2026, 11, 1), region("SG"))


def test_elapsed_fraction_is_clamped():
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    assert elapsed_fraction(start - timedelta(hours=1), start, end) == (0, 86_400_000_000)
    assert elapsed_fraction(start + timedelta(hours=6), start, end) == (21_600_000_000, 86_400_000_000)
    assert elapsed_fraction(end + timedelta(days=3), start, end) == (86_400_000_000, 86_400_000_000)


# ---------------------------------------------------------------- budget decisions


def test_no_budget_denies():
    assert decide(None, [100]).denial is DenialReason.NO_BUDGET
    assert decide(BudgetState("SG", "2026-11", "SGD", None), [100]).denial is DenialReason.NO_BUDGET


def test_pending_reservations_count_at_once():
    """Blnk #181: six holds of 1,000 against 5,000 must not all be accepted."""
    b = BudgetState("SG", "2026-11", "SGD", 5_000)
    granted = []
    for _ in range(6):
        d = decide(b, [1_000])
        if d.amount:
            b.reserved += d.amount
        granted.append(d.amount)
    assert granted == [1_000] * 5 + [None]
    assert b.reserved == 5_000


def test_first_fallback_tier_that_fits_is_reserved():
    b = BudgetState("SG", "2026-11", "SGD", 1_000, reserved=600)
    assert decide(b, [500, 400, 300]).amount == 400
    assert decide(b, [500, 450]).denial is DenialReason.BUDGET_EXHAUSTED
    assert decide(b, [400]).amount == 400  # exactly at the limit fits


def test_manual_usage_counts_against_automatic_requests():
    b = BudgetState("SG", "2026-11", "SGD", 1_000, posted_manual=900)
    assert decide(b, [200, 100]).amount == 100


def test_pacing_caps_usage_by_elapsed_time():
    assert pacing_cap(30_000, 10, 1, 3) == 13_000  # a third of the period + 10% allowance
    assert pacing_cap(100, 0, 1, 3) == 33  # rounds down: never lets through a fraction more
    b = BudgetState("SG", "2026-11", "SGD", 30_000, reserved=12_000)
    paced = decide(b, [2_000], allowance_percent=10, elapsed=1, total=3)
    assert paced.denial is DenialReason.PACED
    assert decide(b, [2_000, 1_000], allowance_percent=10, elapsed=1, total=3).amount == 1_000
    b.reserved = 29_500
    assert decide(b, [2_000], allowance_percent=10, elapsed=3, total=3).denial is DenialReason.BUDGET_EXHAUSTED


def test_thresholds_fire_once_each():
    b = BudgetState("SG", "2026-11", "SGD", 1_000, reserved=499)
    assert crossed_thresholds(b) == []
    b.reserved = 850
    assert crossed_thresholds(b) == [50, 80]
    assert crossed_thresholds(b) == []
    b.posted_manual = 500
    assert crossed_thresholds(b) == [100]


# ---------------------------------------------------------------- journal


def test_transactions_must_balance_and_have_two_entries():
    e = journal.Entry
    with pytest.raises(journal.UnbalancedTransaction):
        journal.Transaction("t", journal.TxKind.CHARGE, "SG", "c", "e", NOW, (e("platform", 5, "SGD"),))
    with pytest.raises(journal.UnbalancedTransaction):
        journal.Transaction("t", journal.TxKind.CHARGE, "SG", "c", "e", NOW,
                            (e("platform", 5, "SGD"), e(journal.PAYABLE, -4, "SGD")))
    with pytest.raises(journal.UnbalancedTransaction):  # balanced in total but not per currency
        journal.Transaction("t", journal.TxKind.CHARGE, "SG", "c", "e", NOW,
                            (e("platform", 5, "SGD"), e(journal.PAYABLE, -5, "USD")))


def test_unknown_accounts_are_refused():
    with pytest.raises(journal.UnknownAccount):
        journal.check_account_key("buyer:B1")
    with pytest.raises(journal.UnknownAccount):
        journal.charge(tx_id="t", region="SG", currency="SGD", compensation_id="c", source_event_id="e",
                       occurred_at=NOW, shares=[("cash", 10)])


def test_charge_split_and_reversal_negates():
    tx = journal.charge(tx_id="charge:c:0", region="SG", currency="SGD", compensation_id="c",
                        source_event_id="e1", occurred_at=NOW, shares=[("seller:S1", 700), ("carrier:C1", 300)])
    assert [(x.account, x.amount_minor) for x in tx.entries] == [
        ("seller:S1", 700), ("carrier:C1", 300), (journal.PAYABLE, -1_000)]
    rev = journal.reversal(tx, tx_id="reversal:charge:c:0", source_event_id="e2", occurred_at=NOW)
    assert rev.reverses_tx_id == "charge:c:0"
    assert [x.amount_minor for x in rev.entries] == [-700, -300, 1_000]


def test_negative_shares_are_refused():
    with pytest.raises(journal.UnbalancedTransaction):
        journal.charge(tx_id="t", region="SG", currency="SGD", compensation_id="c", source_event_id="e",
                       occurred_at=NOW, shares=[("seller:S1", 1_200), ("carrier:C1", -200)])


# ---------------------------------------------------------------- the book


def test_voucher_lifecycle_partial_redemption_posts_used_part_and_releases_rest():
    redemption = redeemed("comp-R1", 300)
    b = run(book(), request("R1", 1_000), issued("R1", 800), redemption)
    hold, budget = b.holds["R1"], budget_of(b)
    assert (hold.status, hold.posted, hold.released) == (HoldStatus.POSTED, 300, 700)
    assert (budget.reserved, budget.posted_auto, budget.released) == (0, 300, 700)
    kinds = [(t.kind, t.tx_id) for t in b.out.transactions]
    # the liable party's charge comes down to what the buyer received: reversed, and charged again at 300;
    # the budget is posted once for the batch, the hold keeping the posting's id
    assert kinds == [(journal.TxKind.CHARGE, "charge:comp-R1:0"),
                     (journal.TxKind.REVERSAL, "reversal:charge:comp-R1:0"),
                     (journal.TxKind.CHARGE, "charge:comp-R1:1"),
                     (journal.TxKind.BUDGET_POSTING, f"posting:{redemption.event_id}")]
    assert hold.posting_tx_id == f"posting:{redemption.event_id}"
    assert b.out.transactions[2].corrects_tx_id == "charge:comp-R1:0"
    assert b.out.transactions[2].correction_id is None
    assert party_net(b, "comp-R1") == {"seller:S1": 300}
    assert b.out.decisions[0][1].reserved_amount.amount_minor == 1_000


def test_issue_below_reservation_releases_the_difference_at_once():
    b = run(book(), request("R1", 1_000), issued("R1", 600))
    assert budget_of(b).reserved == 600
    assert b.holds["R1"].status is HoldStatus.PENDING


def test_spent_when_issued_kinds_post_at_once():
    b = run(book(), request("R1", 1_000, kind="store_credit"), issued("R1", 1_000, kind="store_credit"))
    assert budget_of(b).posted_auto == 1_000 and budget_of(b).reserved == 0
    assert b.holds["R1"].status is HoldStatus.POSTED


def test_expiry_voids_and_counts_breakage_revocation_does_not():
    b = run(book(), request("R1", 500), issued("R1", 500), expired("comp-R1"),
            request("R2", 400), issued("R2", 400), revoked("comp-R2"))
    budget = budget_of(b)
    assert (budget.reserved, budget.posted_auto, budget.breakage, budget.released) == (0, 0, 500, 400)
    assert b.holds["R1"].status is b.holds["R2"].status is HoldStatus.VOIDED
    # the buyer received nothing: each charge is reversed, nothing is charged again
    assert [t.tx_id for t in b.out.transactions] == ["charge:comp-R1:0", "reversal:charge:comp-R1:0",
                                                     "charge:comp-R2:0", "reversal:charge:comp-R2:0"]
    assert party_net(b, "comp-R1") == party_net(b, "comp-R2") == {"seller:S1": 0}
    assert b.compensations["comp-R1"].current_charge_tx is None


def test_an_expiry_before_the_validity_ends_is_applied_and_flagged():
    """Seen: an expiry applied weeks early with no trace. It still releases the budget (the promotion system
    says the voucher can no longer be used) and settles the charge, and it is flagged with its ids."""
    early_at = NOW + timedelta(days=9)  # the voucher is valid for 30 days from NOW
    b = run(book(), request("R1", 500), issued("R1", 500), expired("comp-R1", at=early_at))
    assert budget_of(b).breakage == 500 and budget_of(b).reserved == 0
    assert b.holds["R1"].status is HoldStatus.VOIDED and party_net(b, "comp-R1") == {"seller:S1": 0}
    [flag] = b.out.early_expiries
    assert (flag.compensation_id, flag.reservation_id, flag.region) == ("comp-R1", "R1", "SG")
    assert flag.valid_until == NOW + timedelta(days=30) and flag.expired_at == early_at
    assert flag.early_by == timedelta(days=21)
    assert flag.event_id and flag.correlation_id


def test_an_expiry_on_time_or_within_the_clock_tolerance_is_not_flagged():
    valid_until = NOW + timedelta(days=30)
    b = run(book(), request("R1", 500), issued("R1", 500), expired("comp-R1", at=valid_until),
            request("R2", 500), issued("R2", 500), expired("comp-R2", at=valid_until - timedelta(minutes=4)),
            request("R3", 500), issued("R3", 500), expired("comp-R3", at=valid_until - timedelta(minutes=6)))
    assert [f.compensation_id for f in b.out.early_expiries] == ["comp-R3"]
    # a redelivered early expiry of a closed voucher changes nothing and is not flagged again
    again = run(book(holds=b.holds, compensations=b.compensations), expired("comp-R3", at=NOW))
    assert not again.out.early_expiries and not again.out.transactions


def test_corrections_keep_the_people_behind_them():
    b = run(book(), manual("M1", 1_000),
            correction("K1", "M1", 800, shares=[(carrier(), 800)], auditor="ada"),
            correction("K1-reversal", "M1", 1_000, shares=[(seller(), 1_000)], corrects="K1", auditor="sam",
                       raised_by="lin", disputed_auditor="ada"))
    first, reversal = b.out.corrections
    assert (first.auditor_id, first.dispute_raised_by, first.disputed_auditor_id) == ("ada", None, None)
    assert (reversal.auditor_id, reversal.dispute_raised_by, reversal.disputed_auditor_id) == ("sam", "lin", "ada")


def test_resent_request_gets_the_same_answer_not_a_second_reservation():
    b = run(book(limit=1_000), request("R1", 800), request("R1", 800), request("R2", 800),
            request("R2", 800))
    assert budget_of(b).reserved == 800
    answers = [(d.reservation_id, d.outcome.value, d.denial_reason) for _, d in b.out.decisions]
    assert answers == [("R1", "reserved", None), ("R1", "reserved", None),
                       ("R2", "denied", DenialReason.BUDGET_EXHAUSTED), ("R2", "denied", DenialReason.BUDGET_EXHAUSTED)]


def _again(b: Book, *rids: str, now: datetime | None = None) -> list[tuple[str, str, str | None, int | None]]:
    """Re-send the requests (new event ids) to a book holding the same state, possibly later; the answers."""
    again = Book(now=now or b.now, grace=b.grace, budgets=b.budgets, holds=b.holds, compensations=b.compensations)
    run(again, *(request(rid, 1_000, kind=b.holds[rid].kind) for rid in rids))
    return [(d.reservation_id, d.outcome.value, d.denial_reason and d.denial_reason.value,
             d.reserved_amount and d.reserved_amount.amount_minor) for _, d in again.out.decisions]


def test_resent_request_is_answered_by_the_reservations_state_now():
    grace = timedelta(hours=1)
    b = run(book(limit=10_000, grace=grace),
            request("LIVE", 1_000), request("DENY", 20_000),  # DENY: more than the limit, no fallbacks
            request("OPEN", 1_000), issued("OPEN", 800),  # an outstanding voucher
            request("USED", 1_000), issued("USED", 400), redeemed("comp-USED", 100), request("GONE", 1_000),
            request("CREDIT", 1_000, kind="store_credit"), issued("CREDIT", 1_000, kind="store_credit"))
    assert [b.holds[r].status for r in ("OPEN", "USED", "CREDIT")] == [HoldStatus.PENDING, HoldStatus.POSTED,
                                                                       HoldStatus.POSTED]
    consumed = [("OPEN", "reserved", None, 1_000), ("USED", "reserved", None, 1_000),
                ("CREDIT", "reserved", None, 1_000)]
    # While live: the first answer again, the amount decided then (not what was issued or is held now).
    assert _again(b, "LIVE", "DENY", "OPEN", "USED", "CREDIT") == [
        ("LIVE", "reserved", None, 1_000), ("DENY", "denied", "budget_exhausted", None), *consumed]
    # Past the expiry, within the grace: the hold is still live (an issue made before the expiry may
    # still arrive), so still reserved; auto_comp itself no longer issues on it.
    expiry = b.holds["LIVE"].expires_at
    assert _again(b, "LIVE", now=expiry + grace - timedelta(seconds=1))[0][1] == "reserved"
    # Past expiry + grace, not yet swept: lapsed by the sweeper's own rule, so denied (the hold is left
    # for the sweeper to void; nothing here writes it).
    at_sweep = expiry + grace
    assert _again(b, "LIVE", now=at_sweep) == [("LIVE", "denied", "reservation_expired", None)]
    assert b.holds["LIVE"].status is HoldStatus.PENDING and budget_of(b).reserved >= 1_000
    # Swept (voided unused): denied. Issued ones stay reserved whatever happened to the voucher since:
    # still open, redeemed, posted at issue, expired, revoked or lapsed at the end of its validity.
    sweeper = Book(now=at_sweep, budgets=b.budgets, holds=b.holds, compensations=b.compensations)
    assert sweeper.sweep("GONE", grace) and b.holds["GONE"].closed_by == "reservation_expired"
    assert _again(b, "GONE", "OPEN", "USED", "CREDIT") == [("GONE", "denied", "reservation_expired", None),
                                                            *consumed]
    run(b, expired("comp-OPEN"))
    assert b.holds["OPEN"].status is HoldStatus.VOIDED
    assert _again(b, "OPEN", now=at_sweep + timedelta(days=90)) == consumed[:1]


def test_request_period_is_cut_from_occurred_at_in_region_time_zone():
    late_utc = datetime(2026, 10, 31, 17, 30, tzinfo=UTC)  # already November in Jakarta
    b = run(book(region_code="ID"), request("R1", 5_000, region="ID", at=late_utc))
    assert b.out.decisions[0][1].budget_period == "2026-11"
    b = run(book(region_code="ID", period="2026-10"), request("R1", 5_000, region="ID", at=late_utc))
    assert b.out.decisions[0][1].denial_reason is DenialReason.NO_BUDGET


def test_redemption_before_issue_is_parked_then_applied():
    b = run(book(), request("R1", 1_000), redeemed("comp-R1", 250))
    assert len(b.new_parked()) == 1 and budget_of(b).posted_auto == 0
    run(b, issued("R1", 1_000))
    assert budget_of(b).posted_auto == 250 and budget_of(b).released == 750
    assert b.out.parked_done and not b.parked


def test_without_park_window_unknown_compensation_is_rejected():
    b = book(park=False)
    with pytest.raises(Rejected, match="unknown compensation"):
        run(b, correction("X1", "comp-nope", 100))
    assert not b.out.transactions


def test_manual_compensation_always_charged_and_exceeding_alerts():
    b = run(book(limit=1_000), manual("M1", 600), manual("M2", 600))
    budget = budget_of(b)
    assert budget.posted_manual == 1_200
    alerts = [(a.event_type, getattr(a.payload, "threshold_percent", None)) for a in b.out.alerts]
    assert alerts == [("budget.threshold_crossed", 50), ("budget.threshold_crossed", 80),
                      ("budget.threshold_crossed", 100), ("budget.exceeded", None)]
    assert b.out.overruns[0].used == 1_200
    assert decide(budget, [1]).denial is DenialReason.BUDGET_EXHAUSTED


def test_manual_without_budget_is_recorded():
    b = run(book(limit=None), manual("M1", 600))
    assert budget_of(b).posted_manual == 600 and budget_of(b).limit is None and not b.out.alerts


def test_split_liability_charges_each_party():
    b = run(book(), manual("M1", 1_001, shares=[(seller(), 667), (carrier(), 334)]))
    charge = b.out.transactions[0]
    assert {(e.account, e.amount_minor) for e in charge.entries} == {
        ("seller:S1", 667), ("carrier:C1", 334), (journal.PAYABLE, -1_001)}


def test_correction_and_correction_of_a_correction():
    b = run(book(), manual("M1", 1_000),
            correction("K1", "M1", 800, shares=[(carrier(), 800)]),
            correction("K2", "M1", 1_000, shares=[(PLATFORM, 1_000)], corrects="K1"))
    txs = {t.tx_id: t for t in b.out.transactions}
    assert txs["reversal:charge:M1:0"].reverses_tx_id == "charge:M1:0"
    assert txs["charge:M1:1"].corrects_tx_id == "charge:M1:0"
    assert txs["reversal:charge:M1:1"].reverses_tx_id == "charge:M1:1"
    assert txs["charge:M1:2"].corrects_tx_id == "charge:M1:1"
    net: dict[str, int] = {}
    for t in b.out.transactions:
        for e in t.entries:
            net[e.account] = net.get(e.account, 0) + e.amount_minor
    assert net["seller:S1"] == 0 and net["carrier:C1"] == 0 and net["platform"] == 1_000
    assert net[journal.PAYABLE] == -1_000


def test_partial_redemption_releases_each_party_its_share_of_the_remainder():
    shares = [(seller(), 667), (carrier(), 333)]
    b = run(book(), request("R1", 1_000), issued("R1", 1_000, shares=shares), redeemed("comp-R1", 500),
            redeemed("comp-R1", 900))  # a voucher is used once: a second redemption changes nothing
    assert party_net(b, "comp-R1") == {"seller:S1": 334, "carrier:C1": 166}  # 333.5 / 166.5, exact total
    assert budget_of(b).posted_auto == 500
    assert b.compensations["comp-R1"].current_amount == 500
    assert "charge:comp-R1:2" not in {t.tx_id for t in b.out.transactions}


def test_full_redemption_and_posted_at_issue_kinds_keep_the_full_charge():
    b = run(book(), request("R1", 1_000), issued("R1", 800), redeemed("comp-R1", 800),
            request("R2", 600, kind="store_credit"), issued("R2", 600, kind="store_credit"), expired("comp-R2"),
            manual("M1", 400, kind="voucher"), expired("M1"))
    assert [t.kind for t in b.out.transactions].count(journal.TxKind.REVERSAL) == 0
    assert party_net(b, "comp-R1") == {"seller:S1": 800}
    assert party_net(b, "comp-R2") == {"seller:S1": 600}  # a refund is received in full when issued
    assert party_net(b, "M1") == {"seller:S1": 400}  # manual compensations post their full value at issue


def test_correction_of_an_open_voucher_then_redemption_charges_at_most_the_received_value():
    b = run(book(), request("R1", 1_000), issued("R1", 1_000),
            correction("K1", "comp-R1", 600, shares=[(carrier(), 400), (PLATFORM, 200)]),
            redeemed("comp-R1", 300))
    assert party_net(b, "comp-R1") == {"seller:S1": 0, "carrier:C1": 200, "platform": 100}
    b = run(book(), request("R1", 1_000), issued("R1", 1_000),
            correction("K1", "comp-R1", 200, shares=[(carrier(), 200)]), redeemed("comp-R1", 300))
    assert party_net(b, "comp-R1") == {"seller:S1": 0, "carrier:C1": 200}  # already below: left alone
    assert b.out.transactions[-1].kind is journal.TxKind.BUDGET_POSTING


def test_correction_of_a_closed_voucher_is_capped_at_the_received_value():
    b = run(book(), request("R1", 1_000), issued("R1", 1_000), redeemed("comp-R1", 300),
            correction("K1", "comp-R1", 900, shares=[(carrier(), 600), (PLATFORM, 300)]),
            request("R2", 500), issued("R2", 500), expired("comp-R2"),
            correction("K2", "comp-R2", 500, shares=[(carrier(), 500)]))
    assert party_net(b, "comp-R1") == {"seller:S1": 0, "carrier:C1": 200, "platform": 100}
    assert party_net(b, "comp-R2") == {"seller:S1": 0}  # received nothing: nobody is charged again
    k1, k2 = b.corrections["K1"], b.corrections["K2"]
    assert (k1.corrected_amount, k1.reversal_tx_id, k1.charge_tx_id) == (900, "reversal:charge:comp-R1:1",
                                                                         "charge:comp-R1:2")
    assert (k2.corrected_amount, k2.reversal_tx_id, k2.charge_tx_id) == (500, None, None)
    assert b.compensations["comp-R2"].current_charge_tx is None


def test_correction_to_zero_then_duplicate_correction_ignored():
    first = manual("M1", 1_000)
    b = run(book(), first, correction("K1", "M1", 0), correction("K1", "M1", 0))
    assert [t.tx_id for t in b.out.transactions] == ["charge:M1:0", "reversal:charge:M1:0", f"posting:{first.event_id}"]
    assert b.compensations["M1"].current_charge_tx is None


@pytest.mark.parametrize("bad, match", [
    (lambda: issued("R9", 100), "unknown reservation"),
    (lambda: issued("R1", 2_000), "exceeds the reserved"),
    (lambda: correction("K9", "comp-R1", 10, corrects="K-none"), "unknown correction"),
])
def test_bad_events_are_rejected_and_write_nothing(bad, match):
    b = run(book(), request("R1", 1_000))
    before = len(b.out.transactions)
    if "K9" in match or "correction" in match:
        run(b, issued("R1", 1_000))
        before = len(b.out.transactions)
    with pytest.raises(Rejected, match=match):
        run(b, bad())
    assert len(b.out.transactions) == before


def test_redemption_above_voucher_value_is_rejected():
    b = run(book(), request("R1", 1_000), issued("R1", 500))
    with pytest.raises(Rejected, match="exceeds the voucher value"):
        run(b, redeemed("comp-R1", 501))
    assert budget_of(b).reserved == 500


def test_duplicate_issue_with_new_event_id_is_not_charged_twice():
    b = run(book(), request("R1", 1_000), issued("R1", 1_000), issued("R1", 1_000))
    assert [t.tx_id for t in b.out.transactions] == ["charge:comp-R1:0"]


def test_sweeper_voids_stale_reservations():
    b = run(book(), request("R1", 1_000), request("R2", 500), issued("R2", 500, valid_days=30))
    later = Book(now=NOW + timedelta(days=1), budgets=b.budgets, holds=b.holds, compensations=b.compensations)
    assert later.sweep("R1", timedelta(hours=1)) and not later.sweep("R2", timedelta(hours=1))
    assert budget_of(later).reserved == 500
    much_later = Book(now=NOW + timedelta(days=40), budgets=b.budgets, holds=b.holds,
                      compensations=b.compensations)
    assert much_later.sweep("R2", timedelta(days=1))
    assert budget_of(much_later).reserved == 0 and budget_of(much_later).breakage == 500
    # the voucher lapsed unused: its charge is reversed, at the end of its validity, by the sweep
    [reversal] = much_later.out.transactions
    assert (reversal.tx_id, reversal.source_event_id) == ("reversal:charge:comp-R2:0", "sweep:R2")
    assert reversal.occurred_at == b.holds["R2"].valid_until
    lone = run(book(), request("R9", 100), issued("R9", 100, valid_days=1))
    with pytest.raises(RuntimeError, match="not loaded"):  # the handler loads the swept compensations
        Book(now=NOW + timedelta(days=40), budgets=lone.budgets, holds=lone.holds).sweep("R9", timedelta(days=1))


def test_a_batch_posts_each_budget_once_and_every_part_keeps_its_posting():
    envelopes = [manual(f"MB{i}", 100 * (i + 1)) for i in range(4)]
    b = book(limit=None)
    b.budgets[("ID", "2026-11")] = BudgetState("ID", "2026-11", "IDR", None)
    b = run(b, *envelopes, manual("MB-ID", 1_000, region="ID"))
    postings = [t for t in b.out.transactions if t.kind is journal.TxKind.BUDGET_POSTING]
    assert [(p.tx_id, p.region, p.compensation_id) for p in postings] == [
        (f"posting:{envelopes[0].event_id}", "SG", None), (f"posting:{b.compensations['MB-ID'].issued_event_id}",
                                                            "ID", "MB-ID")]
    sg = postings[0]
    assert [(e.account, e.amount_minor) for e in sg.entries] == [("compensation_expense", 1_000),
                                                                 ("budget:2026-11", -1_000)]
    assert {c.posting_tx_id for c in b.compensations.values() if c.region == "SG"} == {sg.tx_id}
    b.finish()  # closing twice posts nothing more
    assert len([t for t in b.out.transactions if t.kind is journal.TxKind.BUDGET_POSTING]) == 2


def test_transactions_are_stored_as_transfers_and_read_back_as_their_entries():
    charge = journal.charge(tx_id="c", region="SG", currency="SGD", compensation_id="x", source_event_id="e",
                            occurred_at=NOW, shares=[("seller:S1", 600), ("carrier:C1", 400)])
    lines = journal.transfers(charge)
    assert lines == [journal.Transfer("seller:S1", journal.PAYABLE, 600),
                     journal.Transfer("carrier:C1", journal.PAYABLE, 400)]
    assert journal.entries_of(lines) == [(e.account, e.amount_minor) for e in charge.entries]
    back = journal.reversal(charge, tx_id="r", source_event_id="e2", occurred_at=NOW)
    assert journal.transfers(back) == [journal.Transfer(journal.PAYABLE, "seller:S1", 600),
                                       journal.Transfer(journal.PAYABLE, "carrier:C1", 400)]
    assert journal.entries_of(journal.transfers(back)) == [(e.account, e.amount_minor) for e in back.entries]
    mixed = journal.Transaction("m", journal.TxKind.CHARGE, "SG", "x", "e3", NOW, (
        journal.Entry("seller:S1", 5, "SGD"), journal.Entry("carrier:C1", 5, "SGD"),
        journal.Entry(journal.PAYABLE, -7, "SGD"), journal.Entry("platform", -3, "SGD")))
    with pytest.raises(journal.UnbalancedTransaction, match="several debits and several credits"):
        journal.transfers(mixed)
