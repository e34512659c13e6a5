"""ledger: compensation charges/s in batches, budget accounts included.

Per run, on a private database and broker: the US budget is set for the period, N = 2 x BENCH_COUNT manual
compensations (voucher, 6.00 USD split seller 4.00 / carrier 2.00, one buyer each) are pre-loaded onto
``compensations.manual.v1``, then the ledger is started (``serve``). Each compensation becomes a charge
transaction (two transfer rows: seller -> payable, carrier -> payable), its part of the batch's one budget
posting against the region's budget row and budget account (ADR 0013), the compensation row and the
consumer's processed-event record. The clock runs from the first journal transfer (its ``recorded_at``)
until all N compensations are on the books (the database clock when the count reaches N); the rate is N
over that time.

The note also gives CPU time per charge, which depends far less on what else runs on the machine than the
wall-clock rate: the service process (user + system, from ``/proc``) and the PostgreSQL backends of its
database, from the moment the service is ready until the last compensation is on the books, over the
compensations booked in between. ``BENCH_PYSPY=<dir>`` records a py-spy profile of every service process
(``bench/stack.py``).
"""

from __future__ import annotations

import os
import statistics
import uuid
from typing import Any

from bench.common import Result
from bench.events import Records, produce
from bench.stack import Counter, Stack

BUDGET_MINOR = 10**13


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a live service process and the consumer processes it started
    (CONSUMER_PROCESSES > 1); 0 when it is gone or /proc is missing."""
    import psutil

    try:
        children = [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        children = []
    return _own_cpu_seconds(pid) + sum(_own_cpu_seconds(c) for c in children)


def _own_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (0 when it is gone or /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


async def _backend_cpu(db: Counter) -> dict[int, float]:
    pids = await db.rows("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                         "AND pid <> pg_backend_pid()")
    return {r["pid"]: _cpu_seconds(r["pid"]) for r in pids}


async def one_run(url: str, external: str | None, partitions: int, n: int,
                  cpu: list[tuple[float, float]] | None = None) -> tuple[float, int]:
    async with Stack(url, external, "ledger", partitions) as stack:
        # Migrate and set the budget first, pre-load, and only then start the service: the clock then
        # measures draining a full topic, not the producer.
        await _migrate_and_budget(stack)
        await produce(stack.bootstrap, Records("manual", uuid.uuid4().hex[:8]), 0, n)
        service = await stack.start("ledger", migrate=False)
        async with Counter(stack.dsn) as db:
            booked0 = await db.value("SELECT count(*) FROM ledger.compensations")
            service0, backends0 = _cpu_seconds(service.pid), await _backend_cpu(db)
            end = await db.wait_for("SELECT count(*) FROM ledger.compensations", n, 120 + n / 200, 0.05,
                                    "ledger compensations")
            start = await db.value("SELECT extract(epoch FROM min(recorded_at))::float8 "
                                   "FROM ledger.journal_transfers")
            service1, backends1 = _cpu_seconds(service.pid), await _backend_cpu(db)
            entries = await db.value("SELECT count(*) FROM ledger.journal_transfers")
        if cpu is not None and n > booked0:
            backend = sum(v - backends0.get(pid, 0.0) for pid, v in backends1.items())
            cpu.append(((service1 - service0) / (n - booked0) * 1e6, backend / (n - booked0) * 1e6))
        return n / (end - start), int(entries)


async def _migrate_and_budget(stack: Stack) -> None:
    import asyncio

    await asyncio.to_thread(stack.cli, "ledger", "migrate")
    await stack.set_budget("US", BUDGET_MINOR)


async def run(settings: Any, url: str, bootstrap: str, args: Any) -> list[Result]:
    n = int(os.environ.get("BENCH_LEDGER_COUNT", str(2 * args.count)))
    result = Result("ledger: manual compensation charges (+ budget posting)", "charges/s",
                    ceiling="raw asyncpg COPY", bar=20_000)
    external = os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS")
    entries = 0
    cpu: list[tuple[float, float]] = []
    for _ in range(args.repeats):
        rate, entries = await one_run(url, external, args.partitions, n, cpu)
        result.runs.append(rate)
    cpu_note = ""
    if cpu:
        service_us = statistics.median(c[0] for c in cpu)
        backend_us = statistics.median(c[1] for c in cpu)
        cpu_note = (f"; CPU per charge (median): service {service_us:.0f} us, PostgreSQL backends "
                    f"{backend_us:.0f} us")
    result.note = (f"{n:,} pre-loaded compensations per run drained from the topic by the running service "
                   f"({entries:,} journal transfer rows per run: a charge of two lines each, one budget posting "
                   f"per batch){cpu_note}")
    return [result]
