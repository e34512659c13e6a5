"""A strategy's return: treated buyers (decision ``issued``) against the holdout (decision ``holdout``).

Pure arithmetic on per-group tallies. Money stays exact: totals are integer minor units, per-buyer values
and the return on cost are ``Fraction``s (rounded only when shown); only the repeat rates and their
confidence interval are floats, because they are ratios of counts, not money.

The interval for the repeat-rate difference is Newcombe's hybrid score interval
(``shared.stats.newcombe_interval``, the one implementation): it combines the two groups' Wilson score
intervals, stays inside [-1, 1] and keeps close to its nominal coverage for small groups and rates near 0
or 1, where the Wald interval collapses. Moved here from auto_comp (issue 15): the return is analytics,
measured from the decisions and orders insights receives as events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time
from fractions import Fraction
from zoneinfo import ZoneInfo

from shared.stats import newcombe_interval

METHOD = "newcombe_hybrid_score"


@dataclass(frozen=True, slots=True)
class GroupTally:
    """One group's buyers whose window has fully elapsed."""

    buyers: int
    returning: int  # buyers with at least one later order in their window
    value_minor: int  # later-order value, all the group's buyers together
    cost_minor: int = 0  # issued amounts (the treated group only)
    value_squares: int = 0  # sum over buyers of (the buyer's later-order value)^2: the value's variance

    def __post_init__(self) -> None:
        if not 0 <= self.returning <= self.buyers:
            raise ValueError(f"returning buyers {self.returning} outside 0..{self.buyers}")
        if self.value_minor < 0 or self.cost_minor < 0:
            raise ValueError("value and cost are never negative")

    @property
    def repeat_rate(self) -> float | None:
        return None if self.buyers == 0 else self.returning / self.buyers

    @property
    def value_per_buyer(self) -> Fraction | None:
        return None if self.buyers == 0 else Fraction(self.value_minor, self.buyers)


@dataclass(frozen=True, slots=True)
class Comparison:
    repeat_rate_difference: float  # treated - control
    ci_low: float
    ci_high: float
    incremental_value_per_buyer: Fraction  # minor units, treated - control
    incremental_value: Fraction  # per buyer x treated buyers
    return_on_cost: Fraction | None  # incremental value / cost; None when nothing was issued
    method: str = METHOD
    confidence: float = 0.95


@dataclass(frozen=True, slots=True)
class ReturnSummary:
    treated: GroupTally
    control: GroupTally
    comparison: Comparison | None
    reason: str | None  # why there is no comparison


def compare(treated: GroupTally, control: GroupTally, *, min_group: int) -> ReturnSummary:
    """The comparison of two groups, or a reason why there is none."""
    if treated.buyers < min_group or control.buyers < min_group:
        return ReturnSummary(treated, control, None,
                             f"insufficient data: each group needs at least {min_group} buyers whose window "
                             f"has elapsed (treated {treated.buyers}, control {control.buyers})")
    ci = newcombe_interval(treated.returning, treated.buyers, control.returning, control.buyers)
    low, high = ci.low, ci.high
    per_buyer = Fraction(treated.value_minor, treated.buyers) - Fraction(control.value_minor, control.buyers)
    incremental = per_buyer * treated.buyers
    roc = None if treated.cost_minor == 0 else incremental / treated.cost_minor
    diff = treated.returning / treated.buyers - control.returning / control.buyers
    return ReturnSummary(treated, control, Comparison(diff, low, high, per_buyer, incremental, roc), None)


def decimal_string(value: Fraction, places: int) -> str:
    """``value`` rounded half away from zero to ``places`` decimals, exactly (no float on the way)."""
    scale = 10 ** places
    scaled = abs(value) * scale
    whole = math.floor(scaled + Fraction(1, 2))
    sign = "-" if value < 0 and whole != 0 else ""
    text = str(whole).rjust(places + 1, "0")
    return f"{sign}{text[:-places]}.{text[-places:]}" if places else f"{sign}{text}"


def local_day_bounds(start: date, end: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) as instants: midnight of each date on the region's wall clock (``end`` excluded)."""
    if end <= start:
        raise ValueError("'to' must be after 'from'")
    return datetime.combine(start, time(0), tz), datetime.combine(end, time(0), tz)
