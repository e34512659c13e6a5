"""auto_comp throughput: decisions per second through the real batch handler and PostgreSQL.

``python -m bench.auto_comp_handler [--tickets 20000] [--batch 500] [--repeats 3]`` works in a scratch
schema ``auto_comp_bench`` of ``DATABASE_URL`` (dropped and recreated; other schemas untouched).

Per run, with the consumer runner's processed-event record per batch: the budget allowances of the eight
partitions are granted up front (as the ledger would, far above the run's spend), then tickets ->
``TicketHandler``: US late deliveries (the seed strategies), one buyer each, so every ticket matches
``us-late-delivery``; those outside its 5% holdout are issued from their partition's allowance in the
decision's transaction, with ``compensation.issued`` in the outbox (ADR 0012).
Events are decoded before the clock starts (the runner's decoding is measured separately) and frozen out
of the garbage collector's scans (a consumer holds one batch at a time, not the whole run's events). Rates
are given by the wall clock and per CPU second of the handler process plus its PostgreSQL backend (the
latter is steadier on a shared machine). The raw ceiling is asyncpg COPY of the same number of decision rows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auto_comp.config import Settings
from services.auto_comp.handlers import Rules, TicketHandler
from services.auto_comp.store import StrategyStore
from shared.contracts import events as ev
from shared.contracts.codec import decode as decode_envelope
from shared.contracts.registry import encode_envelope, make_envelope
from shared.db import make_engine, migrate, raw_connection
from shared.kafka import Delivered
from shared.runtime import freeze_startup_heap

SCHEMA = "auto_comp_bench"
STRATEGIES = Path(__file__).with_name("strategies")
AT = datetime(2026, 11, 15, 14, tzinfo=UTC)


def tickets(n: int, tag: str) -> list[Delivered]:
    out = []
    for i in range(n):
        p = ev.TicketOpened(
            ticket_id=f"T{tag}-{i}", order_id=f"O{tag}-{i}", buyer_id=f"B{tag}-{i}", seller_id=f"S{i % 200}",
            carrier_id=f"C{i % 20}", reason=ev.TicketReason.LATE_DELIVERY,
            order_amount=ev.PositiveMoney(amount_minor=2_000 + i % 20_000, currency="USD"),
            order_placed_at=AT - timedelta(days=16), dispatch_due_at=AT - timedelta(days=14),
            shipped_at=AT - timedelta(days=14, hours=2), promised_delivery_at=AT - timedelta(days=10),
            delivered_at=AT - timedelta(days=7 - i % 5))  # 3 to 7 days late
        env = make_envelope("ticket.opened", p, source="bench", region="US",
                            occurred_at=AT + timedelta(seconds=i % 3600))
        out.append(Delivered(env, p, "tickets.v1", i % PARTITIONS, i, p.buyer_id.encode(), 0))
    return out


PARTITIONS = 8


async def grant_allowances(engine: AsyncEngine, rules: Rules) -> None:
    """Open allowances of every partition, granted far above the run's spend, as the ledger would."""
    period, end = rules.period("US", datetime.now(UTC))
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO allowances (allowance_id, region, period, partition, pacing_percent, currency, owner, "
            "status, close_at, granted_minor, expires_at, request_seq, answered_seq, last_grant_minor, "
            "last_granted_at) SELECT 'al-bench-' || p, 'US', :period, p, 10, 'USD', 'bench:' || p, 'open', "
            ":close, 1000000000000, :end, 1, 1, 1000000000000, now() FROM generate_series(0, :n - 1) AS p"),
            {"period": period, "close": end - rules.safety, "end": end, "n": PARTITIONS})


async def _prepare(url: str) -> None:
    engine = make_engine(url, "public", pool_size=1)
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
    await engine.dispose()
    await migrate(url, SCHEMA, Path(__file__).with_name("migrations"))


def _backend_cpu(pid: int) -> float:
    """CPU seconds of a local PostgreSQL backend (0 when the server is not on this machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _apply(engine: AsyncEngine, handler: object, events: list[Delivered], batch: int, group: str
                 ) -> tuple[float, float]:
    """(events/s wall clock, events per CPU second of this process plus its PostgreSQL backend: less noisy
    than the wall clock on a shared machine; the engine reuses its one connection)."""
    async with engine.connect() as conn:
        backend = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
    # A consumer holds one batch, not the whole run: keep the pre-built events out of the collector's scans.
    freeze_startup_heap()
    started, cpu, pg = time.perf_counter(), time.process_time(), _backend_cpu(backend)
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        async with engine.begin() as conn:
            # the runner's own bookkeeping, so the number is what a consumer would see
            await conn.execute(text(
                "INSERT INTO processed_events (consumer_group, event_id) "
                "SELECT :g, unnest(CAST(:ids AS text[])) ON CONFLICT DO NOTHING"),
                {"g": group, "ids": [d.envelope.event_id for d in chunk]})
            await handler(conn, chunk)  # type: ignore[operator]
    own, db = time.process_time() - cpu, _backend_cpu(backend) - pg
    gc.unfreeze()
    print(f"  CPU per decision: handler {own / len(events) * 1e6:.0f} us, PostgreSQL backend "
          f"{db / len(events) * 1e6:.0f} us")
    return len(events) / (time.perf_counter() - started), len(events) / (own + db)


async def one_run(url: str, n: int, batch: int, tag: str) -> tuple[tuple[float, float], int]:
    """((decisions/s, per CPU s), issued)."""
    await _prepare(url)
    engine = make_engine(url, SCHEMA, pool_size=1)  # used one at a time: one backend
    rules = Rules(group="bench.tickets")
    await grant_allowances(engine, rules)
    work = tickets(n, tag)
    decide_rate = await _apply(engine, TicketHandler(StrategyStore(STRATEGIES), rules), work, batch, "bench-tickets")
    async with engine.connect() as conn:
        decided = (await conn.execute(text("SELECT count(*) FROM decisions"))).scalar()
        issued = (await conn.execute(text("SELECT count(*) FROM decisions WHERE outcome = 'issued'"))).scalar()
        announced = (await conn.execute(text("SELECT count(*) FROM outbox WHERE topic = 'compensations.issued.v1'"))
                     ).scalar()
        recorded = (await conn.execute(text("SELECT count(*) FROM outbox WHERE topic = 'decisions.v1'"))).scalar()
        shadows = (await conn.execute(text("SELECT count(*) FROM shadow_decisions"))).scalar()
    assert decided == n, decided
    # compensation.issued per voucher; decision.recorded per final decision, live and shadow (issue 10)
    assert announced == issued, (announced, issued)
    assert recorded == n + (shadows or 0), (recorded, n, shadows)
    await engine.dispose()
    return decide_rate, int(issued or 0)


async def run_copy_ceiling(url: str, n: int) -> float:
    """Raw asyncpg COPY of n decision-sized rows into an unindexed table."""
    engine = make_engine(url, SCHEMA, pool_size=1)
    rows = [(f"T{i}", "US", f"O{i}", f"B{i}", "late_delivery", "issued", "us-late-delivery", 1, 500 + i % 1000,
             '{"days_late": 3}', AT) for i in range(n)]
    async with engine.begin() as conn:
        await conn.execute(text(
            "CREATE TEMP TABLE raw_decisions (ticket_id text, region text, order_id text, buyer_id text, "
            "reason text, outcome text, strategy_id text, strategy_version int, proposed_minor bigint, "
            "inputs text, ticket_occurred_at timestamptz)"))
        raw = await raw_connection(conn)
        started = time.perf_counter()
        for i in range(0, len(rows), 2_500):
            await raw.copy_records_to_table("raw_decisions", records=rows[i:i + 2_500])
        rate = n / (time.perf_counter() - started)
    await engine.dispose()
    return rate


def decode_rate(n: int = 20_000) -> float:
    raw = [encode_envelope(d.envelope) for d in tickets(n, "d")]
    started = time.perf_counter()
    for value in raw:
        decode_envelope(value)
    return n / (time.perf_counter() - started)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.auto_comp_handler")
    parser.add_argument("--tickets", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    url = args.database_url or Settings().database_url
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"envelope decode (runner side, 1 core): {decode_rate():,.0f} tickets/s")
    decide, decide_cpu = [], []
    for r in range(args.repeats):
        (d, dc), issued = await one_run(url, args.tickets, args.batch, f"r{r}")
        decide.append(d)
        decide_cpu.append(dc)
        print(f"run {r + 1}: tickets -> decisions {d:,.0f}/s ({issued:,} issued from allowances; "
              f"{dc:,.0f} per CPU s)")
    print(f"median, batch {args.batch}: decisions {statistics.median(decide):,.0f}/s "
          f"({statistics.median(decide_cpu):,.0f} per CPU s of handler + backend)")
    print(f"raw COPY ceiling (decision rows): {await run_copy_ceiling(url, args.tickets):,.0f} rows/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
