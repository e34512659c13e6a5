"""The statistics of a strategy's return: Wilson and Newcombe intervals against published values, the
comparison's exact money, and the edge cases (no returns, every buyer returns, too few buyers)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.insights.domain.returns import GroupTally, compare, decimal_string, local_day_bounds
from shared import stats


def wilson_interval(x: int, n: int) -> tuple[float, float]:
    i = stats.wilson_interval(x, n)
    return i.low, i.high


def newcombe_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    i = stats.newcombe_interval(x1, n1, x2, n2)
    return i.low, i.high

# Newcombe (1998) "Two-sided confidence intervals for the single proportion", Table I, method 3 (score).
WILSON = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)), ((0, 20), (0.0, 0.1611)),
          ((1, 29), (0.0061, 0.1718))]
# Newcombe (1998) "Interval estimation for the difference between independent proportions", Table II,
# method 10 (hybrid score, no continuity correction).
NEWCOMBE = [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)),
            ((5, 56, 0, 29), (-0.0381, 0.1926)), ((0, 10, 0, 20), (-0.1611, 0.2775)),
            ((0, 10, 0, 10), (-0.2775, 0.2775)), ((10, 10, 0, 20), (0.6791, 1.0)),
            ((10, 10, 0, 10), (0.6075, 1.0))]


@pytest.mark.parametrize(("counts", "expected"), WILSON)
def test_wilson_matches_published_values(counts, expected):
    low, high = wilson_interval(*counts)
    assert (round(low, 4), round(high, 4)) == expected


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE)
def test_newcombe_matches_published_values(counts, expected):
    low, high = newcombe_interval(*counts)
    assert (round(low, 4), round(high, 4)) == expected


def test_hand_computed_comparison():
    # treated: 40 buyers, 12 returned, 600.00 of later orders, 80.00 issued;
    # control: 40 buyers, 8 returned, 400.00 of later orders.
    treated = GroupTally(buyers=40, returning=12, value_minor=60_000, cost_minor=8_000)
    control = GroupTally(buyers=40, returning=8, value_minor=40_000)
    summary = compare(treated, control, min_group=30)
    c = summary.comparison
    assert c is not None and summary.reason is None
    assert c.repeat_rate_difference == pytest.approx(0.1)
    # per buyer 1500 - 1000 = 500 minor units; x 40 treated buyers = 20,000; / 8,000 cost = 5/2
    assert c.incremental_value_per_buyer == 500 and c.incremental_value == 20_000
    assert c.return_on_cost == Fraction(5, 2)
    assert c.ci_low < 0.1 < c.ci_high
    # the interval from the two Wilson intervals, by hand: p1 = 0.3, p2 = 0.2
    l1, u1 = wilson_interval(12, 40)
    l2, u2 = wilson_interval(8, 40)
    assert c.ci_low == pytest.approx(0.1 - ((0.3 - l1) ** 2 + (u2 - 0.2) ** 2) ** 0.5)
    assert c.ci_high == pytest.approx(0.1 + ((u1 - 0.3) ** 2 + (0.2 - l2) ** 2) ** 0.5)


def test_exact_money_with_uneven_groups():
    treated = GroupTally(buyers=3, returning=1, value_minor=100, cost_minor=7)
    control = GroupTally(buyers=7, returning=1, value_minor=100)
    c = compare(treated, control, min_group=1).comparison
    assert c is not None
    assert c.incremental_value_per_buyer == Fraction(100, 3) - Fraction(100, 7) == Fraction(400, 21)
    assert c.incremental_value == Fraction(400, 7)
    assert c.return_on_cost == Fraction(400, 49)
    assert decimal_string(c.return_on_cost, 4) == "8.1633"


def test_insufficient_data_names_the_counts():
    summary = compare(GroupTally(29, 5, 100, 10), GroupTally(500, 5, 100), min_group=30)
    assert summary.comparison is None
    assert summary.reason is not None and "insufficient data" in summary.reason and "treated 29" in summary.reason
    assert compare(GroupTally(30, 5, 100, 10), GroupTally(30, 5, 100), min_group=30).comparison is not None


def test_nothing_issued_has_no_return_on_cost():
    c = compare(GroupTally(30, 3, 100), GroupTally(30, 3, 100), min_group=30).comparison
    assert c is not None and c.return_on_cost is None and c.incremental_value == 0


def test_edge_cases_zero_and_all():
    none = compare(GroupTally(50, 0, 0, 100), GroupTally(50, 0, 0), min_group=30).comparison
    assert none is not None and none.repeat_rate_difference == 0 and none.ci_low < 0 < none.ci_high
    assert none.return_on_cost == 0
    every = compare(GroupTally(50, 50, 5_000, 100), GroupTally(50, 0, 0), min_group=30).comparison
    assert every is not None and every.repeat_rate_difference == 1 and every.ci_high == 1.0
    # by hand: the Wilson upper bound of 0/50 is z^2 / (50 + z^2) = 0.071348; low = 1 - sqrt(2) x 0.071348
    assert every.ci_low == pytest.approx(1 - 2 ** 0.5 * 1.959964 ** 2 / (50 + 1.959964 ** 2), abs=1e-6)
    both = compare(GroupTally(50, 50, 5_000, 100), GroupTally(50, 50, 5_000), min_group=30).comparison
    assert both is not None and both.repeat_rate_difference == 0 and both.ci_low < 0 < both.ci_high
    assert wilson_interval(0, 1) == (0.0, pytest.approx(0.7935, abs=1e-4))
    assert wilson_interval(1, 1)[1] == 1.0


def test_tally_rejects_impossible_counts():
    with pytest.raises(ValueError):
        GroupTally(3, 4, 0)
    with pytest.raises(ValueError):
        newcombe_interval(0, 0, 1, 2)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_newcombe_interval_contains_the_observed_difference_and_stays_in_bounds(g1, g2):
    (x1, n1), (x2, n2) = g1, g2
    low, high = newcombe_interval(x1, n1, x2, n2)
    d = x1 / n1 - x2 / n2
    assert -1.0 <= low <= d + 1e-12 and d - 1e-12 <= high <= 1.0
    # swapping the groups mirrors the interval
    low2, high2 = newcombe_interval(x2, n2, x1, n1)
    assert low2 == pytest.approx(-high, abs=1e-12) and high2 == pytest.approx(-low, abs=1e-12)


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_observed_rate(g):
    x, n = g
    low, high = wilson_interval(x, n)
    assert 0.0 <= low <= x / n <= high <= 1.0


@given(st.fractions(min_value=-10**6, max_value=10**6, max_denominator=10**4), st.integers(0, 6))
def test_decimal_string_is_exact_rounding(value, places):
    text = decimal_string(value, places)
    shown = Fraction(text)
    assert abs(shown - value) <= Fraction(1, 2 * 10**places)
    if places:
        assert len(text.split(".")[1]) == places


def test_decimal_string_rounds_half_away_from_zero():
    assert decimal_string(Fraction(5, 2), 0) == "3"
    assert decimal_string(Fraction(-5, 2), 0) == "-3"
    assert decimal_string(Fraction(1, 8), 2) == "0.13"
    assert decimal_string(Fraction(-1, 1000), 2) == "0.00"


def test_local_day_bounds_use_the_region_clock():
    start, end = local_day_bounds(date(2026, 11, 1), date(2026, 12, 1), ZoneInfo("Asia/Singapore"))
    assert start == datetime(2026, 10, 31, 16, tzinfo=UTC) and end == datetime(2026, 11, 30, 16, tzinfo=UTC)
    with pytest.raises(ValueError):
        local_day_bounds(date(2026, 11, 1), date(2026, 11, 1), ZoneInfo("UTC"))


def test_the_interval_covers_a_known_uplift_in_at_least_90_percent_of_seeds():
    """A simulated population with a known uplift (treated repeat rate 0.30, holdout 0.22: +0.08), 300
    seeds of 400 treated and 200 holdout buyers: the 95% interval must cover +0.08 in >= 90% of them."""
    import random

    covered = 0
    seeds = 300
    for seed in range(seeds):
        rng = random.Random(seed)
        treated = sum(rng.random() < 0.30 for _ in range(400))
        control = sum(rng.random() < 0.22 for _ in range(200))
        summary = compare(GroupTally(400, treated, treated * 5_000, 400 * 300),
                          GroupTally(200, control, control * 5_000), min_group=30)
        assert summary.comparison is not None
        covered += summary.comparison.ci_low <= 0.08 <= summary.comparison.ci_high
    assert covered / seeds >= 0.90, covered / seeds
