"""Budget periods, cut on the region's wall clock: ``2026-11`` (month) or ``2026-11-22`` (day).

Shared: the ledger keeps budgets per period, and auto_comp spends allowances granted per period.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from shared.contracts.envelope import EARLIEST_YEAR, LATEST_YEAR
from shared.regions import Region

# ASCII digits only (``\d`` would take any Unicode digit), and no trailing newline (``$`` would allow one).
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


class InvalidPeriod(ValueError):
    pass


def period_of(instant: datetime, region: Region, granularity: str = "month") -> str:
    local = region.local(instant)
    if granularity == "day":
        return f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    return f"{local.year:04d}-{local.month:02d}"


def _local_days(period: str) -> tuple[datetime, datetime]:
    """[first day, day after the last) of a period as naive local midnights; InvalidPeriod when it is not
    a calendar month or day of the years the platform accepts (ADR 0006)."""
    m = _MONTH.fullmatch(period) or _DAY.fullmatch(period)
    if m is None:
        raise InvalidPeriod(f"{period!r} is not a period: expected YYYY-MM or YYYY-MM-DD")
    year, month = int(m.group(1)), int(m.group(2))
    if not EARLIEST_YEAR <= year <= LATEST_YEAR:
        raise InvalidPeriod(f"{period!r}: the year must be between {EARLIEST_YEAR} and {LATEST_YEAR}")
    if not 1 <= month <= 12:
        raise InvalidPeriod(f"{period!r}: month must be 01..12")
    if m.re is _MONTH:
        return datetime(year, month, 1), datetime(year + month // 12, month % 12 + 1, 1)
    try:
        day = datetime(year, month, int(m.group(3)))
    except ValueError as exc:
        raise InvalidPeriod(f"{period!r}: {exc}") from None
    return day, day + timedelta(days=1)


def period_bounds(period: str, region: Region) -> tuple[datetime, datetime]:
    """[start, end) of the period as UTC instants; local midnight may fall on a DST change."""
    start, end = _local_days(period)
    return start.replace(tzinfo=region.tz).astimezone(UTC), end.replace(tzinfo=region.tz).astimezone(UTC)


def validate_period(period: str, granularity: str) -> str:
    pattern = _DAY if granularity == "day" else _MONTH
    if not pattern.fullmatch(period):
        raise InvalidPeriod(f"{period!r}: budgets here are per {granularity} "
                            f"({'YYYY-MM-DD' if granularity == 'day' else 'YYYY-MM'})")
    _local_days(period)
    return period


def elapsed_fraction(at: datetime, start: datetime, end: datetime) -> tuple[int, int]:
    """(elapsed, total) in whole microseconds, elapsed clamped to the period; exact, no floats."""
    total = _micros(end - start)
    elapsed = min(max(_micros(at - start), 0), total)
    return elapsed, total


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
