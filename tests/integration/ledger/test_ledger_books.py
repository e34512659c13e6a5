"""The handler against the real PostgreSQL: journal rules enforced by the database, batches, parking,
corrections, idempotency, and parallel reservations at the budget boundary."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared.kafka import PermanentError
from tests.integration.ledger.ledger_support import apply, rows, scalar, set_budget
from tests.unit.ledger.ledger_factories import (
    carrier,
    correction,
    issued,
    manual,
    redeemed,
    request,
    seller,
)

pytestmark = pytest.mark.integration




async def test_voucher_flow_writes_balanced_books(engine, settings):
    await set_budget(engine, "SG", "2026-11", 10_000, "SGD")
    await apply(engine, settings, [request("F1", 1_000)])
    await apply(engine, settings, [issued("F1", 900, shares=[(seller("S9"), 600), (carrier("C9"), 300)])])
    await apply(engine, settings, [redeemed("comp-F1", 400)])
    budget = await rows(engine, "SELECT reserved_minor, posted_auto_minor, released_minor FROM budgets "
                                "WHERE region = 'SG' AND period = '2026-11'")
    assert budget == [(0, 400, 600)]
    unbalanced = await scalar(engine, "SELECT count(*) FROM (SELECT tx_id FROM journal_entries "
                                      "GROUP BY tx_id, currency HAVING sum(amount_minor) <> 0) x")
    assert unbalanced == 0
    balances = dict(await rows(engine, "SELECT account_key, sum(debits_minor - credits_minor) FROM "
                                       "account_balances WHERE account_key IN ('seller:S9', 'carrier:C9', "
                                       "'budget:2026-11') GROUP BY 1"))
    # charged what the buyer received (4.00 of 9.00), split 600:300 to the minor unit (266.67 / 133.33)
    assert balances["seller:S9"] == 267 and balances["carrier:C9"] == 133
    assert balances["budget:2026-11"] <= -400
    outbox = await scalar(engine, "SELECT count(*) FROM outbox WHERE topic = 'budget.results.v1'")
    assert outbox >= 1


async def test_journal_is_append_only_in_the_database(engine, settings):
    await apply(engine, settings, [manual("IMM1", 500)])
    for sql in ("UPDATE journal_transfers SET amount_minor = 1 WHERE tx_id = 'charge:IMM1:0'",
                "DELETE FROM journal_transfers WHERE tx_id = 'charge:IMM1:0'",
                "UPDATE journal_transfers SET region = 'US' WHERE tx_id = 'charge:IMM1:0'",
                "TRUNCATE journal_transfers"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(sql))


_TRANSFER = ("INSERT INTO journal_transfers (tx_id, line_no, line_count, kind, region, currency, debit_account, "
             "credit_account, amount_minor, compensation_id, source_event_id, reverses_tx_id, occurred_at) VALUES ")


async def test_database_refuses_transfers_that_are_not_lines_of_a_sound_transaction(engine):
    bad = {
        "transfer_line": "('bad1', 3, 2, 'charge', 'SG', 'SGD', 'platform', 'compensation_payable', 5, 'x', 'bad1', "
                         "NULL, now())",  # a line beyond the declared count
        "amount_minor_check": "('bad2', 1, 1, 'charge', 'SG', 'SGD', 'platform', 'compensation_payable', 0, 'x', "
                              "'bad2', NULL, now())",  # nothing moves
        "transfer_two_accounts": "('bad3', 1, 1, 'charge', 'SG', 'SGD', 'platform', 'platform', 5, 'x', 'bad3', "
                                 "NULL, now())",
        "currency_check": "('bad4', 1, 1, 'charge', 'SG', 'sgd', 'platform', 'compensation_payable', 5, 'x', 'bad4', "
                          "NULL, now())",
        "transfer_reversal_link": "('bad5', 1, 1, 'reversal', 'SG', 'SGD', 'compensation_payable', 'platform', 5, "
                                  "'x', 'bad5', NULL, now())",  # a reversal that reverses nothing
        "transfer_compensation": "('bad6', 1, 1, 'charge', 'SG', 'SGD', 'platform', 'compensation_payable', 5, NULL, "
                                 "'bad6', NULL, now())",  # only a batch's budget posting carries no compensation
    }
    for constraint, values in bad.items():
        with pytest.raises(DBAPIError, match=constraint):
            async with engine.begin() as conn:
                await conn.execute(text(_TRANSFER + values))
    with pytest.raises(DBAPIError, match="journal_transfers_source"):  # one transaction per event and kind
        async with engine.begin() as conn:
            await conn.execute(text(
                _TRANSFER + "('t1', 1, 1, 'charge', 'SG', 'SGD', 'platform', 'compensation_payable', 5, 'x', "
                "'same-event', NULL, now()), ('t2', 1, 1, 'charge', 'SG', 'SGD', 'platform', "
                "'compensation_payable', 5, 'y', 'same-event', NULL, now())"))
    assert await scalar(engine, "SELECT count(*) FROM journal_transfers WHERE tx_id LIKE 'bad%' "
                                "OR source_event_id = 'same-event'") == 0


async def test_incomplete_or_inconsistent_transactions_are_reported_by_the_checker(engine):
    """What one CHECK cannot see (a missing line, lines that disagree on what the transaction is) the
    invariant checker does; the test rolls back what it wrote."""
    from datetime import UTC, datetime

    from services.ledger import invariants

    with pytest.raises(RuntimeError, match="roll back"):
        async with engine.begin() as conn:
            before = (await invariants.check(conn, datetime.now(UTC), 86_400))["unbalanced_transactions"]
            await conn.execute(text(_TRANSFER + "('gap', 1, 2, 'charge', 'SG', 'SGD', 'platform', "
                                    "'compensation_payable', 5, 'x', 'gap', NULL, now()), ('mixed', 1, 2, 'charge', "
                                    "'SG', 'SGD', 'platform', 'compensation_payable', 5, 'x', 'mixed', NULL, now()), "
                                    "('mixed', 2, 2, 'charge', 'SG', 'USD', 'seller:S1', 'compensation_payable', 5, "
                                    "'x', 'mixed', NULL, now())"))
            found = (await invariants.check(conn, datetime.now(UTC), 86_400))["unbalanced_transactions"]
            assert found == before + 2
            raise RuntimeError("roll back")


async def test_database_refuses_a_reversal_of_an_unknown_charge(engine):
    with pytest.raises(DBAPIError, match="links to a transaction that does not exist"):
        async with engine.begin() as conn:
            await conn.execute(text(_TRANSFER + "('rev-ghost', 1, 1, 'reversal', 'SG', 'SGD', 'compensation_payable', "
                                    "'platform', 5, 'x', 'rev-ghost', 'charge:never:0', now())"))


async def test_a_charge_and_its_reversal_may_arrive_in_one_statement(engine):
    # the link check runs after each row, within the statement, so the reversal sees the charge written
    # next to it; the test rolls back at the end, so the pair stays out of the books the other tests check
    with pytest.raises(RuntimeError, match="roll back"):
        async with engine.begin() as conn:
            await conn.execute(text(_TRANSFER + "('rev-of-pair', 1, 1, 'reversal', 'SG', 'SGD', "
                                    "'compensation_payable', 'platform', 5, 'x', 'pair-e2', 'charge:pair:0', now()), "
                                    "('charge:pair:0', 1, 1, 'charge', 'SG', 'SGD', 'platform', "
                                    "'compensation_payable', 5, 'x', 'pair-e1', NULL, now())"))
            # and the classic view gives each transaction its two entries back, balanced
            entries = (await conn.execute(text(
                "SELECT tx_id, account_key, amount_minor FROM journal_entries WHERE tx_id LIKE '%pair%' "
                "ORDER BY tx_id, line_no"))).all()
            assert [tuple(e) for e in entries] == [("charge:pair:0", "platform", 5),
                                                   ("charge:pair:0", "compensation_payable", -5),
                                                   ("rev-of-pair", "platform", -5),
                                                   ("rev-of-pair", "compensation_payable", 5)]
            raise RuntimeError("roll back")


async def test_budget_hard_limit_is_a_database_constraint(engine):
    await set_budget(engine, "SG", "2031-01", 100, "SGD")
    with pytest.raises(IntegrityError, match="automatic_within_limit"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE budgets SET reserved_minor = 101 WHERE period = '2031-01'"))


async def test_redemption_before_issue_waits_then_applies(engine, settings):
    await set_budget(engine, "SG", "2026-11", 10_000, "SGD")
    await apply(engine, settings, [request("P1", 700)])
    await apply(engine, settings, [redeemed("comp-P1", 200)])
    assert await scalar(engine, "SELECT count(*) FROM parked_events WHERE compensation_id = 'comp-P1'") == 1
    await apply(engine, settings, [issued("P1", 700)])
    assert await scalar(engine, "SELECT count(*) FROM parked_events WHERE compensation_id = 'comp-P1'") == 0
    assert await rows(engine, "SELECT status, posted_minor, released_minor FROM reservations "
                              "WHERE reservation_id = 'P1'") == [("posted", 200, 500)]


async def test_corrections_chain_reverse_and_recharge(engine, settings):
    await apply(engine, settings, [manual("K-M1", 1_000, shares=[(seller("S7"), 1_000)])])
    await apply(engine, settings, [correction("K-C1", "K-M1", 800, shares=[(carrier("C7"), 800)])])
    await apply(engine, settings, [correction("K-C2", "K-M1", 1_000, shares=[(seller("S7"), 1_000)],
                                              corrects="K-C1")])
    txs = await rows(engine, "SELECT tx_id, kind, reverses_tx_id, corrects_tx_id, correction_id FROM "
                             "journal_transactions WHERE compensation_id = 'K-M1' AND kind <> 'budget_posting' "
                             "ORDER BY recorded_at, tx_id")
    assert txs == [
        ("charge:K-M1:0", "charge", None, None, None),
        ("charge:K-M1:1", "charge", None, "charge:K-M1:0", "K-C1"),
        ("reversal:charge:K-M1:0", "reversal", "charge:K-M1:0", None, "K-C1"),
        ("charge:K-M1:2", "charge", None, "charge:K-M1:1", "K-C2"),
        ("reversal:charge:K-M1:1", "reversal", "charge:K-M1:1", None, "K-C2"),
    ]
    net = dict(await rows(engine, "SELECT account_key, sum(amount_minor) FROM journal_entries "
                                  "WHERE tx_id IN (SELECT tx_id FROM journal_transactions WHERE compensation_id = "
                                  "'K-M1') AND account_key IN ('seller:S7', 'carrier:C7') GROUP BY 1"))
    assert net == {"seller:S7": 1_000, "carrier:C7": 0}


async def test_bad_events_raise_permanent_errors_and_write_nothing(engine, settings):
    before = await scalar(engine, "SELECT count(*) FROM journal_transactions")
    for bad in (issued("NOPE", 100), correction("K-X", "comp-F1", 10, corrects="K-none")):
        with pytest.raises(PermanentError):
            await apply(engine, settings, [manual("OK-ALONGSIDE", 10), bad])
    no_park = settings.model_copy(update={"park_seconds": 0})
    with pytest.raises(PermanentError, match="unknown compensation"):
        await apply(engine, no_park, [correction("K-Y", "comp-never", 10)])
    assert await scalar(engine, "SELECT count(*) FROM journal_transactions") == before
    assert await scalar(engine, "SELECT count(*) FROM compensations WHERE compensation_id = 'OK-ALONGSIDE'") == 0


async def test_parked_correction_is_dead_lettered_after_the_park_window(engine, settings):
    """A correction that overtook its compensation waits; if none arrives in the window, it is
    dead-lettered with the reason, and nothing else was written."""
    from datetime import UTC, datetime, timedelta

    from services.ledger.handlers import expire_parked

    before = await scalar(engine, "SELECT count(*) FROM journal_transactions")
    await apply(engine, settings, [correction("K-LATE", "comp-ghost", 100)])
    assert await scalar(engine, "SELECT count(*) FROM parked_events WHERE compensation_id = 'comp-ghost'") == 1
    async with engine.begin() as conn:  # inside the window: still waiting
        assert await expire_parked(conn, settings, datetime.now(UTC)) == 0
    later = datetime.now(UTC) + timedelta(seconds=settings.park_seconds + 1)
    async with engine.begin() as conn:
        assert await expire_parked(conn, settings, later) == 1
    assert await scalar(engine, "SELECT count(*) FROM parked_events WHERE compensation_id = 'comp-ghost'") == 0
    dead = await rows(engine, "SELECT consumer_group, error FROM dead_letters WHERE error LIKE '%park window%'")
    assert dead == [("ledger", "rejected: no compensation with this id arrived within the park window")]
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE topic = 'deadletters.v1'") >= 1
    assert await scalar(engine, "SELECT count(*) FROM journal_transactions") == before


async def test_manual_overrun_and_thresholds_fire_once_with_parallel_writers(engine, settings):
    """Charge batches decide alerts on the locked row at the end of the batch: each threshold fires once
    per period even with several writers, and every manual compensation past the limit is recorded."""
    from datetime import UTC, datetime

    await set_budget(engine, "SG", "2026-09", 10_000, "SGD")
    at = datetime(2026, 9, 15, 4, tzinfo=UTC)
    manuals = [manual(f"OVR{n}", 600, at=at) for n in range(20)]  # 12,000 against 10,000

    async def writer(n: int):
        for chunk in (manuals[n::4][:3], manuals[n::4][3:]):
            await apply(engine, settings, chunk, stripe=n)

    await asyncio.gather(*(writer(n) for n in range(4)))
    assert await rows(engine, "SELECT posted_manual_minor, thresholds_fired FROM budgets "
                              "WHERE region = 'SG' AND period = '2026-09'") == [(12_000, [50, 80, 100])]
    alerts = await rows(engine, "SELECT convert_from(value, 'UTF8')::jsonb->>'event_type', count(*) FROM outbox "
                                "WHERE topic = 'budget.alerts.v1' AND convert_from(value, 'UTF8')::jsonb"
                                "->'payload'->>'budget_period' = '2026-09' GROUP BY 1 ORDER BY 1")
    assert alerts == [("budget.exceeded", 4), ("budget.threshold_crossed", 3)]
    assert await scalar(engine, "SELECT count(*) FROM budget_overruns WHERE period = '2026-09'") == 4


async def test_business_duplicates_are_not_charged_twice(engine, settings):
    await apply(engine, settings, [manual("DUP1", 300), manual("DUP1", 300)])
    await apply(engine, settings, [manual("DUP1", 300)])
    assert await scalar(engine, "SELECT count(*) FROM journal_transactions WHERE compensation_id = 'DUP1' "
                                "AND kind = 'charge'") == 1


async def test_parallel_reservations_at_the_budget_boundary(engine, settings):
    """Eight writers in parallel, 400 requests of 7..13 against a limit of 2,000: never more reserved."""
    await set_budget(engine, "GB", "2026-11", 2_000, "GBP")
    requests = [request(f"PAR{n}", 7 + n % 7, region="GB") for n in range(400)]
    batches = [requests[i::8] for i in range(8)]

    async def writer(n: int, batch):
        for chunk in (batch[:25], batch[25:]):
            await apply(engine, settings, chunk, stripe=n)

    await asyncio.gather(*(writer(n, b) for n, b in enumerate(batches)))
    reserved = await scalar(engine, "SELECT reserved_minor FROM budgets WHERE region = 'GB'")
    granted = await scalar(engine, "SELECT coalesce(sum(decided_minor), 0) FROM reservations WHERE region = 'GB'")
    assert reserved == granted and 2_000 - 13 < reserved <= 2_000
    assert await scalar(engine, "SELECT count(*) FROM reservations WHERE region = 'GB'") == 400
    answers = await scalar(engine, "SELECT count(*) FROM outbox WHERE topic = 'budget.results.v1' "
                                   "AND convert_from(value, 'UTF8')::jsonb->'payload'->>'reservation_id' LIKE 'PAR%'")
    assert answers == 400
