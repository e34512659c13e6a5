"""Estimates from an audit sample: the one implementation every service reports with.

Pure arithmetic on plain numbers, no I/O. Proportions and estimates are statistics, not money movements,
so they are floats; callers report money estimates rounded to whole minor units.

The design (stated once, used everywhere): audit items are drawn one by one with independent Bernoulli
trials of known inclusion probability ``pi`` (Poisson sampling; ``pi = 1`` for mandatory audits).

- **Estimator.** Rates use the Hajek ratio ``sum(y / pi) / sum(1 / pi)`` over the audited items; totals of
  a population of known size ``N`` use ``N`` times the Hajek mean. Variances are the Taylor linearisation
  of the Poisson-sampling variance ``sum((1 - pi) * r**2 / pi**2)`` on the residuals ``r = y - R``.
- **Non-response.** A sampled item still waiting for its audit is non-response, not a pass and not a
  failure. The estimate treats the unaudited items as missing at random among the sampled ones: the
  audited items stand for them, each item's probability multiplied by the (design-weighted) response
  rate ``sum over audited of 1/pi / sum over sampled of 1/pi``. The point estimate of a rate does not
  move under a uniform response rate; its variance grows (fewer items observed), so a half-audited
  sample of mandatory items is no longer a zero-width "census". Every estimate also carries the
  worst-case bounds: the value it would take if every unaudited item turned out one way or the other.
- **Intervals of a proportion** are exact (Clopper-Pearson) rather than normal, which fails at a handful
  of audits and at rates near 0 or 1. With equal weights it is the textbook interval on (successes,
  audited); with unequal weights it is Korn and Graubard's (1998) version on the design-based effective
  sample size ``n* = p(1 - p) / var(p)`` (capped at the number audited; Kish's ``(sum w)^2 / sum w^2``
  when the variance is 0, i.e. every audited item agreed). ``method`` says which:
  ``clopper_pearson``, ``clopper_pearson_effective_n``, ``census`` (every item of a known population
  audited: no sampling error) or ``no_sample``.
- **Intervals of a money total** are normal on the linearised variance (``normal``). When every audited
  item was right (no misstatement seen, so no variance to estimate) the upper bound is the upper exact
  bound of the share of misstated items times the largest misstatement an item can carry (for
  over-compensation: its own amount, so the population's amount), ``error_rate_bound``; without such a
  cap nothing honest can be said and the upper bound is unbounded (``no_errors_seen``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

Z95 = 1.959963984540054  # two-sided 95 percent quantile of the standard normal
CONFIDENCE = 0.95


class StatsError(ValueError):
    """Inputs an estimator cannot use (a probability outside (0, 1], mismatched lengths)."""


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class NonResponse:
    """Sampled items that have no audit yet, and what they could do to the estimate."""

    unaudited: int
    sampled: int  # audited + unaudited
    share: float  # unaudited / sampled (NaN with nothing sampled)
    weighted_share: float  # share of the sampled items' design weight (1/pi) that is unaudited
    bounds: Interval | None  # a rate: its value if every unaudited item failed (low) or passed (high)
    treatment: str = "missing_at_random"  # the audited items stand for the unaudited ones (see above)


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    standard_error: float
    interval: Interval
    sample_size: int  # items audited
    effective_sample_size: float  # the n the interval was computed on (see the module docstring)
    method: str  # census | clopper_pearson | clopper_pearson_effective_n | normal | error_rate_bound | ...
    confidence: float = CONFIDENCE
    nonresponse: NonResponse | None = None


# ------------------------------------------------------------------ checks


def _check_probabilities(probs: Sequence[float], what: str = "inclusion probability") -> None:
    for i, p in enumerate(probs):
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or not 0 < p <= 1:
            raise StatsError(f"{what} #{i} must be in (0, 1], got {p!r}")


def _check_lengths(*seqs: Sequence[object]) -> None:
    if len({len(s) for s in seqs}) > 1:
        raise StatsError("values and inclusion probabilities must have the same length")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be in (0, 1), got {confidence!r}")


# ------------------------------------------------------------------ the beta distribution


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function (the beta distribution's CDF), for a, b > 0.

    Continued fraction by the modified Lentz method (Numerical Recipes, 6.4), on whichever side of the
    mean converges; accurate to about 1e-14 for the sizes of audit samples."""
    if not (a > 0 and b > 0):
        raise StatsError(f"beta parameters must be positive, got {a!r}, {b!r}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny, eps = 1e-300, 1e-15
    # Convergence takes O(sqrt(max(a, b))) terms.
    limit = 200 + int(20 * math.sqrt(max(a, b)))
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, limit + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    return h  # not converged to eps: still the best value found (the bisection above tolerates it)


def beta_quantile(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q (bisection: slow but sure; 60 halvings reach double precision)."""
    if not 0.0 <= q <= 1.0:
        raise StatsError(f"a quantile needs 0 <= q <= 1, got {q!r}")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        if regularized_beta(mid, a, b) < q:
            low = mid
        else:
            high = mid
        if high - low < 1e-15:
            break
    return (low + high) / 2


# ------------------------------------------------------------------ intervals of a proportion


def clopper_pearson(successes: float, trials: float, confidence: float = CONFIDENCE) -> Interval:
    """Exact (Clopper-Pearson) interval for a binomial proportion, by beta quantiles. ``successes`` and
    ``trials`` may be fractional (an effective sample size): the same formula, as Korn and Graubard use."""
    _check_confidence(confidence)
    if trials < 0 or successes < -1e-9 or successes > trials + 1e-9:
        raise StatsError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return Interval(0.0, 1.0)
    x = min(max(successes, 0.0), trials)
    alpha = 1 - confidence
    low = 0.0 if x <= 0 else beta_quantile(alpha / 2, x, trials - x + 1)
    high = 1.0 if x >= trials else beta_quantile(1 - alpha / 2, x + 1, trials - x)
    p = x / trials
    # rounding must never put the observed share outside its own interval
    return Interval(min(low, p), max(high, p))


def wilson_interval(successes: int, trials: float, z: float = Z95) -> Interval:
    """Wilson score interval for a binomial proportion; ``trials`` may be an effective (fractional) size."""
    if successes < 0 or trials < 0 or successes > trials + 1e-9:
        raise StatsError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return Interval(0.0, 1.0)
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # The exact bounds at 0 and all successes are 0 and 1; rounding must not move them.
    low = 0.0 if successes == 0 else max(0.0, min(p, centre - half))
    high = 1.0 if successes >= trials else min(1.0, max(p, centre + half))
    return Interval(low, high)


def newcombe_interval(x1: int, n1: float, x2: int, n2: float, z: float = Z95) -> Interval:
    """Newcombe's hybrid score interval for the difference of two proportions p1 - p2 (x1 of n1 against x2
    of n2), built from the two Wilson intervals (Newcombe 1998, method 10). Used for a strategy's return
    (treated vs holdout) and a corrective action's effect (after vs before)."""
    if n1 <= 0 or n2 <= 0:
        raise StatsError("a difference of proportions needs at least one trial on each side")
    p1, p2 = x1 / n1, x2 / n2
    w1, w2 = wilson_interval(x1, n1, z), wilson_interval(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - w1.low) ** 2 + (w2.high - p2) ** 2)
    high = d + math.sqrt((w1.high - p1) ** 2 + (p2 - w2.low) ** 2)
    return Interval(max(-1.0, low), min(1.0, high))


def mean_difference_interval(sum1: float, squares1: float, n1: int, sum2: float, squares2: float, n2: int,
                             z: float = Z95) -> Interval:
    """Normal (Welch) interval for mean1 - mean2 from each group's sum and sum of squares of a per-unit
    value (e.g. a buyer's later-order value). Sample variances with n - 1; each group needs two units."""
    if n1 < 2 or n2 < 2:
        raise StatsError(f"each group needs at least two units, got {n1} and {n2}")
    m1, m2 = sum1 / n1, sum2 / n2
    v1 = max(0.0, (squares1 - n1 * m1 * m1) / (n1 - 1))
    v2 = max(0.0, (squares2 - n2 * m2 * m2) / (n2 - 1))
    half = z * math.sqrt(v1 / n1 + v2 / n2)
    return Interval(m1 - m2 - half, m1 - m2 + half)


def kish_effective_size(probs: Sequence[float]) -> float:
    """Kish's effective sample size of weights ``1/pi``: (sum w)^2 / sum w^2."""
    weights = [1 / p for p in probs]
    squares = sum(w * w for w in weights)
    return sum(weights) ** 2 / squares if squares else 0.0


# ------------------------------------------------------------------ the estimators


def _nonresponse(audited_weights: Sequence[float], flags_weight: float, unaudited_probs: Sequence[float]
                 ) -> NonResponse:
    missing = sum(1 / p for p in unaudited_probs)
    observed = sum(audited_weights)
    total = observed + missing
    n, m = len(audited_weights), len(unaudited_probs)
    bounds = Interval(flags_weight / total, (flags_weight + missing) / total) if total else Interval(0.0, 1.0)
    return NonResponse(unaudited=m, sampled=n + m, share=m / (n + m) if n + m else math.nan,
                       weighted_share=missing / total if total else math.nan, bounds=bounds)


def _respondent_probabilities(probs: Sequence[float], unaudited_probs: Sequence[float]) -> list[float]:
    """Each audited item's probability times the design-weighted response rate (missing at random)."""
    if not unaudited_probs:
        return list(probs)
    observed = sum(1 / p for p in probs)
    rate = observed / (observed + sum(1 / p for p in unaudited_probs))
    return [p * rate for p in probs]


def _is_census(probs: Sequence[float], unaudited: int, population_size: int | None) -> bool:
    """Every item of a known population audited: nothing left to estimate."""
    return (population_size is not None and unaudited == 0 and len(probs) >= population_size
            and all(p == 1 for p in probs))


def proportion_estimate(flags: Sequence[bool], probs: Sequence[float], *,
                        unaudited_probs: Sequence[float] = (), population_size: int | None = None,
                        confidence: float = CONFIDENCE) -> Estimate:
    """The population share of items with ``flag`` (e.g. compensations judged correct) from an audit sample.

    ``flags`` and ``probs``: the audited items' findings and effective inclusion probabilities.
    ``unaudited_probs``: the probabilities of sampled items not audited yet (non-response).
    ``population_size``: the number of items in the population, when known (needed to call a complete
    audit a census). The module docstring states the estimator, the non-response treatment and the
    interval; ``method`` names the interval used.
    """
    _check_lengths(flags, probs)
    _check_probabilities(probs)
    _check_probabilities(unaudited_probs, "unaudited item's inclusion probability")
    _check_confidence(confidence)
    if population_size is not None and population_size < 0:
        raise StatsError("population size must be >= 0")
    design = [1 / p for p in probs]
    nonresponse = _nonresponse(design, sum(w for w, f in zip(design, flags, strict=True) if f), unaudited_probs)
    n = len(flags)
    if n == 0:
        return Estimate(math.nan, math.nan, Interval(0.0, 1.0), 0, 0.0, "no_sample", confidence, nonresponse)
    adjusted = _respondent_probabilities(probs, unaudited_probs)
    weights = [1 / p for p in adjusted]
    n_hat = sum(weights)
    ratio = min(1.0, max(0.0, sum(w for w, f in zip(weights, flags, strict=True) if f) / n_hat))
    variance = sum((1 - p) * ((1.0 if f else 0.0) - ratio) ** 2 / (p * p)
                   for f, p in zip(flags, adjusted, strict=True)) / (n_hat * n_hat)
    se = math.sqrt(variance)
    if _is_census(probs, len(unaudited_probs), population_size):
        return Estimate(ratio, 0.0, Interval(ratio, ratio), n, float(n), "census", confidence, nonresponse)
    equal = max(adjusted) - min(adjusted) <= 1e-12 * max(adjusted)
    if variance > 0 and 0 < ratio < 1:
        n_eff = ratio * (1 - ratio) / variance
    else:  # every audited item agreed: no variance to estimate, only the weights' spread
        n_eff = kish_effective_size(adjusted)
    n_eff = min(float(n), n_eff)
    interval = clopper_pearson(ratio * n_eff, n_eff, confidence)
    method = "clopper_pearson" if equal else "clopper_pearson_effective_n"
    return Estimate(ratio, se, interval, n, n_eff, method, confidence, nonresponse)


def total_estimate(values: Sequence[float], probs: Sequence[float], population_size: int, *,
                   unaudited_probs: Sequence[float] = (), value_cap_total: float | None = None,
                   confidence: float = CONFIDENCE) -> Estimate:
    """A population total of non-negative values (money misstated, in minor units) as ``N`` times the
    Hajek mean, for a known population size ``N``; the interval is clamped at 0.

    ``value_cap_total``: the most the whole population could carry if every item had the largest value it
    can (for over-compensation, the amount the population was paid); used for the upper bound when no
    audited item has a value (``error_rate_bound``). ``unaudited_probs`` as for ``proportion_estimate``.
    """
    _check_lengths(values, probs)
    _check_probabilities(probs)
    _check_probabilities(unaudited_probs, "unaudited item's inclusion probability")
    _check_confidence(confidence)
    if population_size < 0:
        raise StatsError("population size must be >= 0")
    n = len(values)
    design = [1 / p for p in probs]
    counted = _nonresponse(design, 0.0, unaudited_probs)
    # worst-case bounds of a total would need the largest value an item can carry: the rate's say it
    nonresponse = NonResponse(counted.unaudited, counted.sampled, counted.share, counted.weighted_share, None)
    if n == 0:
        return Estimate(math.nan, math.nan, Interval(0.0, math.inf), 0, 0.0, "no_sample", confidence, nonresponse)
    adjusted = _respondent_probabilities(probs, unaudited_probs)
    weights = [1 / p for p in adjusted]
    n_hat = sum(weights)
    mean = sum(w * y for w, y in zip(weights, values, strict=True)) / n_hat
    variance = sum((1 - p) * (y - mean) ** 2 / (p * p) for y, p in zip(values, adjusted, strict=True)) / n_hat ** 2
    total = population_size * mean
    se = population_size * math.sqrt(variance)
    n_eff = kish_effective_size(adjusted)
    if _is_census(probs, len(unaudited_probs), population_size):
        return Estimate(total, 0.0, Interval(total, total), n, float(n), "census", confidence, nonresponse)
    if variance > 0:
        z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
        return Estimate(total, se, Interval(max(0.0, total - z * se), total + z * se), n, n_eff, "normal",
                        confidence, nonresponse)
    if all(y == 0 for y in values) and value_cap_total is not None:
        share = clopper_pearson(0.0, min(float(n), n_eff), confidence).high
        return Estimate(0.0, 0.0, Interval(0.0, share * value_cap_total), n, n_eff, "error_rate_bound",
                        confidence, nonresponse)
    method = "no_errors_seen" if all(y == 0 for y in values) else "not_estimable"
    return Estimate(total, se, Interval(0.0, math.inf), n, n_eff, method, confidence, nonresponse)


# ------------------------------------------------------------------ the earlier names


def hajek_proportion(flags: Sequence[bool], probs: Sequence[float], z: float = Z95) -> Estimate:
    """``proportion_estimate`` without non-response or a known population (the population share of items
    with ``flag``); ``z`` is kept for callers of the first version and sets the confidence level."""
    return proportion_estimate(flags, probs, confidence=2 * NormalDist().cdf(z) - 1)


def hajek_total(values: Sequence[float], probs: Sequence[float], population_size: int,
                z: float = Z95) -> Estimate:
    """``total_estimate`` without non-response or a cap."""
    return total_estimate(values, probs, population_size, confidence=2 * NormalDist().cdf(z) - 1)


def horvitz_thompson_total(values: Sequence[float], probs: Sequence[float], z: float = Z95,
                           lower_bound: float | None = 0.0) -> Estimate:
    """HT estimate of a population total ``sum(y / pi)`` with the Poisson-sampling variance; ``lower_bound``
    clamps the interval (0 for non-negative quantities such as money misstated, None for none). Normal
    interval; ``census`` only says every probability was 1 (the population is unknown here)."""
    _check_lengths(values, probs)
    _check_probabilities(probs)
    total = sum(y / p for y, p in zip(values, probs, strict=True))
    variance = sum((1 - p) * y * y / (p * p) for y, p in zip(values, probs, strict=True))
    se = math.sqrt(variance)
    low = total - z * se
    if lower_bound is not None:
        low = max(lower_bound, low)
    census = all(p == 1 for p in probs)
    return Estimate(total, se, Interval(low, total + z * se), len(values), kish_effective_size(probs),
                    "census" if census else "normal")
