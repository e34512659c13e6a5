"""ledger: compensation charges/s in batches, budget accounts included.

Per run, on a private database and broker: the US budget is set for the period, N = 2 x BENCH_COUNT manual
compensations (voucher, 6.00 USD split seller 4.00 / carrier 2.00, one buyer each) are pre-loaded onto
``compensations.manual.v1``, then the ledger is started (``serve``). Each compensation becomes a charge
transaction (3 entries: seller, carrier, payable) and a budget posting (2 entries) against the region's
budget row and budget account, the compensation row and the consumer's processed-event record. The clock
runs from the first journal transaction (its ``recorded_at``) until all N compensations are on the books
(the database clock when the count reaches N); the rate is N over that time.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from bench.common import Result
from bench.events import Records, produce
from bench.stack import Counter, Stack

BUDGET_MINOR = 10**13


async def one_run(url: str, external: str | None, partitions: int, n: int) -> tuple[float, int]:
    async with Stack(url, external, "ledger", partitions) as stack:
        # Migrate and set the budget first, pre-load, and only then start the service: the clock then
        # measures draining a full topic, not the producer.
        await _migrate_and_budget(stack)
        await produce(stack.bootstrap, Records("manual", uuid.uuid4().hex[:8]), 0, n)
        await stack.start("ledger", migrate=False)
        async with Counter(stack.dsn) as db:
            end = await db.wait_for("SELECT count(*) FROM ledger.compensations", n, 120 + n / 200, 0.05,
                                    "ledger compensations")
            start = await db.value("SELECT extract(epoch FROM min(recorded_at))::float8 "
                                   "FROM ledger.journal_transactions")
            entries = await db.value("SELECT count(*) FROM ledger.journal_entries")
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
    for _ in range(args.repeats):
        rate, entries = await one_run(url, external, args.partitions, n)
        result.runs.append(rate)
    result.note = (f"{n:,} pre-loaded compensations per run drained from the topic by the running service "
                   f"({entries:,} journal entries per run: charge + budget posting)")
    return [result]
