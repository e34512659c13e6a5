"""Ledger throughput: compensation charges per second through the real batch handler and PostgreSQL.

``python -m bench.ledger_handler [--charges 100000] [--batch 500] [--writers 1,2,4]`` works in a
scratch schema ``ledger_bench`` of ``DATABASE_URL`` (dropped and recreated; other schemas untouched).

Each charge is a manual compensation split across a seller and a carrier: a charge transaction (two
transfer rows), its part of the batch's one budget posting (ADR 0013) against the region's hot budget row and
hot accounts (payable, expense, budget:<period>, the balances of both parties), the compensation row, and
the consumer runner's processed-event record. Events are decoded before the clock starts (the runner's
decoding is measured separately). ``writers`` run in parallel on their own connections and stripes, all in
one region and period: the hot-account worst case. The raw ceiling is asyncpg COPY of the same number of transfer rows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from services.ledger.config import Settings
from services.ledger.handlers import apply_batch
from shared.contracts import events as ev
from shared.contracts.codec import decode as decode_envelope
from shared.contracts.registry import encode_envelope, make_envelope
from shared.db import make_engine, migrate, raw_connection
from shared.kafka import Delivered
from shared.runtime import freeze_startup_heap

SCHEMA = "ledger_bench"
AT = datetime(2026, 11, 15, 8, tzinfo=UTC)


def _events(n: int, offset: int) -> list[Delivered]:
    out = []
    for i in range(offset, offset + n):
        amount = 500 + i % 1000
        p = ev.ManualCompensationIssued(
            compensation_id=f"BENCH-{i}", ticket_id=f"T{i}", order_id=f"O{i}", buyer_id=f"B{i % 5000}",
            agent_id="agent", team="cs", kind=ev.CompensationKind.STORE_CREDIT,
            amount=ev.PositiveMoney(amount_minor=amount, currency="SGD"), reason_code="damaged",
            liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id=f"S{i % 200}"),
                                         amount_minor=amount - amount // 3),
                       ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.CARRIER, id=f"C{i % 20}"),
                                         amount_minor=amount // 3)])
        env = make_envelope("compensation.manual_issued", p, source="bench", region="SG",
                            occurred_at=AT + timedelta(seconds=i % 3600))
        out.append(Delivered(env, p, "compensations.manual.v1", i % 8, i, env.payload["buyer_id"].encode(), 0))
    return out


async def _prepare(url: str) -> None:
    engine = make_engine(url, "public", pool_size=1)
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
    await engine.dispose()
    await migrate(url, SCHEMA, _migrations())
    engine = make_engine(url, SCHEMA, pool_size=1)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO budgets (region, period, currency, limit_minor) "
                                "VALUES ('SG', '2026-11', 'SGD', 1000000000000)"))
    await engine.dispose()


def _migrations():  # type: ignore[no-untyped-def]
    from pathlib import Path

    return Path(__file__).with_name("migrations")


async def run_handler(url: str, charges: int, batch: int, writers: int) -> float:
    await _prepare(url)
    settings = Settings(database_url=url)
    engine = make_engine(url, SCHEMA, pool_size=writers + 1)
    per_writer = charges // writers
    work = [_events(per_writer, w * per_writer) for w in range(writers)]
    # The pre-built events are the benchmark's, not the service's (which holds one batch at a time): keep
    # them out of the garbage collector's traversals so they do not tax the handler being measured.
    freeze_startup_heap()

    async def writer(stripe: int, events: list[Delivered]) -> None:
        for i in range(0, len(events), batch):
            chunk = events[i:i + batch]
            async with engine.begin() as conn:
                # the runner's own bookkeeping, so the number is what a consumer would see
                await conn.execute(text(
                    "INSERT INTO processed_events (consumer_group, event_id) "
                    "SELECT 'bench', unnest(CAST(:ids AS text[])) ON CONFLICT DO NOTHING"),
                    {"ids": [d.envelope.event_id for d in chunk]})
                await apply_batch(conn, chunk, settings, stripe)

    started = time.perf_counter()
    await asyncio.gather(*(writer(w, events) for w, events in enumerate(work)))
    rate = per_writer * writers / (time.perf_counter() - started)
    async with engine.connect() as conn:
        n = (await conn.execute(text("SELECT count(*) FROM journal_transactions WHERE kind = 'charge'"))).scalar()
    assert n == per_writer * writers, n
    await engine.dispose()
    del work
    gc.unfreeze()
    return rate


async def run_copy_ceiling(url: str, charges: int) -> float:
    """Raw asyncpg COPY of the same number of transfer rows (2 per charge) into an unindexed table."""
    engine = make_engine(url, SCHEMA, pool_size=1)
    rows = [(f"t{i}", i % 2 + 1, "SG", f"seller:S{i % 200}", "compensation_payable", "SGD", 100 + i % 7, AT)
            for i in range(charges * 2)]
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TEMP TABLE raw_entries (tx_id text, line_no smallint, region text, "
                                "debit_account text, credit_account text, currency text, amount_minor bigint, "
                                "occurred_at timestamptz)"))
        raw = await raw_connection(conn)
        started = time.perf_counter()
        for i in range(0, len(rows), 2_500):
            await raw.copy_records_to_table("raw_entries", records=rows[i:i + 2_500])
        rate = charges / (time.perf_counter() - started)
    await engine.dispose()
    return rate


def decode_rate(n: int = 20_000) -> float:
    raw = [encode_envelope(d.envelope) for d in _events(n, 0)]
    started = time.perf_counter()
    for value in raw:
        decode_envelope(value)
    return n / (time.perf_counter() - started)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_handler")
    parser.add_argument("--charges", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--writers", default="1,2")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    url = args.database_url or Settings().database_url
    print(f"envelope decode (runner side, 1 core): {decode_rate():,.0f} events/s")
    for writers in (int(w) for w in args.writers.split(",")):
        rate = await run_handler(url, args.charges, args.batch, writers)
        print(f"handler, batch {args.batch}, {writers} parallel writer(s), one region/period: "
              f"{rate:,.0f} charges/s")
    print(f"raw COPY ceiling (5 entry rows per charge): {await run_copy_ceiling(url, args.charges):,.0f} charges/s")


if __name__ == "__main__":
    asyncio.run(main())
