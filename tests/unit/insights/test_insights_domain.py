"""insights' pure parts: periods in local days, percentile and rounding rules, burn-down arithmetic."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.insights.domain.burndown import burndown
from services.insights.domain.periods import MAX_CUSTOM_DAYS, PeriodError, parse_period
from services.insights.domain.report import (
    exact_percentile,
    histogram_percentile,
    mean_minor,
    rank_of,
    ratio,
)
from services.insights.domain.rollups import TTC_BINS, TTC_EDGES, local_slot, ttc_bin


def test_period_labels_parse_to_local_day_ranges():
    assert (parse_period("2026-11-19").first, parse_period("2026-11-19").last) == (date(2026, 11, 19),) * 2
    week = parse_period("2026-W53")
    assert (week.first, week.last, week.label) == (date(2026, 12, 28), date(2027, 1, 3), "2026-W53")
    feb = parse_period("2028-02")
    assert (feb.first, feb.last, feb.days) == (date(2028, 2, 1), date(2028, 2, 29), 29)
    custom = parse_period(None, "2026-11-01", "2026-11-10")
    assert (custom.kind, custom.days, custom.previous().first) == ("custom", 10, date(2026, 10, 22))
    assert parse_period("2026-03").previous().label == "2026-02"
    assert parse_period("2026-W01").previous().label == "2025-W52"
    assert parse_period("2026-01-01").previous().label == "2025-12-31"


@pytest.mark.parametrize(("args", "field"), [
    (("2026-13", None, None), "period"), (("2026-02-30", None, None), "period"), (("2026-W54", None, None), "period"),
    (("yesterday", None, None), "period"), (("2026-11", "2026-11-01", None), "period"),
    ((None, "2026-11-10", "2026-11-01"), "to"), ((None, "2026-11-01", None), "to"), ((None, None, None), "period"),
    ((None, "2025-01-01", "2026-06-01"), "to"), ((None, "2026/11/01", "2026-11-02"), "from"),
])
def test_bad_periods_name_the_parameter(args, field):
    with pytest.raises(PeriodError) as err:
        parse_period(*args)
    assert err.value.field == field


def test_custom_ranges_are_bounded():
    assert parse_period(None, "2026-01-01", (date(2026, 1, 1) + timedelta(days=MAX_CUSTOM_DAYS - 1)).isoformat())


def test_a_dst_day_is_one_local_day_of_25_hours():
    tz = "America/New_York"
    start = datetime(2026, 11, 1, 4, tzinfo=UTC)  # midnight EDT
    slots = {local_slot(start + timedelta(minutes=15 * i), tz) for i in range(25 * 4)}
    assert {d for d, _ in slots} == {date(2026, 11, 1)} and len(slots) == 24  # hour 1 happens twice
    assert local_slot(start + timedelta(hours=25), tz) == (date(2026, 11, 2), 0)


def test_ttc_bins_close_on_their_upper_edge():
    assert ttc_bin(-5) == 0 and ttc_bin(60) == 0 and ttc_bin(61) == 1
    assert ttc_bin(TTC_EDGES[-1]) == TTC_BINS - 2 and ttc_bin(TTC_EDGES[-1] + 1) == TTC_BINS - 1


@given(st.lists(st.floats(min_value=-100, max_value=5_000_000), min_size=1, max_size=200),
       st.sampled_from([Fraction(1, 2), Fraction(9, 10), Fraction(1, 100), Fraction(1)]))
def test_histogram_percentile_is_the_bin_edge_of_the_raw_nearest_rank_value(durations, p):
    counts = [0] * TTC_BINS
    for d in durations:
        counts[ttc_bin(d)] += 1
    value = sorted(durations)[rank_of(p, len(durations)) - 1]
    b = ttc_bin(value)
    assert histogram_percentile(counts, p) == (TTC_EDGES[b] if b < len(TTC_EDGES) else None)


@given(st.lists(st.integers(1, 10**12), min_size=1, max_size=100))
def test_exact_median_is_the_lower_nearest_rank_value(amounts):
    pairs: dict[int, int] = {}
    for a in amounts:
        pairs[a] = pairs.get(a, 0) + 1
    assert exact_percentile(pairs.items(), Fraction(1, 2)) == sorted(amounts)[math.ceil(len(amounts) / 2) - 1]


@given(st.integers(-10**15, 10**15), st.integers(1, 10**6))
def test_mean_of_money_rounds_half_away_from_zero_exactly(total, n):
    m = mean_minor(total, n)
    assert m is not None
    assert abs(2 * (abs(total) - abs(m) * n)) <= n  # within half a minor unit
    if 2 * abs(total) % (2 * n) == n:  # exactly half: away from zero
        assert abs(m) * n > abs(total)


def test_ratios_of_nothing_are_null_not_zero():
    assert ratio(0, 0) is None and mean_minor(10, 0) is None
    assert histogram_percentile([0] * TTC_BINS, Fraction(1, 2)) is None


def test_burndown_pace_and_projection_are_exact():
    period = parse_period("2026-11")
    daily = {date(2026, 11, 1): {"auto": (1000, 0), "manual": (500, 0)}, date(2026, 11, 2): {"auto": (700, 300)}}
    out = burndown(region="SG", currency="SGD", period=period, limit_minor=30_001, daily=daily, today=date(2026, 11, 2))
    day1, day2 = out["days"][0], out["days"][1]
    assert (day1["used_minor"], day1["pace_minor"]) == (1500, 1000)  # floor(30,001 * 1 / 30)
    assert (day2["used_minor"], day2["pace_minor"], day2["released_minor"]) == (1900, 2000, 300)
    assert out["used_minor"] == 1900 and out["projected_end_minor"] == 1900 * 30 // 2
    assert out["days"][-1]["pace_minor"] == 30_001 and out["ahead_of_pace_minor"] == -100
    assert burndown(region="SG", currency="SGD", period=period, limit_minor=None, daily={},
                    today=date(2026, 10, 1))["projected_end_minor"] is None


def test_report_periods_split_into_whole_months_and_leftover_days():
    from services.insights.reports import _month_split

    assert _month_split(parse_period("2026-11")) == (["2026-11"], [])
    assert _month_split(parse_period("2026-W53")) == ([], [(date(2026, 12, 28), date(2026, 12, 31)),
                                                          (date(2027, 1, 1), date(2027, 1, 3))])
    months, ranges = _month_split(parse_period(None, "2026-10-15", "2027-01-31"))
    assert months == ["2026-11", "2026-12", "2027-01"] and ranges == [(date(2026, 10, 15), date(2026, 10, 31))]
