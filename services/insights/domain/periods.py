"""Report periods: a local day, an ISO week, a calendar month, or a custom range of local days.

Periods are ranges of whole local calendar days in the region's time zone, so a period is the same set of
rollup keys whatever the UTC offset, including the days a DST change makes 23 or 25 hours long. The period
label says its kind: ``2026-11-19`` (day), ``2026-W47`` (ISO week), ``2026-11`` (month); a custom range is
``from`` and ``to`` (both inclusive).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

MAX_CUSTOM_DAYS = 366

_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class PeriodError(ValueError):
    """A period that cannot be reported on; ``field`` names the query parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Period:
    kind: str  # day | week | month | custom
    first: date
    last: date  # inclusive

    @property
    def label(self) -> str:
        if self.kind == "day":
            return self.first.isoformat()
        if self.kind == "week":
            year, week, _ = self.first.isocalendar()
            return f"{year:04d}-W{week:02d}"
        if self.kind == "month":
            return f"{self.first.year:04d}-{self.first.month:02d}"
        return f"{self.first.isoformat()}..{self.last.isoformat()}"

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def previous(self) -> Period:
        """The period just before: the previous day, ISO week or month; for a custom range, as many days."""
        if self.kind == "month":
            last = self.first - timedelta(days=1)
            return month(last.year, last.month)
        return Period(self.kind, self.first - timedelta(days=self.days), self.first - timedelta(days=1))

    def day_list(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range(self.days)]

    def start_utc(self, tz: str) -> datetime:
        return datetime.combine(self.first, time(0), ZoneInfo(tz))

    def end_utc(self, tz: str) -> datetime:
        """Exclusive end: midnight after the last day, on the region's wall clock."""
        return datetime.combine(self.last + timedelta(days=1), time(0), ZoneInfo(tz))


def month(year: int, month_number: int) -> Period:
    last = calendar.monthrange(year, month_number)[1]
    return Period("month", date(year, month_number, 1), date(year, month_number, last))


def parse_day(value: str, field: str) -> date:
    m = _DAY.match(value.strip())
    if not m:
        raise PeriodError(field, f"{value!r} is not a date (YYYY-MM-DD)")
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError as exc:
        raise PeriodError(field, f"{value!r} is not a calendar date: {exc}") from None


def parse_period(period: str | None, start: str | None = None, end: str | None = None) -> Period:
    """From ``period`` (a day, ISO week or month label) or a custom ``from``/``to`` range, never both."""
    if period is not None and (start is not None or end is not None):
        raise PeriodError("period", "give either period or from/to, not both")
    if period is None:
        if start is None or end is None:
            missing = "from" if start is None else "to"
            raise PeriodError(missing if period is None and (start or end) else "period",
                              "give period (YYYY-MM-DD, YYYY-Www or YYYY-MM) or both from and to")
        first, last = parse_day(start, "from"), parse_day(end, "to")
        if last < first:
            raise PeriodError("to", f"to ({last}) is before from ({first})")
        if (last - first).days + 1 > MAX_CUSTOM_DAYS:
            raise PeriodError("to", f"a custom range spans at most {MAX_CUSTOM_DAYS} days")
        return Period("custom", first, last)
    value = period.strip()
    if _DAY.match(value):
        day = parse_day(value, "period")
        return Period("day", day, day)
    m = _WEEK.match(value)
    if m:
        try:
            first = date.fromisocalendar(int(m[1]), int(m[2]), 1)
        except ValueError:
            raise PeriodError("period", f"{value!r}: {m[1]} has no ISO week {m[2]}") from None
        return Period("week", first, first + timedelta(days=6))
    m = _MONTH.match(value)
    if m:
        if not 1 <= int(m[2]) <= 12 or int(m[1]) < 1:
            raise PeriodError("period", f"{value!r} is not a month (YYYY-MM)")
        return month(int(m[1]), int(m[2]))
    raise PeriodError("period", f"{value!r} is not a day (YYYY-MM-DD), ISO week (YYYY-Www) or month (YYYY-MM)")
