"""Spike alerts to mark on the dashboard's charts, read from insights' ``spike_alerts`` table.

Spike detection is wired into the service separately (issue 10, branch issue10-spikes: the detector stores
one row per series, local day and kind). Until that table exists this answers an empty list, so the pages
work before and after it lands; the columns read here are the ones that branch's migration creates.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class SpikeMark:
    dimension: str  # reason, carrier, seller
    key: str
    day: date  # the region's local day of the alert's bucket
    kind: str  # spike (one bucket above the band) or shift (a sustained rise)
    observed: int
    expected: float
    upper: float  # the band's upper edge

    @property
    def note(self) -> str:
        return (f"{self.kind} in {self.dimension} {self.key}: {self.observed} tickets, expected "
                f"{self.expected:.1f} (ordinary up to {self.upper:.1f})")


async def spike_marks(conn: AsyncConnection, region: str, first: date, last: date,
                      dimension: str | None = None) -> list[SpikeMark]:
    """The region's alerts on local days [first, last] (of one dimension, or all); [] while the spike
    table does not exist."""
    missing = (await conn.execute(text("SELECT to_regclass('spike_alerts') IS NULL"))).scalar()
    if missing:
        return []
    rows = await conn.execute(text(
        "SELECT dimension, series_key, day, kind, observed, expected, upper_edge FROM spike_alerts "
        "WHERE region = :r AND day BETWEEN :a AND :b AND (CAST(:d AS text) IS NULL OR dimension = :d) "
        "ORDER BY day, dimension, series_key, kind"), {"r": region, "a": first, "b": last, "d": dimension})
    return [SpikeMark(r.dimension, r.series_key, r.day, r.kind, int(r.observed), float(r.expected),
                      float(r.upper_edge)) for r in rows]
