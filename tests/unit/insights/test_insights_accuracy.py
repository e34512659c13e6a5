"""The report's accuracy is the sampler's estimate: the same function (shared.stats), the same non-response
and census rules, so a strategy manager reads one number in both places (ADR 0010)."""

from __future__ import annotations

import pytest

from services.insights.domain.report import AuditedItem, AuditInputs, accuracy_section
from shared.stats import proportion_estimate


def item(n: int, passed: bool, probability: float = 0.5, misstated: int = 0) -> AuditedItem:
    return AuditedItem(f"C-{n}", probability, passed, misstated)


def test_one_audited_of_three_sampled_is_not_a_census_and_shows_what_the_waiting_two_could_do():
    audit = AuditInputs(sampled=3, audited=[item(1, True)], unaudited_probabilities=[0.5, 0.5])
    out = accuracy_section(audit, manual_compensations=6)
    assert out["not_yet_audited"] == 2
    assert out["method"] != "census"
    assert out["estimate"] == 1.0
    low, high = out["ci95"]
    assert low < 0.5 < high == 1.0  # one answer cannot pin the rate down
    assert out["if_unaudited_all_failed_or_passed"] == [pytest.approx(1 / 3, abs=1e-6), 1.0]


def test_every_manual_compensation_audited_is_a_census():
    audit = AuditInputs(sampled=4, audited=[item(i, i != 2, probability=1.0) for i in range(4)])
    out = accuracy_section(audit, manual_compensations=4)
    assert out["method"] == "census"
    assert out["estimate"] == 0.75 and out["ci95"] == [0.75, 0.75]
    assert "if_unaudited_all_failed_or_passed" not in out


def test_the_figures_are_the_shared_estimators_to_the_sixth_decimal():
    items = [item(i, i % 3 != 0, probability=0.2 if i % 2 else 0.6, misstated=i) for i in range(25)]
    waiting = [0.2, 0.6, 0.6]
    out = accuracy_section(AuditInputs(sampled=28, audited=items, unaudited_probabilities=waiting), 400)
    est = proportion_estimate([i.passed for i in items], [i.probability for i in items],
                              unaudited_probs=waiting, population_size=400)
    assert out["estimate"] == round(est.value, 6)
    assert out["ci95"] == [round(est.interval.low, 6), round(est.interval.high, 6)]
    assert out["method"] == est.method == "clopper_pearson_effective_n"
    assert out["misstated_minor_in_sample"] == sum(range(25))


def test_nothing_audited_yet_reports_no_estimate():
    out = accuracy_section(AuditInputs(sampled=2, unaudited_probabilities=[0.5, 0.5]), 10)
    assert out["estimate"] is None and out["ci95"] is None and out["method"] == "no_sample"
    assert out["not_yet_audited"] == 2
