"""Budget burn-down of a region's period: usage by local day against the limit, with the pace line.

Usage follows the ledger's rule (see ``rollups._budget``): committed when issued, less what automatic
vouchers release when redeemed for less, expire or are revoked. The pace line is where usage would be with
the limit spread evenly over the period's days: ``floor(limit * d / days)`` after day ``d``, exact in minor
units. The projection extends the average daily usage so far to the whole period; the projected
exhaustion day is the local day on which usage at that pace reaches the limit (``exhaustion_day``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from services.insights.domain.periods import Period

MAX_AHEAD_DAYS = 3660


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
    exhausts = exhaustion_day(period, limit_minor, days, elapsed)
    return {"region": region, "currency": currency, "period": period.label, "limit_minor": limit_minor,
            "projected_exhaustion_day": None if exhausts is None else exhausts.isoformat(),
            "exhausts_before_period_end": None if exhausts is None else exhausts <= period.last,
            "used_minor": used_to_date, "days_elapsed": elapsed, "days": days,
            "projected_end_minor": projected,
            "projected_over_limit": None if limit_minor is None or projected is None else projected > limit_minor,
            "ahead_of_pace_minor": (None if limit_minor is None or elapsed == 0
                                    else used_to_date - days[elapsed - 1]["pace_minor"])}


def exhaustion_day(period: Period, limit_minor: int | None, days: list[dict[str, Any]], elapsed: int) -> date | None:
    """The local day usage reaches the limit: the first elapsed day it already did, else, at the average
    usage per elapsed day, day ``elapsed + ceil(remaining * elapsed / used)`` counted from the period's
    first day (it may fall after the period). None without a limit, before the first day, or with no usage
    (no pace to extend). Integer arithmetic only; at most ``MAX_AHEAD_DAYS`` past the last elapsed day."""
    if limit_minor is None or elapsed == 0:
        return None
    for i, d in enumerate(days[:elapsed]):
        if d["used_minor"] >= limit_minor:
            return period.first + timedelta(days=i)
    used = days[elapsed - 1]["used_minor"]
    if used <= 0:
        return None
    remaining = limit_minor - used
    ahead = min(-(-remaining * elapsed // used), MAX_AHEAD_DAYS)  # ceil; a trickle lasts "ten years", not forever
    return period.first + timedelta(days=elapsed - 1 + ahead)
