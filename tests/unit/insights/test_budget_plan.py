"""Budget plan (issue 15 part 3): seasonality is learnt, the 80% band is calibrated on realistic simulated
history, money leaves as whole minor units, and the projected exhaustion day is exact."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.insights.domain.budget_plan import (
    MEASURES,
    CostPerTicket,
    Planner,
    ScenarioDay,
    band,
    forecast,
    month_factors,
    to_minor,
    weekday_factors,
)
from services.insights.domain.burndown import burndown
from services.insights.domain.periods import month
from tests.unit.insights.budget_history import simulate

FIRST, LAST = date(2023, 1, 1), date(2026, 11, 30)


def test_backtest_coverage_of_the_80_percent_band_is_between_75_and_85_percent_on_simulated_history():
    covered = judged = 0
    for seed in range(12):
        history = simulate(seed, FIRST, LAST)
        bt = Planner(history, FIRST, LAST).backtest(month(2027, 1))
        assert bt.months[0]["period"] == "2025-12" and len(bt.months) == 12
        covered += sum(bt.covered[m] for m in MEASURES)
        judged += sum(bt.judged[m] for m in MEASURES)
        assert all(v is not None and v < 0.15 for v in bt.mape.values()), bt.mape
    assert judged == 12 * 12 * len(MEASURES)
    assert 0.75 <= covered / judged <= 0.85, covered / judged


def test_known_seasonality_is_recovered_and_the_forecast_error_lies_within_its_band():
    # A deterministic history: 100 tickets a day x month shape x weekday shape, nothing random.
    shape = {1: 0.9, 2: 0.8, 11: 1.3, 12: 1.5}
    week = (1.2, 1.1, 1.0, 1.0, 1.0, 0.9, 0.8)
    history = {}
    day = FIRST
    while day <= LAST:
        n = round(100 * shape.get(day.month, 1.0) * week[day.weekday()])
        history[day] = {"late_delivery": ScenarioDay(n, n * 300, n * 20)}
        day += timedelta(days=1)
    daily = {d: v["late_delivery"].tickets for d, v in history.items()}
    months = month_factors(daily, FIRST, LAST)
    assert months[12] / months[6] == pytest.approx(1.5, rel=0.02)
    assert months[2] / months[6] == pytest.approx(0.8, rel=0.02)
    weekdays = weekday_factors(daily, LAST - timedelta(days=181), LAST, months)
    assert weekdays[0] / weekdays[6] == pytest.approx(1.5, rel=0.02)
    planner = Planner(history, FIRST, LAST)
    december = month(2026, 12)
    point = forecast(history, FIRST, LAST, december)
    real = sum(round(100 * 1.5 * week[d.weekday()]) for d in december.day_list())
    assert point.total("tickets") == pytest.approx(real, rel=0.02)
    assert point.total("auto") == pytest.approx(real * 300, rel=0.02)
    b = band(point.total("tickets"), planner.errors(december, "tickets"))
    assert b is not None and b.low <= real <= b.high


def test_the_plan_uses_the_cost_per_ticket_it_is_given():
    history = simulate(1, FIRST, LAST)
    cost = {s: CostPerTicket(100, 100 * 500, 0) for s in {s for v in history.values() for s in v}}
    point = forecast(history, FIRST, LAST, month(2027, 1), cost=cost)
    assert point.total("auto") == pytest.approx(point.total("tickets") * 500)
    assert point.total("manual") == 0


def test_no_band_from_fewer_than_four_past_months():
    assert band(100.0, [0.1, -0.1, 0.05]) is None
    b = band(100.0, [0.1, -0.1, 0.1, -0.1])
    assert b is not None and b.low < 100 < b.high


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_money_estimates_become_whole_non_negative_minor_units_half_up(value):
    minor = to_minor(value)
    assert isinstance(minor, int) and minor >= 0
    assert abs(minor - value) <= 0.5 + 1e-6 * value


def test_half_up():
    assert to_minor(2.5) == 3 and to_minor(3.5) == 4 and to_minor(2.4999) == 2


def _burn(limit, per_day, elapsed_days):
    p = month(2026, 11)
    daily = {p.first + timedelta(days=i): {"auto": (per_day, 0)} for i in range(elapsed_days)}
    return burndown(region="SG", currency="SGD", period=p, limit_minor=limit, daily=daily,
                    today=p.first + timedelta(days=elapsed_days - 1))


def test_projected_exhaustion_day_at_the_current_pace():
    b = _burn(30_000, 1_500, 10)  # 15,000 used in 10 days: 1,500 a day reaches 30,000 on day 20
    assert b["projected_exhaustion_day"] == "2026-11-20" and b["exhausts_before_period_end"] is True
    b = _burn(30_000, 999, 10)  # 9,990 in 10 days: day ceil(30000 / 999) = 31, after November's 30 days
    assert b["projected_exhaustion_day"] == "2026-12-01" and b["exhausts_before_period_end"] is False
    b = _burn(30_000, 1_000, 10)  # exactly on the last day: it runs out before the period ends
    assert b["projected_exhaustion_day"] == "2026-11-30" and b["exhausts_before_period_end"] is True
    b = _burn(5_000, 1_000, 10)  # already reached on day 5
    assert b["projected_exhaustion_day"] == "2026-11-05"
    assert _burn(None, 1_000, 10)["projected_exhaustion_day"] is None
    assert _burn(30_000, 0, 10)["projected_exhaustion_day"] is None


@settings(max_examples=200)
@given(limit=st.integers(1, 10**9), per_day=st.integers(1, 10**7), elapsed=st.integers(1, 30))
def test_exhaustion_day_is_the_first_day_the_pace_reaches_the_limit(limit, per_day, elapsed):
    b = _burn(limit, per_day, elapsed)
    day = date.fromisoformat(b["projected_exhaustion_day"])
    n = (day - date(2026, 11, 1)).days + 1  # days of usage at the pace by the end of that day
    used = per_day * elapsed
    if used >= limit:
        assert per_day * n >= limit and per_day * (n - 1) < limit
    elif n == elapsed + 3660:  # capped ten years out
        assert used * n <= limit * elapsed
    else:
        assert used * n >= limit * elapsed and used * (n - 1) < limit * elapsed


def test_a_young_region_plans_from_its_months_so_far_without_month_seasonality():
    first = date(2026, 4, 1)
    history = simulate(5, first, LAST)
    daily = {d: v["late_delivery"].tickets for d, v in history.items()}
    assert set(month_factors(daily, first, LAST).values()) == {1.0}  # under 13 months: no month factors
    planner = Planner(history, first, LAST)
    bt = planner.backtest(month(2027, 1))
    assert [m["period"] for m in bt.months] == [f"2026-{k:02d}" for k in range(5, 12)]
    assert bt.judged["total"] == 3  # months with at least 4 earlier complete months to set their band
    assert planner.errors(month(2027, 1), "total") and len(planner.errors(month(2027, 1), "total")) == 7
    november = month(2026, 11)
    real = sum(v.tickets for d in november.day_list() for v in history[d].values())
    assert Planner(history, first, date(2026, 10, 31)).point(november).total("tickets") == pytest.approx(real, rel=0.3)
