"""Budget periods, cut on the region's wall clock: ``2026-11`` (month) or ``2026-11-22`` (day).

Shared: the ledger keeps budgets per period, and auto_comp spends allowances granted per period.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from shared.regions import Region

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


class InvalidPeriod(ValueError):
    pass


def period_of(instant: datetime, region: Region, granularity: str = "month") -> str:
    local = region.local(instant)
    if granularity == "day":
        return f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    return f"{local.year:04d}-{local.month:02d}"


def period_bounds(period: str, region: Region) -> tuple[datetime, datetime]:
    """[start, end) of the period as UTC instants; local midnight may fall on a DST change."""
    if m := _MONTH.match(period):
        year, month = int(m.group(1)), int(m.group(2))
        if not 1 <= month <= 12:
            raise InvalidPeriod(f"{period!r}: month must be 01..12")
        start = datetime(year, month, 1, tzinfo=region.tz)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=region.tz)
    elif m := _DAY.match(period):
        try:
            day = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError as exc:
            raise InvalidPeriod(f"{period!r}: {exc}") from None
        start = day.replace(tzinfo=region.tz)
        nxt = day + timedelta(days=1)
        end = nxt.replace(tzinfo=region.tz)
    else:
        raise InvalidPeriod(f"{period!r} is not a period: expected YYYY-MM or YYYY-MM-DD")
    return start.astimezone(UTC), end.astimezone(UTC)


def validate_period(period: str, granularity: str) -> str:
    pattern = _DAY if granularity == "day" else _MONTH
    if not pattern.match(period):
        raise InvalidPeriod(f"{period!r}: budgets here are per {granularity} "
                            f"({'YYYY-MM-DD' if granularity == 'day' else 'YYYY-MM'})")
    return period


def elapsed_fraction(at: datetime, start: datetime, end: datetime) -> tuple[int, int]:
    """(elapsed, total) in whole microseconds, elapsed clamped to the period; exact, no floats."""
    total = _micros(end - start)
    elapsed = min(max(_micros(at - start), 0), total)
    return elapsed, total


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
