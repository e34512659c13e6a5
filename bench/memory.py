"""Memory over 1,000,000 events: is each service's resident memory flat?

Opt-in (it runs for many minutes): ``BENCH_MEMORY=1 make bench`` or ``python -m bench.run --only memory``.

On a private database and broker, auto_comp and the ledger run as ``serve`` subprocesses; the load
generator feeds US late-delivery tickets (one buyer each) straight onto ``tickets.v1``, keeping at most
BENCH_MEMORY_LAG (20,000) tickets ahead of auto_comp. Each issued ticket makes two consumed events (the
ticket in auto_comp, the compensation issued in the ledger; budget allowance requests, grants and returns
add a few per partition and lease, ADR 0012), so "events" here are the records the two services consumed,
counted from their stored consumer offsets (fresh topics start at 0). The run ends at BENCH_MEMORY_EVENTS
(1,000,000) events. Intake is left out: it would take the CPU the two consumers need, and its memory is
bounded by the request size and its key cache (INTAKE_API_KEY_CACHE_SIZE).

Each service's RSS (psutil) is sampled every BENCH_MEMORY_INTERVAL (3) seconds; the results are the RSS at
10%, 50% and 100% of the events and the growth from 10% to 100% (the first 10% warm caches and pools up).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.auto_comp import BUDGET_MINOR, warm_ledger
from bench.common import Result
from bench.events import Records, produce
from bench.stack import Counter, Stack

_CONSUMED = ("SELECT ((SELECT coalesce(sum(next_offset), 0) FROM auto_comp.consumer_offsets) "
             "+ (SELECT coalesce(sum(next_offset), 0) FROM ledger.consumer_offsets))::bigint")


async def run(settings: Any, url: str, bootstrap: str, args: Any) -> list[Result]:
    total = int(os.environ.get("BENCH_MEMORY_EVENTS", "1000000"))
    lag = int(os.environ.get("BENCH_MEMORY_LAG", "20000"))
    interval = float(os.environ.get("BENCH_MEMORY_INTERVAL", "3"))
    external = os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS")
    samples: dict[str, list[tuple[int, float]]] = {"auto_comp": [], "ledger": []}
    started = time.monotonic()
    async with Stack(url, external, "memory", args.partitions) as stack:
        await stack.start("ledger")
        await stack.set_budget("US", BUDGET_MINOR)
        await warm_ledger(stack)
        await stack.start("auto_comp")
        procs = {name: psutil.Process(stack.services[name].pid) for name in samples}
        records = Records("ticket", uuid.uuid4().hex[:8])
        sent = 0
        async with Counter(stack.dsn) as db:
            consumed = 0
            last_sample = 0.0
            while consumed < total:
                decided = int(await db.value("SELECT coalesce(sum(next_offset), 0)::bigint "
                                             "FROM auto_comp.consumer_offsets WHERE topic = 'tickets.v1'"))
                if sent - decided < lag and sent * 4 < total * 1.1:
                    chunk = min(5000, lag - (sent - decided))
                    await produce(stack.bootstrap, records, sent, chunk)
                    sent += chunk
                consumed = int(await db.value(_CONSUMED))
                if time.monotonic() - last_sample >= interval:
                    last_sample = time.monotonic()
                    for name, proc in procs.items():
                        samples[name].append((consumed, proc.memory_info().rss / 2**20))
                    if len(samples["ledger"]) % 20 == 1:
                        print(f"[bench memory] {consumed:,} events, {sent:,} tickets sent, RSS "
                              + ", ".join(f"{n} {s[-1][1]:.0f} MB" for n, s in samples.items()), flush=True)
                for name, svc in stack.services.items():
                    if svc.proc.poll() is not None:
                        raise RuntimeError(f"{name} exited during the memory run:\n{svc.tail()}")
                await asyncio.sleep(0.5)
            for name, proc in procs.items():
                samples[name].append((consumed, proc.memory_info().rss / 2**20))
    minutes = (time.monotonic() - started) / 60
    series = Path(__file__).with_name("results") / "memory_samples.json"
    series.parent.mkdir(exist_ok=True)
    series.write_text(json.dumps({name: [{"events": e, "rss_mb": round(r, 1)} for e, r in points]
                                  for name, points in samples.items()}, indent=0))
    results = []
    for name, points in samples.items():
        at = {pct: _rss_at(points, total * pct / 100) for pct in (10, 50, 100)}
        growth = at[100] - at[10]
        result = Result(f"memory: {name} RSS growth 10% -> 100% of {total:,} events", "MB", runs=[growth],
                        lower_is_better=True)
        result.note = (f"RSS {at[10]:.0f} MB at 10%, {at[50]:.0f} MB at 50%, {at[100]:.0f} MB at 100% "
                       f"({growth / at[10] * 100 if at[10] else 0:+.1f}%); peak {max(p[1] for p in points):.0f} MB; "
                       f"{len(points)} samples every {interval:.0f} s (bench/results/memory_samples.json); "
                       f"{sent:,} tickets, {minutes:.1f} min")
        results.append(result)
    return results


def _rss_at(points: list[tuple[int, float]], events: float) -> float:
    """RSS of the first sample taken at or after ``events`` consumed events."""
    for consumed, rss in points:
        if consumed >= events:
            return rss
    return points[-1][1] if points else 0.0
