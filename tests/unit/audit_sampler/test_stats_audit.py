import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.audit_sampler.domain.stats import (
    StatsError,
    clopper_pearson,
    cohens_kappa,
    hajek_proportion,
    hajek_total,
    horvitz_thompson_total,
    kish_effective_size,
    percent_agreement,
    proportion_estimate,
    wilson_interval,
)

# ------------------------------------------------------------------ hand-computed values


def test_wilson_interval_matches_the_textbook_value():
    iv = wilson_interval(5, 10)
    assert iv.low == pytest.approx(0.2366, abs=1e-4)
    assert iv.high == pytest.approx(0.7634, abs=1e-4)


def test_wilson_interval_at_zero_successes_is_not_degenerate():
    iv = wilson_interval(0, 20)
    assert iv.low == 0.0
    assert iv.high == pytest.approx(0.1611, abs=1e-4)


def test_wilson_without_trials_knows_nothing():
    iv = wilson_interval(0, 0)
    assert (iv.low, iv.high) == (0.0, 1.0)


def test_horvitz_thompson_total_and_poisson_variance_by_hand():
    # 10/0.5 + 0/1 + 4/0.25 = 36; variance 0.5*100/0.25 + 0 + 0.75*16/0.0625 = 200 + 192
    est = horvitz_thompson_total([10, 0, 4], [0.5, 1.0, 0.25])
    assert est.value == pytest.approx(36)
    assert est.standard_error == pytest.approx(math.sqrt(392))
    assert est.interval.low == 0.0  # clamped: a misstatement is never negative
    assert est.interval.high == pytest.approx(36 + 1.959964 * math.sqrt(392), rel=1e-6)


def test_hajek_proportion_and_linearised_variance_by_hand():
    # weights 2, 2, 4: R = 6/8; residuals .25, -.75, .25; variance (0.125 + 1.125 + 0.75) / 64
    est = hajek_proportion([True, False, True], [0.5, 0.5, 0.25])
    assert est.value == pytest.approx(0.75)
    assert est.standard_error == pytest.approx(math.sqrt(2 / 64))
    # unequal weights: Korn-Graubard's exact interval on n* = p(1 - p) / var = 6, capped at the 3 audited
    assert est.method == "clopper_pearson_effective_n"
    assert est.effective_sample_size == pytest.approx(3)
    assert est.interval == clopper_pearson(0.75 * 3, 3)


def test_census_has_no_sampling_error_only_when_the_whole_known_population_was_audited():
    est = proportion_estimate([True, False, True, True], [1, 1, 1, 1], population_size=4)
    assert est.value == 0.75
    assert (est.interval.low, est.interval.high) == (0.75, 0.75)
    assert est.method == "census"
    # the same four mandatory audits of a population of five (or of an unknown one) are a sample
    for partial in (proportion_estimate([True, False, True, True], [1, 1, 1, 1], population_size=5),
                    hajek_proportion([True, False, True, True], [1, 1, 1, 1])):
        assert partial.method == "clopper_pearson" and partial.interval == clopper_pearson(3, 4)


def test_clean_sample_does_not_claim_certainty():
    est = hajek_proportion([True] * 12, [0.1] * 12)
    assert est.value == 1.0
    assert est.method == "clopper_pearson"
    assert est.interval.high == 1.0
    assert est.interval.low == pytest.approx(0.025 ** (1 / 12))  # about 0.735 with 12 clean audits


def test_hajek_total_scales_the_weighted_mean_to_the_known_population():
    # weighted mean (2*10 + 4*0) / 6 = 10/3 per item, 300 items in the population
    est = hajek_total([10, 0], [0.5, 0.25], population_size=300)
    assert est.value == pytest.approx(1000)
    assert est.interval.low >= 0


def test_kish_effective_size():
    assert kish_effective_size([0.5, 0.5]) == pytest.approx(2)
    assert kish_effective_size([1, 0.1]) == pytest.approx(121 / 101)


def test_cohens_kappa_textbook_example():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po 0.7, pe 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert percent_agreement(a, b) == pytest.approx(0.7)
    assert cohens_kappa(a, b) == pytest.approx(0.4)


def test_kappa_perfect_and_chance_level():
    assert cohens_kappa(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == pytest.approx(1.0)
    assert cohens_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == pytest.approx(0.0)


def test_kappa_undefined_when_both_raters_use_one_label():
    assert cohens_kappa(["ok"] * 5, ["ok"] * 5) is None
    assert percent_agreement(["ok"] * 5, ["ok"] * 5) == 1.0


def test_empty_inputs():
    assert cohens_kappa([], []) is None
    assert percent_agreement([], []) is None
    est = hajek_proportion([], [])
    assert est.sample_size == 0 and math.isnan(est.value)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_inclusion_probability_must_be_in_unit_interval(bad):
    with pytest.raises(StatsError, match="inclusion probability #1"):
        hajek_proportion([True, False], [0.5, bad])
    with pytest.raises(StatsError):
        horvitz_thompson_total([1, 2], [0.5, bad])


def test_mismatched_lengths_are_refused():
    with pytest.raises(StatsError, match="same length"):
        hajek_proportion([True], [0.5, 0.5])
    with pytest.raises(StatsError):
        cohens_kappa(["a"], ["a", "b"])


def test_wilson_refuses_impossible_counts():
    with pytest.raises(StatsError):
        wilson_interval(5, 3)
    with pytest.raises(StatsError):
        wilson_interval(-1, 3)


def test_negative_population_is_refused():
    with pytest.raises(StatsError):
        hajek_total([1], [0.5], population_size=-1)


# ------------------------------------------------------------------ laws


@given(st.integers(0, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_observed_share(counts):
    k, n = counts
    iv = wilson_interval(k, n)
    assert 0.0 <= iv.low <= iv.high <= 1.0
    if n:
        assert iv.low - 1e-12 <= k / n <= iv.high + 1e-12


_items = st.lists(st.tuples(st.booleans(), st.floats(0.01, 1.0)), min_size=1, max_size=60)


@given(_items)
def test_proportion_interval_is_a_sub_range_of_unit_interval_around_the_estimate(items):
    flags, probs = zip(*items, strict=True)
    est = hajek_proportion(list(flags), list(probs))
    assert 0.0 <= est.interval.low <= est.value <= est.interval.high <= 1.0


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abc")), min_size=1, max_size=60))
def test_kappa_is_at_most_one_and_agreement_is_a_share(pairs):
    a, b = zip(*pairs, strict=True)
    kappa = cohens_kappa(a, b)
    po = percent_agreement(a, b)
    assert po is not None and 0.0 <= po <= 1.0
    if kappa is not None:
        assert -1.0 - 1e-9 <= kappa <= 1.0 + 1e-9
        assert kappa <= po + 1e-9  # chance correction only ever lowers agreement


# ------------------------------------------------------------------ the estimator recovers a known truth


def _population(rng: random.Random, size: int) -> list[tuple[float, bool, int]]:
    """(inclusion probability, is an error, over-compensation in minor units): risky items are sampled
    more often AND err more often, the case where an unweighted sample rate is badly biased."""
    population = []
    for _ in range(size):
        risk = rng.random()
        if risk < 0.6:
            pi, p_error = 0.04, 0.05
        elif risk < 0.9:
            pi, p_error = 0.15, 0.15
        else:
            pi, p_error = 0.6, 0.40
        error = rng.random() < p_error
        population.append((pi, error, rng.randint(100, 5000) if error else 0))
    return population


def test_weighted_estimate_covers_the_true_error_rate_about_95_percent_of_the_time():
    rng = random.Random(20240611)
    population = _population(rng, 3000)
    true_rate = sum(1 for _, e, _ in population if e) / len(population)
    true_over = sum(m for _, _, m in population)
    runs, covered, covered_money, naive_bias, estimates = 400, 0, 0, 0.0, []
    for _ in range(runs):
        sample = [item for item in population if rng.random() < item[0]]
        probs = [pi for pi, _, _ in sample]
        rate = hajek_proportion([e for _, e, _ in sample], probs)
        over = hajek_total([m for _, _, m in sample], probs, population_size=len(population))
        covered += rate.interval.contains(true_rate)
        covered_money += over.interval.contains(true_over)
        estimates.append(rate.value)
        naive_bias += sum(e for _, e, _ in sample) / len(sample) - true_rate
    coverage, money_coverage = covered / runs, covered_money / runs
    mean_estimate = sum(estimates) / runs
    # 400 runs: a true 95 percent coverage lands in [0.92, 0.98] with probability > 0.99
    assert 0.92 <= coverage <= 0.98, coverage
    assert 0.91 <= money_coverage <= 0.98, money_coverage
    # unbiased to within a fraction of one standard error; the unweighted share is far off
    assert abs(mean_estimate - true_rate) < 0.004, (mean_estimate, true_rate)
    assert naive_bias / runs > 0.05
