"""The journal's upgrade to transfers (migration 0006, ADR 0013): books written in the entry form before it
read the same after it: every transaction as its transfer lines, statements, balances, postings linked to
their compensations, and no invariant violated."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from services.ledger import invariants, queries
from shared.db import make_engine, migrate
from tests.integration.ledger.ledger_support import MIGRATIONS, rows, scalar

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 10, 4, 0, tzinfo=UTC)

# A manual compensation split seller 400 / carrier 200 with its budget posting, and an automatic voucher
# charged 500 to the platform, redeemed for 300 (reversed, re-charged at 300, posted): what 0002-0005 wrote.
OLD_BOOKS = [
    "INSERT INTO budgets (region, period, currency, limit_minor, reserved_minor, posted_auto_minor, "
    "posted_manual_minor, released_minor) VALUES ('SG', '2026-11', 'SGD', 100000, 0, 300, 600, 200)",
    "INSERT INTO compensations (compensation_id, region, origin, kind, amount_minor, currency, period, buyer_id, "
    "issued_event_id, issued_at, charge_seq, current_charge_tx, current_shares, current_amount_minor) VALUES "
    "('M1', 'SG', 'manual', 'store_credit', 600, 'SGD', '2026-11', 'B1', 'e-m1', :at, 0, 'charge:M1:0', "
    "'[[\"seller:S1\", 400], [\"carrier:C1\", 200]]', 600), "
    "('A1', 'SG', 'auto', 'voucher', 500, 'SGD', '2026-11', 'B2', 'e-a1', :at, 2, 'charge:A1:1', "
    "'[[\"platform\", 300]]', 300)",
    "UPDATE compensations SET reservation_id = 'res-A1' WHERE compensation_id = 'A1'",
    "INSERT INTO reservations (reservation_id, compensation_id, region, period, currency, kind, ticket_id, "
    "buyer_id, status, requested_minor, decided_minor, amount_minor, expires_at, issued_minor, posted_minor, "
    "released_minor, closed_by, requested_event_id) VALUES ('res-A1', 'A1', 'SG', '2026-11', 'SGD', 'voucher', "
    "'T2', 'B2', 'posted', 500, 500, 300, :at, 500, 300, 200, 'redeemed', 'e-r1')",
    "INSERT INTO journal_transactions (tx_id, kind, region, currency, compensation_id, source_event_id, "
    "reverses_tx_id, corrects_tx_id, entry_count, occurred_at) VALUES "
    "('charge:M1:0', 'charge', 'SG', 'SGD', 'M1', 'e-m1', NULL, NULL, 3, :at), "
    "('posting:M1', 'budget_posting', 'SG', 'SGD', 'M1', 'e-m1', NULL, NULL, 2, :at), "
    "('charge:A1:0', 'charge', 'SG', 'SGD', 'A1', 'e-a1', NULL, NULL, 2, :at), "
    "('reversal:charge:A1:0', 'reversal', 'SG', 'SGD', 'A1', 'e-red', 'charge:A1:0', NULL, 2, :at), "
    "('charge:A1:1', 'charge', 'SG', 'SGD', 'A1', 'e-red', NULL, 'charge:A1:0', 2, :at), "
    "('posting:res-A1', 'budget_posting', 'SG', 'SGD', 'A1', 'e-red', NULL, NULL, 2, :at)",
    "INSERT INTO journal_entries (tx_id, line_no, region, account_key, currency, amount_minor, occurred_at) VALUES "
    "('charge:M1:0', 1, 'SG', 'seller:S1', 'SGD', 400, :at), ('charge:M1:0', 2, 'SG', 'carrier:C1', 'SGD', 200, :at), "
    "('charge:M1:0', 3, 'SG', 'compensation_payable', 'SGD', -600, :at), "
    "('posting:M1', 1, 'SG', 'compensation_expense', 'SGD', 600, :at), "
    "('posting:M1', 2, 'SG', 'budget:2026-11', 'SGD', -600, :at), "
    "('charge:A1:0', 1, 'SG', 'platform', 'SGD', 500, :at), "
    "('charge:A1:0', 2, 'SG', 'compensation_payable', 'SGD', -500, :at), "
    "('reversal:charge:A1:0', 1, 'SG', 'platform', 'SGD', -500, :at), "
    "('reversal:charge:A1:0', 2, 'SG', 'compensation_payable', 'SGD', 500, :at), "
    "('charge:A1:1', 1, 'SG', 'platform', 'SGD', 300, :at), "
    "('charge:A1:1', 2, 'SG', 'compensation_payable', 'SGD', -300, :at), "
    "('posting:res-A1', 1, 'SG', 'compensation_expense', 'SGD', 300, :at), "
    "('posting:res-A1', 2, 'SG', 'budget:2026-11', 'SGD', -300, :at)",
    "INSERT INTO account_balances (region, account_key, currency, stripe, debits_minor, credits_minor, entries) "
    "VALUES ('SG', 'seller:S1', 'SGD', 0, 400, 0, 1), ('SG', 'carrier:C1', 'SGD', 0, 200, 0, 1), "
    "('SG', 'platform', 'SGD', 0, 800, 500, 3), ('SG', 'compensation_payable', 'SGD', 0, 500, 1400, 4), "
    "('SG', 'compensation_expense', 'SGD', 0, 900, 0, 2), ('SG', 'budget:2026-11', 'SGD', 0, 0, 900, 2)",
]


async def test_books_written_as_entries_read_the_same_as_transfers(make_database):
    url = await make_database("journal-upgrade")
    await migrate(url, "ledger", MIGRATIONS, revision="0005")
    engine = make_engine(url, "ledger", pool_size=2)
    try:
        async with engine.begin() as conn:
            for sql in OLD_BOOKS:
                await conn.execute(text(sql), {"at": AT} if ":at" in sql else {})
            # the platform's statement as the entry-form query gave it
            before = [tuple(r) for r in (await conn.execute(text(
                "SELECT e.tx_id, e.amount_minor FROM journal_entries e WHERE e.account_key = 'platform' "
                "ORDER BY e.occurred_at, e.tx_id, e.line_no"))).all()]
        await migrate(url, "ledger", MIGRATIONS)
        transfers = await rows(engine, "SELECT tx_id, line_no, line_count, debit_account, credit_account, amount_minor "
                                       "FROM journal_transfers ORDER BY tx_id, line_no")
        assert transfers == [
            ("charge:A1:0", 1, 1, "platform", "compensation_payable", 500),
            ("charge:A1:1", 1, 1, "platform", "compensation_payable", 300),
            ("charge:M1:0", 1, 2, "seller:S1", "compensation_payable", 400),
            ("charge:M1:0", 2, 2, "carrier:C1", "compensation_payable", 200),
            ("posting:M1", 1, 1, "compensation_expense", "budget:2026-11", 600),
            ("posting:res-A1", 1, 1, "compensation_expense", "budget:2026-11", 300),
            ("reversal:charge:A1:0", 1, 1, "compensation_payable", "platform", 500)]
        # the entry form, from the view, is what was written
        entries = await rows(engine, "SELECT tx_id, account_key, amount_minor FROM journal_entries "
                                     "WHERE tx_id = 'charge:M1:0' ORDER BY line_no")
        assert entries == [("charge:M1:0", "seller:S1", 400), ("charge:M1:0", "carrier:C1", 200),
                           ("charge:M1:0", "compensation_payable", -600)]
        assert await rows(engine, "SELECT compensation_id, posting_tx_id FROM compensations ORDER BY 1") == [
            ("A1", None), ("M1", "posting:M1")]
        assert await scalar(engine, "SELECT posting_tx_id FROM reservations") == "posting:res-A1"
        async with engine.connect() as conn:
            after = await queries.statement_lines(conn, "SG", "platform", AT.replace(day=1), AT.replace(day=30))
            found = await invariants.check(conn, datetime.now(UTC), 86_400)
            lineage = await queries.lineage(conn, "A1")
        assert [(x["tx_id"], x["amount_minor"]) for x in after[1]] == before and after[0] == 0
        assert {k: v for k, v in found.items() if v} == {}
        assert lineage is not None and {t["tx_id"] for t in lineage["transactions"]} == {
            "charge:A1:0", "reversal:charge:A1:0", "charge:A1:1", "posting:res-A1"}
    finally:
        await engine.dispose()
