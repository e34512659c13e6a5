"""Property test of the liable-party rule: an automatic voucher's liable parties end up charged for what
the buyer actually received.

For any sequence of issues, (partial) redemptions, expiries and revocations, redelivered business events
with new ids, lifecycle events that overtake their issue, random batches in locked or delta mode, and a
final sweep of vouchers whose validity ended: every journal transaction balances, each liable party's net
charge for a closed voucher equals its share of the redeemed value (zero when it expired or was revoked),
an open voucher is charged at face value, and the budget consumed exactly what was redeemed.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ledger.domain import journal
from services.ledger.domain.book import Book, HoldStatus
from services.ledger.domain.budget import BudgetState
from tests.unit.ledger.ledger_factories import (
    NOW,
    PLATFORM,
    carrier,
    expired,
    issued,
    payload_of,
    redeemed,
    request,
    revoked,
    seller,
)

KEY = ("SG", "2026-11")
PARTIES = [seller("S1"), carrier("C1"), PLATFORM]


@st.composite
def vouchers(draw):
    """Per voucher: its face value, liability shares and lifecycle events, and one delivery order."""
    specs, queues = [], []
    for i in range(draw(st.integers(1, 5))):
        cid, rid = f"comp-V{i}", f"V{i}"
        face = draw(st.integers(1, 3_000))
        reserved = face + draw(st.integers(0, 200))
        parties = draw(st.lists(st.sampled_from(PARTIES), min_size=1, max_size=3, unique_by=lambda p: p.account_key))
        cuts = sorted(draw(st.lists(st.integers(0, face), min_size=len(parties) - 1, max_size=len(parties) - 1)))
        amounts = [b - a for a, b in zip([0, *cuts], [*cuts, face], strict=True)]
        shares = [(p, a) for p, a in zip(parties, amounts, strict=True) if a] or [(parties[0], face)]
        ops = []
        for _ in range(draw(st.integers(0, 4))):
            op = draw(st.sampled_from(["redeem", "redeem", "expire", "revoke", "duplicate"]))
            if op == "duplicate" and ops:  # the same business event re-sent with a new event id
                ops.append(draw(st.sampled_from(ops)).model_copy(update={"event_id": f"dup-{cid}-{len(ops)}"}))
            elif op == "redeem":
                ops.append(redeemed(cid, draw(st.integers(1, face)), at=NOW + timedelta(hours=len(ops) + 1)))
            elif op == "expire":
                ops.append(expired(cid, at=NOW + timedelta(hours=len(ops) + 1)))
            elif op == "revoke":
                ops.append(revoked(cid, at=NOW + timedelta(hours=len(ops) + 1)))
        early = draw(st.integers(0, len(ops)))  # lifecycle events that overtake the issue (parked first)
        issue = issued(rid, face, kind=draw(st.sampled_from(["voucher", "coupon"])), shares=shares, valid_days=30)
        queues.append([request(rid, reserved), *ops[:early], issue, *ops[early:]])
        # The first lifecycle event to apply closes the voucher (a voucher is used once). Parked events
        # apply in arrival order as soon as the issue arrives, so delivery order among them is apply order.
        first = payload_of(ops[0]) if ops else None
        received = getattr(getattr(first, "discount", None), "amount_minor", 0) if first else None
        specs.append({"cid": cid, "rid": rid, "face": face, "shares": [(p.account_key, a) for p, a in shares],
                      "received": received})
    order = []
    while any(queues):
        i = draw(st.sampled_from([n for n, q in enumerate(queues) if q]))
        order.append(queues[i].pop(0))
    batches = draw(st.lists(st.integers(1, 6), min_size=1, max_size=8))
    return specs, order, batches, draw(st.booleans()), draw(st.booleans())


def run(order, batch_sizes, deltas: bool, sweep: bool):
    state = {"budgets": {KEY: BudgetState(*KEY, "SGD", 10**9)}, "holds": {}, "compensations": {},
             "corrections": {}}
    parked: list = []
    transactions: list[journal.Transaction] = []
    i = b = 0
    while i < len(order):
        batch, i = order[i:i + batch_sizes[b % len(batch_sizes)]], i + batch_sizes[b % len(batch_sizes)]
        b += 1
        delta = deltas and not any(e.event_type == "budget.reservation_requested" for e in batch)
        book = Book(now=NOW, parked=parked, deltas=delta, **({**state, "budgets": {}} if delta else state))
        for env in batch:
            book.apply(env, payload_of(env))  # nothing in these streams is ever rejected
        book.finish()
        if delta:
            book.replay(state["budgets"])
        transactions += book.out.transactions
        parked = [p for waiting in book.parked.values() for p in waiting]
        for p in parked:
            p.new = False
    assert not parked  # every early lifecycle event found its voucher
    if sweep:  # long after every voucher's validity: whatever is still open lapses unused
        sweeper = Book(now=NOW + timedelta(days=90), **state)
        for rid in list(state["holds"]):
            sweeper.sweep(rid, timedelta(days=1))
        transactions += sweeper.out.transactions
    return state, transactions


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vouchers())
def test_liable_parties_end_up_charged_what_the_buyer_received(case):
    specs, order, batch_sizes, deltas, sweep = case
    state, transactions = run(order, batch_sizes, deltas, sweep)

    # The journal balances: every transaction per currency, so the whole journal too; ids never repeat.
    assert len({t.tx_id for t in transactions}) == len(transactions)
    for t in transactions:
        totals: dict[str, int] = defaultdict(int)
        for e in t.entries:
            totals[e.currency] += e.amount_minor
        assert set(totals.values()) == {0}, t
    net: dict[tuple[str, str], int] = defaultdict(int)  # (compensation, account) -> net amount
    for t in transactions:
        for e in t.entries:
            net[(t.compensation_id, e.account)] += e.amount_minor

    redeemed_total = open_total = 0
    for spec in specs:
        hold = state["holds"][spec["rid"]]
        received = spec["received"]
        if received is None and sweep:
            received = 0  # lapsed at the end of its validity
        if received is None:  # still open: charged at face value until the buyer uses it
            assert hold.status is HoldStatus.PENDING
            expected, open_total = spec["face"], open_total + spec["face"]
        else:
            assert hold.status in (HoldStatus.POSTED, HoldStatus.VOIDED) and hold.posted == received
            expected, redeemed_total = received, redeemed_total + received
        charged = {k: net[(spec["cid"], k)] for k, _ in spec["shares"]}
        # the liable parties' net charge is the redeemed value (face value while open) ...
        assert sum(charged.values()) == expected
        # ... split over the same parties in proportion to their shares (exact to a minor unit), never
        # below zero or above a party's original share
        for key, share in spec["shares"]:
            assert 0 <= charged[key] <= share
            assert abs(charged[key] - Fraction(share * expected, spec["face"])) < 1
        # and what the marketplace owes the buyer mirrors it
        assert net[(spec["cid"], journal.PAYABLE)] == -expected
        assert state["compensations"][spec["cid"]].current_amount == expected

    # The budget consumed what was redeemed; open vouchers stay reserved at their issued value.
    budget = state["budgets"][KEY]
    assert budget.posted_auto == redeemed_total
    assert budget.reserved == open_total
    expense = sum(v for (_, account), v in net.items() if account == journal.EXPENSE)
    assert expense == redeemed_total == -sum(v for (_, account), v in net.items() if account == "budget:2026-11")
