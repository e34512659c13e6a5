"""Lock order under parallel writers: charge batches (delta mode), parked-event retries and the sweeper hit
the same budget row and the same balance stripe at once, round after round. Nothing deadlocks, and the
books stay sound: every transaction balances, debits equal credits per currency, the striped balances
agree with the journal, and the budget's consumption equals what was charged and redeemed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from services.ledger import invariants
from services.ledger.handlers import retry_parked, sweep_reservations
from shared.contracts.registry import encode_envelope
from tests.integration.ledger.ledger_support import apply, rows, scalar, set_budget
from tests.unit.ledger.ledger_factories import carrier, expired, issued, manual, redeemed, request, seller

pytestmark = pytest.mark.integration

REGION, PERIOD, CURRENCY = "US", "2026-10", "USD"
AT = datetime(2026, 10, 12, 15, tzinfo=UTC)
LATER = AT + timedelta(days=10)  # the housekeeper's clock: past the stale vouchers' validity only
STRIPE = 3  # every writer on one stripe: the worst case, where stripe rows are shared too
ROUNDS, WRITERS, CHARGES_PER_BATCH, VOUCHERS = 6, 4, 8, 12




async def park(engine, envelopes) -> None:
    """Leave events parked although their compensation is known: what a race between two consumers
    leaves behind, and what ``retry_parked`` exists to pick up."""
    async with engine.begin() as conn:
        for n, env in enumerate(envelopes):
            await conn.execute(text(
                'INSERT INTO parked_events (event_id, compensation_id, event_type, region, value, topic, '
                'partition, "offset", key, consumer_group) VALUES (:e, :c, :t, :r, :v, :tp, 0, :o, NULL, :g)'),
                {"e": env.event_id, "c": env.payload["compensation_id"], "t": env.event_type, "r": env.region,
                 "v": encode_envelope(env), "tp": "vouchers.lifecycle.v1", "o": n, "g": "ledger"})


async def test_parallel_charges_retries_and_sweeps_never_deadlock(engine, settings):
    await set_budget(engine, REGION, PERIOD, 100_000_000, CURRENCY)
    manual_total = redeemed_total = 0
    for r in range(ROUNDS):
        # Vouchers issued (charged in full at issue), whose redemptions or expiries are left parked.
        ids = [f"LK{r}-{n}" for n in range(VOUCHERS)]
        await apply(engine, settings, [request(rid, 1_000, region=REGION, at=AT) for rid in ids])
        await apply(engine, settings, [issued(rid, 900, region=REGION, at=AT,
                                              shares=[(seller("S1"), 600), (carrier("C1"), 300)]) for rid in ids])
        lifecycle = []
        for n, rid in enumerate(ids):
            if n % 3 == 2:
                lifecycle.append(expired(f"comp-{rid}", region=REGION, at=AT))
            else:
                lifecycle.append(redeemed(f"comp-{rid}", 300 + n, region=REGION, at=AT))
                redeemed_total += 300 + n
        await park(engine, lifecycle)
        # A few vouchers whose validity has ended, for the sweeper.
        stale = [f"LS{r}-{n}" for n in range(3)]
        old = AT - timedelta(days=60)
        await apply(engine, settings, [request(rid, 500, region=REGION, at=AT) for rid in stale])
        await apply(engine, settings, [issued(rid, 500, region=REGION, at=old, valid_days=1,
                                              shares=[(seller("S1"), 500)]) for rid in stale])

        batches = [[manual(f"LM{r}-{w}-{n}", 100 + n, region=REGION, at=AT,
                           shares=[(seller("S1"), 50), (carrier("C1"), 50 + n)]) for n in range(CHARGES_PER_BATCH)]
                   for w in range(WRITERS * 2)]
        manual_total += sum(100 + n for n in range(CHARGES_PER_BATCH)) * len(batches)

        async def writer(chunks):
            for chunk in chunks:
                await apply(engine, settings, chunk, stripe=STRIPE)

        async def housekeeping():
            async with engine.begin() as conn:
                await retry_parked(conn, settings, STRIPE, LATER)

        async def sweeper():
            async with engine.begin() as conn:
                await sweep_reservations(conn, settings, STRIPE, LATER)

        # asyncio.gather raises the first error (a DeadlockDetected from PostgreSQL among them).
        await asyncio.gather(*(writer(batches[w::WRITERS]) for w in range(WRITERS)), housekeeping(), sweeper())
        assert await scalar(engine, "SELECT count(*) FROM parked_events") == 0

    # Double entry: every transaction balances, and debits equal credits per currency over the journal.
    assert await rows(engine, "SELECT currency, sum(amount_minor) FILTER (WHERE amount_minor > 0), "
                              "-sum(amount_minor) FILTER (WHERE amount_minor < 0) FROM journal_entries "
                              "GROUP BY 1 HAVING sum(amount_minor) <> 0") == []
    async with engine.connect() as conn:
        violations = await invariants.check(conn, LATER, settings.voucher_grace_seconds)
    assert violations == dict.fromkeys(invariants.CHECKS, 0)
    # Budget consumption == what was charged (manual, in full) and redeemed (automatic); nothing pending.
    assert await rows(engine, "SELECT reserved_minor, posted_auto_minor, posted_manual_minor FROM budgets "
                              "WHERE region = :r AND period = :p", r=REGION, p=PERIOD) == [
        (0, redeemed_total, manual_total)]
    spent = await scalar(engine, "SELECT -sum(amount_minor) FROM journal_entries WHERE region = :r "
                                 "AND account_key = :a", r=REGION, a=f"budget:{PERIOD}")
    assert spent == redeemed_total + manual_total
