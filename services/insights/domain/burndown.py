"""Budget burn-down of a region's period: usage by local day against the limit, with the pace line.

Usage follows the ledger's rule (see ``rollups._budget``): committed when issued, less what automatic
vouchers release when redeemed for less, expire or are revoked. The pace line is where usage would be with
the limit spread evenly over the period's days: ``floor(limit * d / days)`` after day ``d``, exact in minor
units. The projection extends the average daily usage so far to the whole period.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from services.insights.domain.periods import Period


def burndown(*, region: str, currency: str, period: Period, limit_minor: int | None,
             daily: Mapping[date, Mapping[str, tuple[int, int]]], today: date) -> dict[str, Any]:
    """``daily``: local day -> source (auto, manual) -> (committed, released) in minor units."""
    used = 0
    days: list[dict[str, Any]] = []
    elapsed = 0
    for i, day in enumerate(period.day_list(), start=1):
        by_source = daily.get(day, {})
        committed = sum(c for c, _ in by_source.values())
        released = sum(r for _, r in by_source.values())
        used += committed - released
        pace = None if limit_minor is None else limit_minor * i // period.days
        if day <= today:
            elapsed = i
        days.append({"day": day.isoformat(), "committed_minor": committed, "released_minor": released,
                     "committed_auto_minor": by_source.get("auto", (0, 0))[0],
                     "committed_manual_minor": by_source.get("manual", (0, 0))[0],
                     "used_minor": used, "pace_minor": pace,
                     "remaining_minor": None if limit_minor is None else limit_minor - used,
                     "future": day > today})
    used_to_date = days[elapsed - 1]["used_minor"] if elapsed else 0
    projected = None if elapsed == 0 else used_to_date * period.days // elapsed
    return {"region": region, "currency": currency, "period": period.label, "limit_minor": limit_minor,
            "used_minor": used_to_date, "days_elapsed": elapsed, "days": days,
            "projected_end_minor": projected,
            "projected_over_limit": None if limit_minor is None or projected is None else projected > limit_minor,
            "ahead_of_pace_minor": (None if limit_minor is None or elapsed == 0
                                    else used_to_date - days[elapsed - 1]["pace_minor"])}
