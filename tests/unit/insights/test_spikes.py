"""The spike detector: its calendar, its tails, its alerts and episodes, and its stated rates measured on
seeded synthetic series (tests/unit/insights/spike_series.py): at most 1 false episode per series per 13 weeks,
recall >= 0.9 for 3-sigma spikes within one bucket, no alerts on series too small.

Run with -s to see the measured rates and detection delays printed."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.insights.domain.spikes import (
    AlertKind,
    BucketSize,
    DetectorParams,
    NoVerdict,
    Point,
    _calendar,
    _CountModel,
    _cusum_threshold,
    _norm_ppf,
    baseline_bucket_starts,
    detect,
    evaluate,
    merge_episodes,
    with_contributors,
)
from tests.unit.insights import spike_series as synth

DAY, HOUR = BucketSize.DAY, BucketSize.HOUR
SP = ZoneInfo("America/Sao_Paulo")


def days(counts: list[int], first: date = date(2026, 1, 5), tz: ZoneInfo = SP) -> list[Point]:
    return [Point(datetime.combine(first + timedelta(days=i), time(0), tz), c) for i, c in enumerate(counts)]


def flat(weeks: int, level: int = 100) -> list[int]:
    return [level] * (7 * weeks)


PARAMS = DetectorParams(timezone="America/Sao_Paulo")

# --- inputs ---------------------------------------------------------------------------------------------


def test_points_and_params_refuse_bad_values():
    with pytest.raises(ValueError, match="timezone-aware"):
        Point(datetime(2026, 1, 1), 3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="count"):
            Point(datetime(2026, 1, 1, tzinfo=UTC), bad)  # type: ignore[arg-type]
    for kwargs in ({"timezone": "Mars/Olympus"}, {"min_history_weeks": 0}, {"min_history_weeks": 60},
                   {"false_alarms_per_13_weeks": 0}, {"spike_share": 0.0}, {"spike_share": 0.9, "shift_share": 0.2},
                   {"cusum_k": 3.0}, {"level_window_weeks": 0}, {"min_expected": -1},
                   {"false_alarms_per_13_weeks": 100.0}):
        with pytest.raises(ValueError):
            DetectorParams(**kwargs)  # type: ignore[arg-type]


def test_the_budget_sets_the_band_and_the_cusum_threshold():
    p = DetectorParams()
    assert p.buckets_in_budget == 91 and DetectorParams(bucket=HOUR).buckets_in_budget == 2184
    assert p.spike_alpha == pytest.approx(0.75 / 91)
    # Siegmund: the in-control run length at h is what the shift share of the budget allows
    h, k = p.cusum_h, p.cusum_k
    b = 2 * k * (h + 1.166)
    assert (math.exp(b) - b - 1) / (2 * k * k) == pytest.approx(91 / 0.05, rel=1e-6)
    # the textbook value: k = 0.5, h = 5 gives an ARL of about 930
    assert _cusum_threshold(0.5, 938.0) == pytest.approx(5.0, abs=0.01)
    assert DetectorParams(shift_share=0.0).cusum_h == math.inf
    assert _norm_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-12)
    assert _norm_ppf(1 - 1e-6) == pytest.approx(4.753424308822899, abs=1e-9)


def _exact_tail_quantile(model: _CountModel, alpha: float) -> int:
    """Smallest u with P(X > u) <= alpha, by summing the pmf from 0."""
    total, k, cdf = 0.0, 0, []
    limit = model.mean + 40 * math.sqrt(model.kappa * model.mean) + 50
    while k <= limit:
        total += math.exp(model._log_pmf(k))
        cdf.append(total)
        k += 1
    return next(u for u, c in enumerate(cdf) if 1 - c <= alpha)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.05, 300.0), st.sampled_from([1.0, 1.05, 1.5, 3.0, 8.0]), st.sampled_from([0.0083, 0.001, 0.05]))
def test_band_edges_are_the_exact_poisson_or_negative_binomial_quantiles(mean, kappa, alpha):
    assume(mean * kappa <= 400)  # the exact regime; above it see the Cornish-Fisher test
    model = _CountModel(mean, kappa)
    z = _norm_ppf(1 - alpha)
    assert model.upper(alpha, z) == _exact_tail_quantile(model, alpha)
    low = model.lower(alpha, z)
    below = sum(math.exp(model._log_pmf(k)) for k in range(int(low)))
    above = below + math.exp(model._log_pmf(int(low)))
    assert below <= alpha + 1e-12 < above + 1e-12


@settings(max_examples=20, deadline=None)
@given(st.floats(400.0, 3000.0), st.sampled_from([1.0, 1.2, 2.0]))
def test_large_counts_use_a_cornish_fisher_edge_within_one_count_of_the_exact_one(mean, kappa):
    model = _CountModel(mean, kappa)
    alpha = 0.75 / 91
    assert abs(model.upper(alpha, _norm_ppf(1 - alpha)) - _exact_tail_quantile(model, alpha)) <= 1.0


# --- the calendar ---------------------------------------------------------------------------------------


def test_missing_days_count_zero_and_days_are_cut_at_the_regions_midnight():
    points = [p for p in days([5, 0, 7, 0, 0, 9]) if p.count]
    cal = _calendar(points, PARAMS, None, None)
    assert cal.counts == [5, 0, 7, 0, 0, 9]
    assert cal.starts[0] == datetime(2026, 1, 5, 3, tzinfo=UTC)  # Sao Paulo is UTC-3
    assert cal.ends[-1] == datetime(2026, 1, 11, 3, tzinfo=UTC)
    # start and end widen the range with empty days
    end = datetime.combine(date(2026, 1, 13), time(0), SP)
    assert _calendar(points, PARAMS, None, end).counts == [5, 0, 7, 0, 0, 9, 0, 0]
    assert _calendar([], PARAMS, None, None).counts == []


def test_day_buckets_follow_daylight_saving_time():
    london = DetectorParams(timezone="Europe/London")
    pts = days([1] * 10, first=date(2026, 3, 25), tz=ZoneInfo("Europe/London"))
    cal = _calendar(pts, london, None, None)
    lengths = {e - s for s, e in zip(cal.starts, cal.ends, strict=True)}
    assert lengths == {timedelta(hours=24), timedelta(hours=23)}  # 29 March 2026 is 23 hours long


def test_hour_buckets_compare_with_the_same_wall_clock_hour_a_week_earlier():
    london = DetectorParams(bucket=HOUR, timezone="Europe/London")
    first = datetime(2026, 3, 16, tzinfo=UTC)
    pts = [Point(first + timedelta(hours=i), 1) for i in range(24 * 21)]
    cal = _calendar(pts, london, None, None)
    nine_local = cal.starts.index(datetime(2026, 4, 1, 8, tzinfo=UTC))  # 09:00 BST
    before = cal.week_before[nine_local]
    assert cal.starts[before] == datetime(2026, 3, 25, 9, tzinfo=UTC)  # 09:00 GMT, 167 hours earlier
    assert nine_local - before == 167


@pytest.mark.parametrize(("points", "message"), [
    (days([1, 2]) + days([3]), "two points"),
    ([Point(datetime(2026, 1, 5, 12, tzinfo=UTC), 1)], "not a midnight"),
])
def test_bad_series_are_refused_with_a_reason(points, message):
    with pytest.raises(ValueError, match=message):
        detect(points, PARAMS)


def test_bad_ranges_and_off_grid_hours_are_refused():
    pts = days([1, 2, 3])
    with pytest.raises(ValueError, match="outside"):
        detect(pts, PARAMS, start=pts[1].start)
    with pytest.raises(ValueError, match="after start"):
        detect(pts, PARAMS, start=pts[1].start, end=pts[0].start)
    with pytest.raises(ValueError, match="timezone-aware"):
        detect(pts, PARAMS, end=datetime(2026, 2, 1))
    hourly = DetectorParams(bucket=HOUR)
    with pytest.raises(ValueError, match="hour grid"):
        detect([Point(datetime(2026, 1, 1, 0, tzinfo=UTC), 1), Point(datetime(2026, 1, 1, 1, 30, tzinfo=UTC), 1)],
               hourly)


# --- alerts and episodes --------------------------------------------------------------------------------


def test_a_spike_carries_expected_band_and_observed_and_does_not_lift_next_weeks_baseline():
    counts = flat(20)
    counts[7 * 16 + 2] = 200
    verdicts = evaluate(days(counts), PARAMS)
    alerts = [v.alert for v in verdicts if v.alert]
    assert len(alerts) == 1
    a = alerts[0]
    assert a.kind is AlertKind.SPIKE and a.observed == 200
    assert a.bucket_start == days(counts)[7 * 16 + 2].start.astimezone(UTC)
    assert a.expected == pytest.approx(100.0)
    assert a.lower < 100 < a.upper < 200 and a.upper == pytest.approx(100 + 2.4 * 10.5, abs=6)
    assert a.z == pytest.approx((200 - a.expected) / a.sigma) and a.excess == pytest.approx(100)
    week_later = verdicts[7 * 17 + 2]
    assert week_later.expected == pytest.approx(100.0, abs=1.5) and week_later.alert is None
    assert all(v.no_verdict is NoVerdict.HISTORY for v in verdicts[:28])
    assert all(v.no_verdict is None for v in verdicts[28:])


def test_a_sustained_rise_is_one_episode_and_the_baseline_catches_up():
    counts = flat(30)
    for t in range(7 * 20, len(counts)):
        counts[t] = 125  # +2.5 sd, every day from week 20 on
    alerts = detect(days(counts), PARAMS)
    episodes = merge_episodes(alerts)
    assert episodes, "a +25% level shift went unnoticed"
    first = episodes[0]
    assert first.start == days(counts)[7 * 20].start.astimezone(UTC) or first.start <= days(counts)[7 * 20 + 3].start
    assert len(episodes) <= 2
    assert not [a for a in alerts if a.bucket_start >= days(counts)[7 * 26].start]  # adapted within six weeks
    assert first.observed == sum(a.observed for a in first.alerts)
    assert first.expected == pytest.approx(sum(a.expected for a in first.alerts))


def test_merge_episodes_joins_touching_alerts_only():
    counts = flat(20)
    for t in (7 * 16, 7 * 16 + 1, 7 * 16 + 4):
        counts[t] = 220
    alerts = detect(days(counts), PARAMS)
    episodes = merge_episodes(list(reversed(alerts)))
    assert [len(e.alerts) for e in episodes] == [2, 1]
    assert episodes[0].kind is AlertKind.SPIKE and episodes[0].end == alerts[1].bucket_end
    assert episodes[0].peak in episodes[0].alerts
    assert merge_episodes([]) == []
    with pytest.raises(ValueError, match="overlap"):
        merge_episodes([alerts[0], alerts[0]])


def test_the_minimum_volume_guard_keeps_small_series_quiet():
    counts = flat(20, level=2)
    counts[7 * 16] = 30  # fifteen times the usual, but from 2 a day
    verdicts = evaluate(days(counts), PARAMS)
    assert not [v for v in verdicts if v.alert]
    assert verdicts[7 * 16].no_verdict is NoVerdict.VOLUME and verdicts[7 * 16].expected == pytest.approx(2.0)
    # the excess guard: an expected 10 and an observed 14 is not a spike even with a tight band
    tight = DetectorParams(timezone="America/Sao_Paulo", false_alarms_per_13_weeks=30.0, min_excess=5)
    counts = flat(20, level=10)
    counts[7 * 16] = 14
    assert not [v for v in evaluate(days(counts), tight) if v.alert and v.alert.kind is AlertKind.SPIKE]


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.integers(30, 140))
def test_verdicts_are_causal_and_deterministic(seed, cut):
    series = synth.make(seed, DAY, weeks=22)
    points = series.points()
    whole = evaluate(points, PARAMS, start=series.starts[0], end=series.end)
    assert whole == evaluate(points, PARAMS, start=series.starts[0], end=series.end)
    head = evaluate([p for p in points if p.start < series.starts[cut]], PARAMS, start=series.starts[0],
                    end=series.starts[cut])
    assert head == whole[:cut]  # a bucket's verdict never depends on the buckets after it


def test_contributors_are_attached_from_the_baseline_weeks():
    counts = flat(20)
    counts[7 * 16 + 2] = 200
    (alert,) = detect(days(counts), PARAMS)
    starts = baseline_bucket_starts(alert, PARAMS)
    assert len(starts) == 52 and starts[0] == alert.bucket_start - timedelta(weeks=1)
    by_carrier = {s: {"C-ninja": 60, "C-jnt": 40} for s in starts[:4]}
    enriched = with_contributors(alert, {"C-ninja": 150, "C-jnt": 50}, list(by_carrier.values()), top=1)
    (top,) = enriched.contributors
    assert (top.key, top.excess, top.share) == ("C-ninja", 90, Fraction(9, 10))
    assert enriched.observed == alert.observed and alert.contributors == ()
    hourly = DetectorParams(bucket=HOUR, timezone="Europe/London", history_weeks=4)
    at = datetime(2026, 4, 1, 8, tzinfo=UTC)
    shifted = baseline_bucket_starts(replace(alert, bucket_start=at), hourly)
    assert shifted[0] == datetime(2026, 3, 25, 9, tzinfo=UTC)  # same wall-clock hour across the DST change


# --- the stated rates, measured -------------------------------------------------------------------------


def test_false_alarms_stay_within_one_episode_per_series_per_13_weeks():
    poisson = synth.measure_false_alarms(range(250), DAY)
    dispersed = synth.measure_false_alarms(range(2000, 2100), DAY, dispersion=50.0)
    trending = synth.measure_false_alarms(range(4000, 4100), DAY, trend_per_week=0.01)
    print(f"\nfalse episodes per series per 13 weeks: Poisson {poisson.mean:.3f} (worst {poisson.worst}), "
          f"gamma-Poisson r=50 {dispersed.mean:.3f}, trend +-1%/week {trending.mean:.3f}")
    assert poisson.mean <= 0.85  # the design spends 0.8 of the budget of 1: a regression shows here first
    assert dispersed.mean <= 1.0 and trending.mean <= 1.0


def test_three_sigma_spikes_are_found_within_one_bucket_nine_times_in_ten():
    recall, delays = synth.measure_recall(range(10_000, 10_150), DAY, 3.0)
    print(f"\n3-sigma spikes: recall {recall:.3f}; delay 0: {delays[0]}, delay 1: {delays[1]}, missed {delays[None]}")
    assert recall >= 0.9
    for sigmas in (4.0, 6.0):
        recall, delays = synth.measure_recall(range(10_000, 10_050), DAY, sigmas)
        print(f"{sigmas:.0f}-sigma spikes: recall {recall:.3f}; delays {delays}")
        assert recall >= 0.99


def test_no_alerts_on_series_too_small_even_with_spikes():
    quiet = synth.measure_false_alarms(range(5000, 5100), DAY, level=(0.2, 4))
    assert quiet.worst == 0
    for seed in range(5000, 5030):
        s = synth.make(seed, DAY, level=(0.2, 3))
        synth.inject_spikes(random.Random(seed), s, DAY, 6.0, count=3)
        assert all(v.alert is None or v.expected >= PARAMS.min_expected
                   for v in evaluate(s.points(), synth.params_for(DAY), start=s.starts[0], end=s.end))


def test_level_shifts_are_found_and_reported_as_few_episodes():
    for sigmas, most_days in ((2.0, 7), (3.0, 1)):
        outcomes = []
        for seed in range(30_000, 30_040):
            s = synth.make(seed, DAY)
            at = synth.eval_range(s, DAY).start + 14
            synth.shift(s, at, sigmas)
            outcomes.append(synth.shift_outcome(s, synth.params_for(DAY), at))
        delays = sorted(d for d, _ in outcomes if d is not None)
        median = delays[len(delays) // 2]
        mean_episodes = sum(e for _, e in outcomes) / len(outcomes)
        print(f"\n+{sigmas} sd level shift: found {len(delays)}/{len(outcomes)}, median delay {median} days, "
              f"{mean_episodes:.2f} episodes")
        assert len(delays) >= 0.95 * len(outcomes) and median <= most_days
        assert mean_episodes <= 3


def test_hour_buckets_keep_the_budget():
    hourly = synth.measure_false_alarms(range(6000, 6006), HOUR, level=(2, 40))
    print(f"\nhour buckets: {hourly.mean:.2f} false episodes per series per 13 weeks")
    assert hourly.mean <= 1.0
