from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    name: str
    unit: str
    runs: list[float] = field(default_factory=list)
    ceiling: str | None = None  # name of the raw ceiling this result is compared with
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else 0.0


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


def table(results: list[Result]) -> str:
    by_name = {r.name: r for r in results}
    lines = ["| benchmark | median | unit | runs | raw ceiling (median) | ratio | note |",
             "|---|---:|---|---:|---|---:|---|"]
    for r in results:
        ceiling = by_name.get(r.ceiling) if r.ceiling else None
        ratio = f"{r.median / ceiling.median:.2f}" if ceiling and ceiling.median else ""
        ceil_text = f"{ceiling.name} ({ceiling.median:,.0f} {ceiling.unit})" if ceiling else ""
        lines.append(f"| {r.name} | {r.median:,.1f} | {r.unit} | {len(r.runs)} | {ceil_text} | {ratio} | "
                     f"{r.note} |")
    return "\n".join(lines)
