"""shared.stats: exact intervals checked against the binomial distribution itself, non-response reported
and allowed for, census only when it is one, and coverage of the weighted estimator by simulation."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.stats import (
    Interval,
    StatsError,
    beta_quantile,
    clopper_pearson,
    proportion_estimate,
    regularized_beta,
    total_estimate,
)


def binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


# ------------------------------------------------------------------ the beta function and exact intervals


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 17, 40, 120])
def test_clopper_pearson_bounds_solve_the_binomial_tail_equations(n):
    """The exact interval's ends are where the observed count becomes 2.5 percent likely in each tail."""
    for x in range(n + 1):
        iv = clopper_pearson(x, n)
        if x > 0:
            assert 1 - binomial_cdf(x - 1, n, iv.low) == pytest.approx(0.025, abs=1e-9)
        else:
            assert iv.low == 0.0
        if x < n:
            assert binomial_cdf(x, n, iv.high) == pytest.approx(0.025, abs=1e-9)
        else:
            assert iv.high == 1.0


def test_clopper_pearson_textbook_values():
    assert clopper_pearson(0, 10).high == pytest.approx(0.30850, abs=1e-5)
    iv = clopper_pearson(5, 10)
    assert (iv.low, iv.high) == (pytest.approx(0.18709, abs=1e-5), pytest.approx(0.81291, abs=1e-5))
    assert clopper_pearson(1, 1) == Interval(pytest.approx(0.025), 1.0)
    assert clopper_pearson(0, 1) == Interval(0.0, pytest.approx(0.975))
    assert clopper_pearson(0, 0) == Interval(0.0, 1.0)
    # a 90 percent interval is narrower
    assert clopper_pearson(5, 10, 0.90).high < iv.high


def test_regularized_beta_known_values_and_symmetry():
    assert regularized_beta(0.5, 3.7, 3.7) == pytest.approx(0.5, abs=1e-13)
    assert regularized_beta(0.3, 1, 1) == pytest.approx(0.3, abs=1e-13)  # uniform
    assert regularized_beta(0.3, 2, 1) == pytest.approx(0.09, abs=1e-13)  # x^2
    for x, a, b in ((0.12, 0.4, 7.3), (0.8, 250.0, 30.5), (0.51, 5000.0, 4800.0)):
        assert regularized_beta(x, a, b) + regularized_beta(1 - x, b, a) == pytest.approx(1.0, abs=1e-12)
        assert regularized_beta(beta_quantile(0.3, a, b), a, b) == pytest.approx(0.3, abs=1e-10)


@given(st.floats(0.5, 400), st.floats(0.0, 1.0))
def test_fractional_counts_give_intervals_between_their_integer_neighbours(trials, share):
    x = share * trials
    iv = clopper_pearson(x, trials)
    assert 0.0 <= iv.low <= x / trials <= iv.high <= 1.0
    lo = clopper_pearson(math.floor(x), math.floor(x) + (trials - x) if trials >= 1 else trials)
    assert iv.low >= lo.low - 1e-9  # more successes never lower the lower bound


def test_bad_inputs_are_refused():
    with pytest.raises(StatsError):
        clopper_pearson(5, 3)
    with pytest.raises(StatsError):
        clopper_pearson(1, 3, confidence=1.0)
    with pytest.raises(StatsError):
        regularized_beta(0.5, 0, 1)
    with pytest.raises(StatsError, match="unaudited item's inclusion probability #0"):
        proportion_estimate([True], [0.5], unaudited_probs=[0.0])
    with pytest.raises(StatsError):
        proportion_estimate([True], [0.5], population_size=-1)


# ------------------------------------------------------------------ the estimator


def test_the_field_case_one_audited_of_three_sampled_is_not_a_census():
    """Seen: "0.0%, 95% CI 0.0%-0.0%" from 1 audited (failed) of 3 sampled mandatory items."""
    est = proportion_estimate([False], [1.0], unaudited_probs=[1.0, 1.0], population_size=3)
    assert est.value == 0.0
    assert est.method == "clopper_pearson"
    assert est.interval == Interval(0.0, pytest.approx(0.975))
    nr = est.nonresponse
    assert nr is not None and (nr.unaudited, nr.sampled) == (2, 3)
    assert nr.share == pytest.approx(2 / 3) and nr.weighted_share == pytest.approx(2 / 3)
    assert nr.bounds == Interval(0.0, pytest.approx(2 / 3))  # if both unaudited items turn out right
    assert nr.treatment == "missing_at_random"
    # once all three are audited, the population is known exactly
    done = proportion_estimate([False, True, True], [1.0, 1.0, 1.0], population_size=3)
    assert done.method == "census" and done.interval == Interval(pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert done.nonresponse is not None and done.nonresponse.unaudited == 0


def test_a_handful_of_clean_audits_gets_an_exact_interval():
    est = proportion_estimate([True] * 3, [1.0] * 3, unaudited_probs=[1.0] * 5, population_size=40)
    assert est.value == 1.0 and est.method == "clopper_pearson"
    assert est.interval.low == pytest.approx(0.025 ** (1 / 3))  # about 0.29: three audits say little
    assert est.nonresponse.bounds == Interval(pytest.approx(3 / 8), 1.0)


def test_non_response_keeps_the_point_estimate_and_weights_the_unaudited_by_their_design():
    flags, probs = [True, False, True, True], [0.5, 0.25, 0.5, 0.1]
    full = proportion_estimate(flags, probs)
    partial = proportion_estimate(flags, probs, unaudited_probs=[0.5, 0.25])
    assert partial.value == pytest.approx(full.value)
    assert partial.standard_error > full.standard_error  # fewer observed for the same population
    nr = partial.nonresponse
    # design weights 2, 4, 2, 10 audited (14 of them passed), 2 and 4 unaudited
    assert nr.weighted_share == pytest.approx(6 / (18 + 6))
    assert nr.bounds.low == pytest.approx(14 / 24) and nr.bounds.high == pytest.approx(20 / 24)


def test_nothing_audited_yet():
    est = proportion_estimate([], [], unaudited_probs=[0.2, 0.2])
    assert math.isnan(est.value) and est.method == "no_sample" and est.interval == Interval(0.0, 1.0)
    assert est.nonresponse.unaudited == 2 and est.nonresponse.bounds == Interval(0.0, 1.0)


@given(st.lists(st.tuples(st.booleans(), st.floats(0.01, 1.0)), min_size=1, max_size=40),
       st.lists(st.floats(0.01, 1.0), max_size=20))
def test_interval_and_bounds_are_sound(items, unaudited):
    flags, probs = zip(*items, strict=True)
    est = proportion_estimate(list(flags), list(probs), unaudited_probs=unaudited)
    assert 0.0 <= est.interval.low <= est.value <= est.interval.high <= 1.0
    assert est.method in ("clopper_pearson", "clopper_pearson_effective_n")
    assert 0 < est.effective_sample_size <= len(items) + 1e-9
    bounds = est.nonresponse.bounds
    assert bounds.low - 1e-9 <= bounds.high and 0 <= bounds.low and bounds.high <= 1 + 1e-9
    if not unaudited:
        assert bounds.low == pytest.approx(est.value) == pytest.approx(bounds.high)


def _population(rng: random.Random, size: int) -> list[tuple[float, bool]]:
    """Risky items are sampled more often and err more often (the case where weights matter)."""
    out = []
    for _ in range(size):
        risk = rng.random()
        pi, p_error = (0.04, 0.05) if risk < 0.6 else (0.15, 0.15) if risk < 0.9 else (0.6, 0.4)
        out.append((pi, rng.random() < p_error))
    return out


def test_weighted_exact_interval_covers_the_truth_with_audits_missing_at_random():
    rng = random.Random(20261130)
    population = _population(rng, 2000)
    truth = sum(1 for _, e in population if not e) / len(population)
    runs, covered = 400, 0
    for _ in range(runs):
        sample = [item for item in population if rng.random() < item[0]]
        audited = [item for item in sample if rng.random() < 0.7]  # 30 percent still in the queue
        missing = [pi for item in sample if item not in audited for pi in (item[0],)]
        est = proportion_estimate([not e for _, e in audited], [pi for pi, _ in audited],
                                  unaudited_probs=missing, population_size=len(population))
        covered += est.interval.contains(truth)
    # exact intervals are conservative: at least nominal, not absurdly wide
    assert 0.93 <= covered / runs <= 0.995, covered / runs


def test_small_samples_cover_at_least_nominally():
    """Five audits of a 90 percent accurate population: a normal interval covers far less than 95."""
    rng = random.Random(7)
    covered = 0
    for _ in range(2000):
        flags = [rng.random() < 0.9 for _ in range(5)]
        covered += proportion_estimate(flags, [0.2] * 5).interval.contains(0.9)
    assert covered / 2000 >= 0.95


# ------------------------------------------------------------------ totals


def test_total_census_normal_and_no_errors():
    assert total_estimate([100, 0, 50], [1, 1, 1], population_size=3).method == "census"
    est = total_estimate([100, 0, 50], [0.5, 0.5, 0.5], population_size=30)
    assert est.method == "normal" and est.value == pytest.approx(1500) and est.interval.low >= 0
    clean = total_estimate([0] * 20, [0.2] * 20, population_size=100, value_cap_total=1_000_000)
    assert clean.method == "error_rate_bound" and clean.value == 0
    assert clean.interval.high == pytest.approx(clopper_pearson(0, 20).high * 1_000_000)
    unbounded = total_estimate([0] * 20, [0.2] * 20, population_size=100)
    assert unbounded.method == "no_errors_seen" and unbounded.interval.high == math.inf
    one = total_estimate([300], [0.5], population_size=10)
    assert one.method == "not_estimable" and one.interval.high == math.inf
    # half the sample unaudited: a complete-looking mandatory sample is no census
    partial = total_estimate([100, 0], [1.0, 1.0], population_size=3, unaudited_probs=[1.0])
    assert partial.method == "normal" and partial.nonresponse.unaudited == 1 and partial.interval.high > 150
