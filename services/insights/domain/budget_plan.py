"""Budget formulation: next period's automatic and manual spend from ticket volume x cost per ticket.

For each scenario (ticket reason) the month's ticket volume is forecast from the daily history with a
weekday and a month-of-year factor (classic decomposition: ratio to a centred 12-month moving average for
the month factor, weekday means of the month-adjusted counts for the weekday factor) on a level measured
over the last 8 weeks. Spend is that volume times the scenario's cost per ticket (automatic and manual,
separately) over a recent cost window: the strategies active now when the caller says which days and
amounts those are, otherwise the 8 weeks before the forecast origin.

The 80% interval is empirical, not a model assumption: the same method is run as of the start of each of
the 12 months before the target (data before that month only), the log errors ``ln((actual + 1) /
(forecast + 1))`` of those months give a root mean square ``s``, and the band is ``(f + 1) * exp(+-q * s)
- 1`` with ``q`` = 1.2816 (the normal's 90% quantile); with fewer than 4 past months there is no band. The
backtest repeats exactly that for each of the last 12 complete months (each with its own 12 earlier
months) and reports how often the actual fell inside the band (coverage) and the mean absolute percentage
error (MAPE). docs/metrics.md has the formulas.

Pure: no I/O. Volumes and errors are floats (they are estimates); money leaves this module as whole minor
units rounded half up (``to_minor``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from services.insights.domain.periods import Period, month

LEVEL_DAYS = 56  # the level: the last 8 weeks, adjusted for weekday and month
WEEKDAY_DAYS = 182  # weekday factors: the last 26 weeks
COST_DAYS = 56  # cost per ticket when the caller gives no window of its own
ERROR_MONTHS = 12  # past months whose errors set the band
MIN_ERRORS = 4  # fewer past months than this: no band
BACKTEST_MONTHS = 12
LEVEL = 0.80  # the band's nominal coverage

# The normal's 90% quantile (a two-sided 80% band). Student's t with as many degrees of freedom as errors was
# tried and over-covered on simulated history (83.6% over 30 seeds x 12 months x 4 measures, against 80.8%
# with the normal): the older months' errors, forecast with less history, already overstate today's error.
Z80 = 1.2816
MEASURES = ("auto", "manual", "total", "tickets")


@dataclass(frozen=True, slots=True)
class ScenarioDay:
    """One scenario's local day: tickets raised, and what they were compensated (by the ticket's day)."""

    tickets: int = 0
    auto_minor: int = 0
    manual_minor: int = 0


History = Mapping[date, Mapping[str, ScenarioDay]]


@dataclass(frozen=True, slots=True)
class CostPerTicket:
    """A scenario's cost per ticket over a window: exact totals, so nothing is rounded before the end."""

    tickets: int
    auto_minor: int
    manual_minor: int

    @property
    def auto(self) -> float:
        return self.auto_minor / self.tickets if self.tickets else 0.0

    @property
    def manual(self) -> float:
        return self.manual_minor / self.tickets if self.tickets else 0.0


@dataclass(frozen=True, slots=True)
class Forecast:
    """Point forecast of one period: per scenario tickets and spend, and the totals (floats: estimates)."""

    period: Period
    origin: date  # the last day of data it used
    tickets: dict[str, float]
    auto: dict[str, float]
    manual: dict[str, float]
    cost: dict[str, CostPerTicket]

    def total(self, measure: str) -> float:
        if measure == "tickets":
            return sum(self.tickets.values())
        if measure == "auto":
            return sum(self.auto.values())
        if measure == "manual":
            return sum(self.manual.values())
        return sum(self.auto.values()) + sum(self.manual.values())


@dataclass(frozen=True, slots=True)
class Band:
    low: float
    high: float
    errors: int  # past months behind it
    spread: float  # the log errors' root mean square


@dataclass(slots=True)
class Backtest:
    months: list[dict[str, Any]] = field(default_factory=list)
    coverage: dict[str, float | None] = field(default_factory=dict)
    covered: dict[str, int] = field(default_factory=dict)
    judged: dict[str, int] = field(default_factory=dict)
    mape: dict[str, float | None] = field(default_factory=dict)


def to_minor(value: float) -> int:
    """An estimate of money as whole minor units, rounded half up (never below 0)."""
    return max(0, int(Decimal(repr(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def month_of(day: date) -> Period:
    return month(day.year, day.month)


def add_months(p: Period, n: int) -> Period:
    index = p.first.year * 12 + p.first.month - 1 + n
    return month(index // 12, index % 12 + 1)


def scenarios(history: History) -> list[str]:
    return sorted({s for by in history.values() for s in by})


# ------------------------------------------------------------------ seasonality


def month_factors(daily: Mapping[date, int], first: date, last: date) -> dict[int, float]:
    """Month-of-year factor per calendar month (1..12): the mean over the years of each complete month's
    daily mean divided by its centred 12-month moving average (half weights on the two ends), normalised to
    average 1 over the months known. A month with no complete centred window gets 1."""
    months: list[tuple[Period, float]] = []
    p = month_of(first) if first.day == 1 else add_months(month_of(first), 1)
    while p.last <= last:
        total = sum(daily.get(d, 0) for d in p.day_list())
        months.append((p, total / p.days))
        p = add_months(p, 1)
    ratios: dict[int, list[float]] = {}
    for i in range(6, len(months) - 6):
        window = [m for _, m in months[i - 6:i + 7]]
        centred = (0.5 * window[0] + sum(window[1:12]) + 0.5 * window[12]) / 12
        if centred > 0:
            ratios.setdefault(months[i][0].first.month, []).append(months[i][1] / centred)
    factors = {k: sum(v) / len(v) for k, v in ratios.items()}
    if factors:
        mean = sum(factors.values()) / len(factors)
        if mean > 0:
            factors = {k: v / mean for k, v in factors.items()}
    return {k: factors.get(k, 1.0) for k in range(1, 13)}


def weekday_factors(daily: Mapping[date, int], first: date, last: date, months: Mapping[int, float]
                    ) -> list[float]:
    """Mean month-adjusted count per weekday (Monday = 0) over the mean of all days; 1 where unknown."""
    sums, counts = [0.0] * 7, [0] * 7
    day = first
    while day <= last:
        m = months[day.month] or 1.0
        sums[day.weekday()] += daily.get(day, 0) / m
        counts[day.weekday()] += 1
        day += timedelta(days=1)
    means = [s / c if c else 0.0 for s, c in zip(sums, counts, strict=True)]
    known = [m for m, c in zip(means, counts, strict=True) if c]
    overall = sum(known) / len(known) if known else 0.0
    if overall <= 0:
        return [1.0] * 7
    return [m / overall if c else 1.0 for m, c in zip(means, counts, strict=True)]


def volume(daily: Mapping[date, int], history_first: date, origin: date, target: Period) -> float:
    """Expected tickets of one scenario over ``target`` from its daily counts up to ``origin``."""
    months = month_factors(daily, history_first, origin)
    week_first = max(history_first, origin - timedelta(days=WEEKDAY_DAYS - 1))
    weekdays = weekday_factors(daily, week_first, origin, months)

    def season(day: date) -> float:
        return weekdays[day.weekday()] * months[day.month]

    level_first = max(history_first, origin - timedelta(days=LEVEL_DAYS - 1))
    observed = expected = 0.0
    day = level_first
    while day <= origin:
        observed += daily.get(day, 0)
        expected += season(day)
        day += timedelta(days=1)
    if expected <= 0:
        return 0.0
    level = observed / expected
    return level * sum(season(d) for d in target.day_list())


# ------------------------------------------------------------------ forecast


def cost_per_ticket(history: History, first: date, last: date) -> dict[str, CostPerTicket]:
    out: dict[str, list[int]] = {}
    day = first
    while day <= last:
        for s, v in history.get(day, {}).items():
            acc = out.setdefault(s, [0, 0, 0])
            acc[0] += v.tickets
            acc[1] += v.auto_minor
            acc[2] += v.manual_minor
        day += timedelta(days=1)
    return {s: CostPerTicket(*v) for s, v in out.items()}


def forecast(history: History, history_first: date, origin: date, target: Period, *,
             cost: Mapping[str, CostPerTicket] | None = None) -> Forecast:
    """Point forecast of ``target`` with the data of [history_first, origin]. ``cost``: cost per ticket per
    scenario (the strategies active now); default: the ``COST_DAYS`` up to ``origin``."""
    if cost is None:
        cost = cost_per_ticket(history, max(history_first, origin - timedelta(days=COST_DAYS - 1)), origin)
    tickets: dict[str, float] = {}
    auto: dict[str, float] = {}
    manual: dict[str, float] = {}
    for s in scenarios(history):
        daily = {d: by[s].tickets for d, by in history.items() if s in by and history_first <= d <= origin}
        v = volume(daily, history_first, origin, target)
        c = cost.get(s, CostPerTicket(0, 0, 0))
        tickets[s], auto[s], manual[s] = v, v * c.auto, v * c.manual
    return Forecast(target, origin, tickets, auto, manual, dict(cost))


def actual(history: History, p: Period) -> dict[str, float]:
    t = a = m = 0
    for day in p.day_list():
        for v in history.get(day, {}).values():
            t, a, m = t + v.tickets, a + v.auto_minor, m + v.manual_minor
    return {"tickets": float(t), "auto": float(a), "manual": float(m), "total": float(a + m)}


def log_error(actual_value: float, forecast_value: float) -> float:
    return math.log((actual_value + 1.0) / (forecast_value + 1.0))


def band(point: float, errors: Sequence[float]) -> Band | None:
    """The 80% band around ``point`` from past log errors (None with fewer than ``MIN_ERRORS``)."""
    if len(errors) < MIN_ERRORS:
        return None
    spread = math.sqrt(sum(e * e for e in errors) / len(errors))
    q = Z80
    return Band(max(0.0, (point + 1.0) * math.exp(-q * spread) - 1.0), (point + 1.0) * math.exp(q * spread) - 1.0,
                len(errors), spread)


class Planner:
    """Forecasts of one region's history, each month's point forecast computed once."""

    def __init__(self, history: History, history_first: date, last_day: date) -> None:
        self.history, self.first, self.last = history, history_first, last_day
        self._points: dict[str, Forecast] = {}

    def point(self, p: Period) -> Forecast:
        """As of the day before ``p`` (a past month) or the last day of data (a future one)."""
        if p.label not in self._points:
            origin = min(self.last, p.first - timedelta(days=1))
            self._points[p.label] = forecast(self.history, self.first, origin, p)
        return self._points[p.label]

    def complete(self, p: Period) -> bool:
        """A past month the history covers whole, with at least one earlier day to forecast it from."""
        return p.last <= self.last and p.first > self.first

    def errors(self, before: Period, measure: str) -> list[float]:
        """Log errors of the ``ERROR_MONTHS`` newest complete months before ``before`` (fewer when the
        history is shorter; months not yet complete, like the current one, are skipped)."""
        out: list[float] = []
        p = add_months(before, -1)
        while len(out) < ERROR_MONTHS and p.first > self.first:
            if self.complete(p):
                out.append(log_error(actual(self.history, p)[measure], self.point(p).total(measure)))
            p = add_months(p, -1)
        return out

    def backtest(self, before: Period) -> Backtest:
        """The last ``BACKTEST_MONTHS`` complete months before ``before``: each forecast from the data before
        it, with its own band from the months before it; coverage and MAPE per measure."""
        result = Backtest()
        covered = dict.fromkeys(MEASURES, 0)
        judged = dict.fromkeys(MEASURES, 0)
        ape: dict[str, list[float]] = {m: [] for m in MEASURES}
        # The newest complete month before ``before``, then back while the history covers whole months.
        p = add_months(min(before, month_of(self.last + timedelta(days=1)), key=lambda x: x.first), -1)
        if p.last > self.last:
            p = add_months(p, -1)
        months: list[Period] = []
        while len(months) < BACKTEST_MONTHS and self.complete(p):
            months.append(p)
            p = add_months(p, -1)
        for p in reversed(months):
            real = actual(self.history, p)
            point = self.point(p)
            row: dict[str, Any] = {"period": p.label}
            for m in MEASURES:
                f = point.total(m)
                b = band(f, self.errors(p, m))
                inside = None if b is None else b.low <= real[m] <= b.high
                if inside is not None:
                    judged[m] += 1
                    covered[m] += int(inside)
                if real[m] > 0:
                    ape[m].append(abs(real[m] - f) / real[m])
                row[m] = {"forecast": f, "low": None if b is None else b.low, "high": None if b is None else b.high,
                          "actual": real[m], "inside": inside}
            result.months.append(row)
        result.covered, result.judged = covered, judged
        result.coverage = {m: covered[m] / judged[m] if judged[m] else None for m in MEASURES}
        result.mape = {m: sum(v) / len(v) if v else None for m, v in ape.items()}
        return result
