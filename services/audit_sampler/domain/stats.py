"""Audit statistics: population estimates from a probability sample, interval estimates, rater agreement.

Everything here is pure arithmetic on plain numbers. Proportions and estimates are statistics, not money
movements, so they are floats; callers report money estimates rounded to whole minor units.

Estimator (stated once, used everywhere): the audit sample is drawn item by item with independent
Bernoulli trials of known inclusion probability ``pi`` (Poisson sampling; ``pi = 1`` for mandatory audits).
- Totals use the Horvitz-Thompson estimator ``sum(y / pi)`` with the exact Poisson-sampling variance
  estimator ``sum((1 - pi) * y**2 / pi**2)``.
- Rates and means use the Hajek ratio ``sum(y / pi) / sum(1 / pi)``; its variance is the Taylor
  linearisation of the same Poisson variance on the residuals ``y - R``. Under Poisson sampling the sample
  size is random, and the ratio form cancels that noise, which the plain HT mean ``sum(y / pi) / N`` does not.
- Intervals are 95 percent normal-approximation intervals, clamped to the parameter's range.
When every audited item agrees (no error seen) the linearised variance is zero although the sample is not
a census; the interval then falls back to a Wilson interval on Kish's effective sample size, so a handful of
clean audits never claims certainty.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95 percent quantile of the standard normal


class StatsError(ValueError):
    """Inputs an estimator cannot use (a probability outside (0, 1], mismatched lengths)."""


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    standard_error: float
    interval: Interval
    sample_size: int
    effective_sample_size: float
    method: str  # "census", "normal" or "wilson_effective_n": how the interval was obtained


def _check_probabilities(probs: Sequence[float]) -> None:
    for i, p in enumerate(probs):
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or not 0 < p <= 1:
            raise StatsError(f"inclusion probability #{i} must be in (0, 1], got {p!r}")


def _check_lengths(*seqs: Sequence[object]) -> None:
    if len({len(s) for s in seqs}) > 1:
        raise StatsError("values and inclusion probabilities must have the same length")


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
    return Interval(max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def _wilson_p(p: float, n: float, z: float = Z95) -> Interval:
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # rounding can put an end a hair past p at p = 0 or 1, where the exact bound is p itself
    return Interval(max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def kish_effective_size(probs: Sequence[float]) -> float:
    """Kish's effective sample size of weights ``1/pi``: (sum w)^2 / sum w^2."""
    weights = [1 / p for p in probs]
    squares = sum(w * w for w in weights)
    return sum(weights) ** 2 / squares if squares else 0.0


def horvitz_thompson_total(values: Sequence[float], probs: Sequence[float], z: float = Z95,
                           lower_bound: float | None = 0.0) -> Estimate:
    """HT estimate of a population total with the Poisson-sampling variance; ``lower_bound`` clamps the
    interval (0 for non-negative quantities such as money misstated, None for none)."""
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


def hajek_proportion(flags: Sequence[bool], probs: Sequence[float], z: float = Z95) -> Estimate:
    """Population share of items with ``flag`` (e.g. compensations judged correct), weighted by 1/pi."""
    _check_lengths(flags, probs)
    _check_probabilities(probs)
    n = len(flags)
    if n == 0:
        return Estimate(math.nan, math.nan, Interval(0.0, 1.0), 0, 0.0, "no_sample")
    weights = [1 / p for p in probs]
    n_hat = sum(weights)
    ratio = sum(w for w, f in zip(weights, flags, strict=True) if f) / n_hat
    ratio = min(1.0, max(0.0, ratio))
    variance = sum((1 - p) * ((1.0 if f else 0.0) - ratio) ** 2 / (p * p)
                   for f, p in zip(flags, probs, strict=True)) / (n_hat * n_hat)
    se = math.sqrt(variance)
    n_eff = kish_effective_size(probs)
    if all(p == 1 for p in probs):
        return Estimate(ratio, 0.0, Interval(ratio, ratio), n, n_eff, "census")
    if variance == 0.0:
        return Estimate(ratio, se, _wilson_p(ratio, n_eff, z), n, n_eff, "wilson_effective_n")
    interval = Interval(max(0.0, ratio - z * se), min(1.0, ratio + z * se))
    return Estimate(ratio, se, interval, n, n_eff, "normal")


def hajek_total(values: Sequence[float], probs: Sequence[float], population_size: int,
                z: float = Z95) -> Estimate:
    """Population total as ``N`` times the Hajek mean, for a known population size ``N`` (the manual
    compensations of a region and period are all recorded, so N is known exactly). Non-negative values
    only (money misstated); the interval is clamped at 0."""
    _check_lengths(values, probs)
    _check_probabilities(probs)
    if population_size < 0:
        raise StatsError("population size must be >= 0")
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, Interval(0.0, math.inf), 0, 0.0, "no_sample")
    weights = [1 / p for p in probs]
    n_hat = sum(weights)
    mean = sum(w * y for w, y in zip(weights, values, strict=True)) / n_hat
    variance = sum((1 - p) * (y - mean) ** 2 / (p * p) for y, p in zip(values, probs, strict=True)) / (n_hat ** 2)
    total = population_size * mean
    se = population_size * math.sqrt(variance)
    if all(p == 1 for p in probs):
        return Estimate(total, 0.0, Interval(total, total), n, kish_effective_size(probs), "census")
    return Estimate(total, se, Interval(max(0.0, total - z * se), total + z * se), n,
                    kish_effective_size(probs), "normal")


# ------------------------------------------------------------------ agreement between raters


def percent_agreement(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """Share of items on which two raters gave the same label; None without items."""
    _check_lengths(first, second)
    if not first:
        return None
    return sum(1 for a, b in zip(first, second, strict=True) if a == b) / len(first)


def cohens_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters over the same items: (po - pe) / (1 - pe).

    None when it is undefined: no items, or both raters used one and the same label throughout (pe = 1),
    where agreement beyond chance cannot be measured."""
    _check_lengths(first, second)
    n = len(first)
    if n == 0:
        return None
    observed = sum(1 for a, b in zip(first, second, strict=True) if a == b) / n
    counts_a, counts_b = Counter(first), Counter(second)
    expected = sum(counts_a[k] * counts_b.get(k, 0) for k in counts_a) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)
