"""Benchmarks (``make bench``): medians over repeated runs, each reported with the raw ceiling of the
same machine measured in the same run (raw aiokafka produce/consume, raw asyncpg COPY)."""
from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


def compression() -> str | None:
    """The compression the services produce with (KAFKA_COMPRESSION, else the platform's default): the
    benchmarks' own producers and the raw ceilings use it too, so consumers decode what they would in
    production and a ceiling costs what the platform's produce costs."""
    from shared.config import CommonSettings

    name = os.environ.get("KAFKA_COMPRESSION") or str(CommonSettings.model_fields["kafka_compression"].default)
    return None if name == "none" else name


@dataclass
class Result:
    name: str
    unit: str
    runs: list[float] = field(default_factory=list)
    ceiling: str | None = None  # name of the raw ceiling this result is compared with
    note: str = ""
    bar: float | None = None  # the product's quality bar, in ``unit``
    lower_is_better: bool = False  # latencies: the bar is an upper bound

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else 0.0

    @property
    def verdict(self) -> str:
        if self.bar is None or not self.runs:
            return ""
        sign = "<" if self.lower_is_better else ">="
        met = self.median < self.bar if self.lower_is_better else self.median >= self.bar
        return f"{sign} {self.bar:,.0f}: {'met' if met else 'MISSED'}"


async def timed_rate(count: int, work: Callable[[], Awaitable[None]]) -> float:
    """Items per second for ``count`` items done by ``work``."""
    started = time.perf_counter()
    await work()
    return count / (time.perf_counter() - started)


def percentile(samples: list[float], pct: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


async def open_loop(rate: float, duration: float, send: Callable[[int, float], Awaitable[None]],
                    drain_timeout: float | None = None) -> tuple[float, int]:
    """Start ``send(i, scheduled)`` at fixed times ``t0 + i / rate`` (``time.perf_counter`` clock) for
    ``duration`` seconds, whatever earlier sends are doing (open loop: a slow answer never delays the next
    send, so latency measured from the scheduled time includes any queueing). Then wait for the sends still
    running, at most ``drain_timeout`` seconds, and cancel the rest. Returns (achieved start rate, number of
    sends cancelled)."""
    total = int(rate * duration)
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter() + 0.02
    i = 0
    while i < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            task = asyncio.create_task(send(i, t0 + i / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    started_all = time.perf_counter() - t0
    cancelled = 0
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain_timeout)
        for task in pending:
            task.cancel()
        cancelled = len(pending)
        if pending:
            await asyncio.wait(pending)
    return (total / started_all if started_all > 0 else 0.0), cancelled


def table(results: list[Result]) -> str:
    by_name = {r.name: r for r in results}
    lines = ["| benchmark | median | unit | runs | bar | raw ceiling (median) | ratio | note |",
             "|---|---:|---|---:|---|---|---:|---|"]
    for r in results:
        ceiling = by_name.get(r.ceiling) if r.ceiling else None
        ratio = f"{r.median / ceiling.median:.3g}" if ceiling and ceiling.median else ""
        ceil_text = f"{ceiling.name} ({_num(ceiling.median)} {ceiling.unit})" if ceiling else ""
        lines.append(f"| {r.name} | {_num(r.median)} | {r.unit} | {len(r.runs)} | {r.verdict} | {ceil_text} | "
                     f"{ratio} | {r.note} |")
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
