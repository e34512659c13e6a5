"""Audit statistics: the population estimates (``shared.stats``, one implementation for every service that
reports them) and agreement between raters (Cohen's kappa), which only the audit service computes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from shared.stats import (
    CONFIDENCE,
    Z95,
    Estimate,
    Interval,
    NonResponse,
    StatsError,
    beta_quantile,
    clopper_pearson,
    hajek_proportion,
    hajek_total,
    horvitz_thompson_total,
    kish_effective_size,
    proportion_estimate,
    regularized_beta,
    total_estimate,
    wilson_interval,
)

__all__ = ["CONFIDENCE", "Z95", "Estimate", "Interval", "NonResponse", "StatsError", "beta_quantile",
           "clopper_pearson", "cohens_kappa", "hajek_proportion", "hajek_total", "horvitz_thompson_total",
           "kish_effective_size", "percent_agreement", "proportion_estimate", "regularized_beta",
           "total_estimate", "wilson_interval"]


def _check_lengths(*seqs: Sequence[object]) -> None:
    if len({len(s) for s in seqs}) > 1:
        raise StatsError("values and inclusion probabilities must have the same length")


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
