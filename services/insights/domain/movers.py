"""Root causes: what moved between two periods, and why a ratio changed.

Pure arithmetic on per-dimension-value tallies (a dimension is reason, carrier, seller, strategy, ...; one
region, so one currency, per call). Counts and money stay exact: changes are ints of tickets or minor
units, shares and contributions are ``Fraction``s, rounded only when shown (``as_decimal``).

Three questions, three functions:

- ``top_movers``: which values changed most against the previous period, and what share of the total
  change each one carries. The values not listed are summed into ``others``, so the listed contributions
  plus the rest's always add up to exactly 1 (when the total changed at all).
- ``decompose_ratio``: a ratio over segments (compensation rate = compensated tickets / tickets, cost per
  ticket = minor units / tickets, ...) changed; how much of the change is *mix* (the segments' shares of
  the denominator moved) and how much is *rate* (the segments' own ratios moved). It is the symmetric
  (midpoint) shift-share decomposition of Kitagawa (1955, JASA 50:1168-1194), exact with no residual::

      R = sum_i w_i * r_i                  w_i = d_i / D (share of the denominator), r_i = n_i / d_i
      R1 - R0 = sum_i (w1_i - w0_i) * (r0_i + r1_i) / 2     <- mix
              + sum_i (r1_i - r0_i) * (w0_i + w1_i) / 2     <- rate

  because a1*b1 - a0*b0 = (a1 - a0)(b0 + b1)/2 + (b1 - b0)(a0 + a1)/2 for any numbers. A segment present
  in one period only (denominator 0 in the other) has no rate there; it is given the rate it has in the
  period where it exists, so its whole contribution (entering: +w1*r1, leaving: -w0*r0) is mix and its
  rate effect is 0: a segment that appears or disappears changes the composition, not a rate.
- ``spike_contributors``: for one bucket that a spike alert names, which values carry the excess over
  their usual level (the mean of the same bucket in earlier weeks, which the caller supplies).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction


class Measure(enum.StrEnum):
    COUNT = "count"
    AMOUNT = "amount"


class Presence(enum.StrEnum):
    BOTH = "both"  # in the previous and the current period
    NEW = "new"  # only in the current period
    GONE = "gone"  # only in the previous period


class UndefinedRatio(ValueError):
    """A period's total denominator is 0: there is no ratio to explain."""


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return value


def as_decimal(value: Fraction, places: int = 4) -> Decimal:
    """``value`` rounded half away from zero to ``places`` decimals, exactly (for display and JSON)."""
    if places < 0:
        raise ValueError("places must be >= 0")
    with localcontext() as ctx:
        ctx.prec = 80
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


# --- top movers ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tally:
    """One dimension value's totals in one period: tickets (or compensations) and their amount."""

    count: int
    amount_minor: int = 0

    def __post_init__(self) -> None:
        if _int(self.count, "count") < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        _int(self.amount_minor, "amount_minor")

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.count + other.count, self.amount_minor + other.amount_minor)


ZERO = Tally(0, 0)


def _share(part: int, whole: int) -> Fraction | None:
    return None if whole == 0 else Fraction(part, whole)


@dataclass(frozen=True, slots=True)
class Mover:
    """One value's change. Contributions are its share of the total change (None when the total did not
    change); they can be negative (it moved against the total) or above 1 (others offset it)."""

    key: str
    presence: Presence
    previous: Tally
    current: Tally
    count_change: int
    amount_change_minor: int
    count_contribution: Fraction | None
    amount_contribution: Fraction | None
    previous_share: Fraction | None  # of the period's count
    current_share: Fraction | None


@dataclass(frozen=True, slots=True)
class Others:
    """Every value not listed among the top movers, together."""

    values: int
    previous: Tally
    current: Tally
    count_change: int
    amount_change_minor: int
    count_contribution: Fraction | None
    amount_contribution: Fraction | None


@dataclass(frozen=True, slots=True)
class MoversReport:
    measure: Measure  # what the movers are ranked by
    previous_total: Tally
    current_total: Tally
    count_change: int
    amount_change_minor: int
    movers: tuple[Mover, ...]
    others: Others | None  # None when every value that changed is listed

    @property
    def count_change_ratio(self) -> Fraction | None:
        """Relative change of the count (current / previous - 1); None when the previous count was 0."""
        prev = self.previous_total.count
        return None if prev == 0 else Fraction(self.current_total.count - prev, prev)


def top_movers(previous: Mapping[str, Tally], current: Mapping[str, Tally], *, top: int = 5,
               measure: Measure = Measure.COUNT) -> MoversReport:
    """The ``top`` values with the largest absolute change in ``measure`` (ties: the other measure's
    absolute change, then the key), each with its contribution to the total change."""
    if top < 1:
        raise ValueError("top must be >= 1")
    keys = sorted(set(previous) | set(current))
    prev_total = sum((previous.get(k, ZERO) for k in keys), ZERO)
    cur_total = sum((current.get(k, ZERO) for k in keys), ZERO)
    d_count = cur_total.count - prev_total.count
    d_amount = cur_total.amount_minor - prev_total.amount_minor

    rows: list[Mover] = []
    for key in keys:
        p, c = previous.get(key, ZERO), current.get(key, ZERO)
        presence = (Presence.NEW if p == ZERO and c != ZERO
                    else Presence.GONE if c == ZERO and p != ZERO else Presence.BOTH)
        dc, da = c.count - p.count, c.amount_minor - p.amount_minor
        rows.append(Mover(key, presence, p, c, dc, da, _share(dc, d_count), _share(da, d_amount),
                          _share(p.count, prev_total.count), _share(c.count, cur_total.count)))

    def rank(m: Mover) -> tuple[int, int, str]:
        first, second = ((m.count_change, m.amount_change_minor) if measure is Measure.COUNT
                         else (m.amount_change_minor, m.count_change))
        return (-abs(first), -abs(second), m.key)

    moved = sorted((m for m in rows if m.count_change or m.amount_change_minor), key=rank)
    listed = moved[:top]
    listed_keys = {m.key for m in listed}
    rest = [m for m in rows if m.key not in listed_keys]
    others = None
    if any(m.count_change or m.amount_change_minor for m in rest):
        rp = sum((m.previous for m in rest), ZERO)
        rc = sum((m.current for m in rest), ZERO)
        oc, oa = rc.count - rp.count, rc.amount_minor - rp.amount_minor
        others = Others(len(rest), rp, rc, oc, oa, _share(oc, d_count), _share(oa, d_amount))
    return MoversReport(measure, prev_total, cur_total, d_count, d_amount, tuple(listed), others)


# --- ratio decomposition --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RatioPart:
    """A segment's numerator and denominator in one period (e.g. compensated tickets and tickets, or
    issued minor units and tickets)."""

    numerator: int
    denominator: int

    def __post_init__(self) -> None:
        _int(self.numerator, "numerator")
        if _int(self.denominator, "denominator") < 0:
            raise ValueError(f"denominator must be >= 0, got {self.denominator}")


@dataclass(frozen=True, slots=True)
class SegmentEffect:
    key: str
    presence: Presence
    previous: RatioPart
    current: RatioPart
    previous_weight: Fraction  # share of the period's denominator
    current_weight: Fraction
    previous_rate: Fraction | None  # None where the segment has no denominator
    current_rate: Fraction | None
    mix: Fraction
    rate: Fraction

    @property
    def total(self) -> Fraction:
        """This segment's contribution to the change: mix + rate, exactly."""
        return self.mix + self.rate


@dataclass(frozen=True, slots=True)
class RatioDecomposition:
    previous_rate: Fraction
    current_rate: Fraction
    change: Fraction  # current_rate - previous_rate == mix + rate, exactly
    mix: Fraction
    rate: Fraction
    segments: tuple[SegmentEffect, ...]  # largest absolute contribution first (ties: key)


def decompose_ratio(previous: Mapping[str, RatioPart], current: Mapping[str, RatioPart]) -> RatioDecomposition:
    """Split the change of sum(numerators) / sum(denominators) into per-segment mix and rate effects.

    Raises ``UndefinedRatio`` when either period's total denominator is 0, and ``ValueError`` when a
    segment has a numerator but no denominator in a period (its ratio, and so its effects, would not
    exist: count numerators in the segment and period of their denominator).
    """
    zero = RatioPart(0, 0)
    keys = sorted(set(previous) | set(current))
    for period, parts in (("previous", previous), ("current", current)):
        for key, part in parts.items():
            if part.denominator == 0 and part.numerator != 0:
                raise ValueError(f"segment {key!r} has a numerator of {part.numerator} but no denominator "
                                 f"in the {period} period")
    d0 = sum(previous.get(k, zero).denominator for k in keys)
    d1 = sum(current.get(k, zero).denominator for k in keys)
    if d0 == 0 or d1 == 0:
        raise UndefinedRatio(f"the {'previous' if d0 == 0 else 'current'} period has a denominator of 0")
    r0 = Fraction(sum(previous.get(k, zero).numerator for k in keys), d0)
    r1 = Fraction(sum(current.get(k, zero).numerator for k in keys), d1)

    effects: list[SegmentEffect] = []
    for key in keys:
        p, c = previous.get(key, zero), current.get(key, zero)
        if p.denominator == 0 and c.denominator == 0:
            continue
        w0, w1 = Fraction(p.denominator, d0), Fraction(c.denominator, d1)
        rate0 = Fraction(p.numerator, p.denominator) if p.denominator else None
        rate1 = Fraction(c.numerator, c.denominator) if c.denominator else None
        if rate0 is None:
            assert rate1 is not None
            presence, a, b = Presence.NEW, rate1, rate1
        elif rate1 is None:
            presence, a, b = Presence.GONE, rate0, rate0
        else:
            presence, a, b = Presence.BOTH, rate0, rate1
        mix = (w1 - w0) * (a + b) / 2
        rate = (b - a) * (w0 + w1) / 2
        effects.append(SegmentEffect(key, presence, p, c, w0, w1, rate0, rate1, mix, rate))
    effects.sort(key=lambda e: (-abs(e.total), e.key))
    mix_total = sum((e.mix for e in effects), Fraction(0))
    rate_total = sum((e.rate for e in effects), Fraction(0))
    return RatioDecomposition(r0, r1, r1 - r0, mix_total, rate_total, tuple(effects))


# --- contributors to a spike ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Contributor:
    """A value that carries part of a spike: its count in the alert's bucket against its usual level."""

    key: str
    observed: int
    expected: Fraction  # mean of the same bucket in the baseline weeks
    excess: Fraction  # observed - expected
    share: Fraction | None  # of the bucket's net excess (all values); None when there is no net excess


def spike_contributors(at_bucket: Mapping[str, int], baseline_buckets: Sequence[Mapping[str, int]], *,
                       top: int = 3) -> tuple[Contributor, ...]:
    """The ``top`` values with the largest positive excess in the alert's bucket.

    ``at_bucket`` is the breakdown (value -> count) of the bucket an alert names; ``baseline_buckets``
    are the breakdowns of the same bucket of the week in earlier weeks (the spike detector's baseline
    weeks). A value's expected count is its mean over those buckets (0 where absent). Shares are of the
    net excess over every value, so all values' shares add up to 1; the listed ones can add up to more
    when other values fell.
    """
    if top < 1:
        raise ValueError("top must be >= 1")
    if not baseline_buckets:
        raise ValueError("a spike's contributors need at least one baseline bucket")
    for breakdown in (at_bucket, *baseline_buckets):
        for key, n in breakdown.items():
            if _int(n, f"count of {key!r}") < 0:
                raise ValueError(f"count of {key!r} must be >= 0, got {n}")
    keys = set(at_bucket).union(*baseline_buckets)
    weeks = len(baseline_buckets)
    rows = []
    for key in keys:
        expected = Fraction(sum(b.get(key, 0) for b in baseline_buckets), weeks)
        observed = at_bucket.get(key, 0)
        rows.append((key, observed, expected, observed - expected))
    net = sum((r[3] for r in rows), Fraction(0))
    ranked = sorted((r for r in rows if r[3] > 0), key=lambda r: (-r[3], r[0]))[:top]
    return tuple(Contributor(k, o, e, x, x / net if net > 0 else None) for k, o, e, x in ranked)
