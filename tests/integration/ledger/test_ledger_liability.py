"""The liable-party rule against the real PostgreSQL: an automatic voucher's liable parties end up charged
for what the buyer received. Partial redemption and expiry post a reversal (and a re-charge of the
received value) through the real handler, the sweeper does the same for a voucher that lapsed unused,
a redelivered event posts nothing twice, and the invariant checker flags a closed voucher still charged
beyond what its buyer received (books written before this rule)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from services.ledger import invariants
from services.ledger.handlers import sweep_reservations
from tests.integration.ledger.ledger_support import apply, rows, scalar, set_budget
from tests.unit.ledger.ledger_factories import carrier, expired, issued, redeemed, request, seller

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 10, 4, tzinfo=UTC)




async def party_net(engine, cid: str) -> dict[str, int]:
    return dict(await rows(engine, "SELECT e.account_key, CAST(sum(e.amount_minor) AS bigint) FROM journal_entries e "
                                   "JOIN journal_transactions t ON t.tx_id = e.tx_id WHERE t.compensation_id = :c "
                                   "AND e.account_key IN ('seller:S1', 'carrier:C1', 'platform') GROUP BY 1", c=cid))


async def test_partial_redemption_and_expiry_release_the_liable_parties(engine, settings):
    await set_budget(engine, "SG", "2026-11", 1_000_000, "SGD")
    shares = [(seller("S1"), 700), (carrier("C1"), 300)]
    await apply(engine, settings, [request("L1", 1_000, at=AT), request("L2", 500, at=AT)])
    await apply(engine, settings, [issued("L1", 1_000, at=AT, shares=shares),
                                   issued("L2", 500, at=AT, shares=[(seller("S1"), 500)])])
    redemption, expiry = redeemed("comp-L1", 250, at=AT + timedelta(days=1)), expired("comp-L2", at=AT)
    await apply(engine, settings, [redemption, expiry])
    assert await party_net(engine, "comp-L1") == {"seller:S1": 175, "carrier:C1": 75}
    assert await party_net(engine, "comp-L2") == {"seller:S1": 0}
    txs = await rows(engine, "SELECT tx_id, kind, source_event_id, reverses_tx_id, corrects_tx_id FROM "
                             "journal_transactions WHERE compensation_id = 'comp-L1' ORDER BY tx_id")
    txs.sort(key=lambda t: t[0].replace("posting:", "p"))  # the posting is named by its batch's first event
    assert txs == [("charge:comp-L1:0", "charge", txs[0][2], None, None),
                   ("charge:comp-L1:1", "charge", redemption.event_id, None, "charge:comp-L1:0"),
                   (f"posting:{redemption.event_id}", "budget_posting", redemption.event_id, None, None),
                   ("reversal:charge:comp-L1:0", "reversal", redemption.event_id, "charge:comp-L1:0", None)]
    # Redelivered (same event ids) and re-sent with new ids: the voucher is closed, nothing posts twice.
    before = await scalar(engine, "SELECT count(*) FROM journal_transactions")
    await apply(engine, settings, [redemption, expiry, redeemed("comp-L1", 900), expired("comp-L1")])
    assert await scalar(engine, "SELECT count(*) FROM journal_transactions") == before
    assert await party_net(engine, "comp-L1") == {"seller:S1": 175, "carrier:C1": 75}
    assert await rows(engine, "SELECT posted_auto_minor, reserved_minor FROM budgets WHERE period = '2026-11'") == [
        (250, 0)]


async def test_sweeper_releases_a_voucher_that_lapsed_unused(engine, settings):
    await set_budget(engine, "SG", "2026-11", 1_000_000, "SGD")
    await apply(engine, settings, [request("L3", 400, at=AT)])
    await apply(engine, settings, [issued("L3", 400, at=AT, valid_days=5, shares=[(carrier("C1"), 400)])])
    valid_until = AT + timedelta(days=5)
    async with engine.begin() as conn:
        assert await sweep_reservations(conn, settings, 1, valid_until + timedelta(days=2)) == 1
    assert await party_net(engine, "comp-L3") == {"carrier:C1": 0}
    assert await rows(engine, "SELECT tx_id, source_event_id, occurred_at FROM journal_transactions "
                              "WHERE compensation_id = 'comp-L3' AND kind = 'reversal'") == [
        ("reversal:charge:comp-L3:0", "sweep:L3", valid_until)]
    async with engine.begin() as conn:  # swept once: a second sweep finds nothing
        assert await sweep_reservations(conn, settings, 1, valid_until + timedelta(days=3)) == 0
    async with engine.connect() as conn:
        violations = await invariants.check(conn, valid_until + timedelta(days=3), settings.voucher_grace_seconds)
    assert violations == dict.fromkeys(invariants.CHECKS, 0)


async def test_invariant_flags_a_closed_voucher_charged_beyond_what_was_received(engine, settings):
    await set_budget(engine, "SG", "2026-11", 1_000_000, "SGD")
    await apply(engine, settings, [request("L4", 600, at=AT)])
    await apply(engine, settings, [issued("L4", 600, at=AT, shares=[(seller("S1"), 600)])])
    async with engine.connect() as conn:
        assert (await invariants.check(conn, AT, settings.voucher_grace_seconds))["charged_beyond_received"] == 0
        # How books written before this rule look: the voucher expired, the full charge stayed.
        await conn.execute(text("UPDATE reservations SET status = 'voided', closed_by = 'expired', "
                                "breakage_minor = amount_minor WHERE reservation_id = 'L4'"))
        assert (await invariants.check(conn, AT, settings.voucher_grace_seconds))["charged_beyond_received"] == 1
        await conn.rollback()
