import csv
import io
import json
from datetime import UTC, date, datetime

import pytest

from services.audit_sampler.domain.reports import (
    CSV_HEADER,
    AuditedCompensation,
    CalibrationPair,
    GoldResult,
    PeriodKind,
    PopulationCount,
    accuracy_report,
    agreement_by_attribute,
    agreement_by_auditor,
    calibration_report,
    error_rates,
    period_containing,
    recent_periods,
    root_causes,
)
from services.audit_sampler.domain.verdicts import ATTRIBUTES

ALL_OK = dict.fromkeys(ATTRIBUTES, True)


def item(cid="c1", *, agent="a1", team="t1", reason="late", amount=1000, p=0.5, passed=True,
         category=None, corrected=None, failed=()):
    return AuditedCompensation(cid, agent, team, reason, amount, p, passed, category, corrected,
                               frozenset(failed))


# ------------------------------------------------------------------ periods in the region's time zone


def test_month_is_cut_at_local_midnight_across_a_dst_change():
    march = period_containing("month", date(2024, 3, 17), "America/New_York")
    assert march.label == "2024-03"
    assert march.start_utc == datetime(2024, 3, 1, 5, tzinfo=UTC)  # EST
    assert march.end_utc == datetime(2024, 4, 1, 4, tzinfo=UTC)  # EDT


def test_day_in_a_region_ahead_of_utc():
    day = period_containing(PeriodKind.DAY, date(2024, 1, 1), "Asia/Singapore")
    assert day.start_utc == datetime(2023, 12, 31, 16, tzinfo=UTC)
    assert day.end_utc == datetime(2024, 1, 1, 16, tzinfo=UTC)


def test_iso_week_runs_monday_to_sunday_and_labels_the_iso_year():
    week = period_containing("week", date(2021, 1, 3), "UTC")  # a Sunday in ISO week 2020-W53
    assert (week.start, week.end) == (date(2020, 12, 28), date(2021, 1, 4))
    assert week.label == "2020-W53"


def test_previous_periods_and_december_rollover():
    dec = period_containing("month", date(2024, 12, 31), "UTC")
    assert dec.end == date(2025, 1, 1)
    assert dec.previous().label == "2024-11"
    labels = [p.label for p in recent_periods(period_containing("day", date(2024, 3, 1), "UTC"), 3)]
    assert labels == ["2024-02-28", "2024-02-29", "2024-03-01"]


def test_unknown_period_kind_is_refused():
    with pytest.raises(ValueError):
        period_containing("fortnight", date(2024, 1, 1), "UTC")


# ------------------------------------------------------------------ money misstated per item


def test_right_amount_follows_the_verdict():
    assert item(passed=True).over_minor == 0
    not_warranted = item(passed=False, failed={"warranted"}, category="not_warranted")
    assert (not_warranted.over_minor, not_warranted.under_minor) == (1000, 0)
    too_little = item(passed=False, failed={"amount_correct"}, corrected=1500, category="wrong_amount")
    assert (too_little.over_minor, too_little.under_minor) == (0, 500)
    wrong_party_only = item(passed=False, failed={"liable_party_correct"}, category="wrong_liable_party")
    assert (wrong_party_only.over_minor, wrong_party_only.under_minor) == (0, 0)


# ------------------------------------------------------------------ error rates and root causes


def test_error_rates_by_dimension_with_wilson_intervals():
    items = [item("c1", agent="ann", passed=False, failed={"amount_correct"}, corrected=400,
                  category="wrong_amount"),
             item("c2", agent="ann"), item("c3", agent="bob"), item("c4", agent="bob")]
    rates = error_rates(items)
    ann = next(r for r in rates["agent"] if r.key == "ann")
    assert (ann.audited, ann.errors, ann.rate, ann.amount_minor) == (2, 1, 0.5, 600)
    assert ann.ci_low < 0.5 < ann.ci_high
    assert rates["agent"][0].key == "ann"  # most errors first
    amount = next(r for r in rates["attribute"] if r.key == "amount_correct")
    assert (amount.audited, amount.errors) == (4, 1)
    assert {r.key for r in rates["attribute"]} == set(ATTRIBUTES)


def test_root_causes_rank_by_count_and_compare_with_the_previous_period():
    now = [item(f"n{i}", passed=False, failed={"warranted"}, category="not_warranted") for i in range(3)]
    now += [item("n9", passed=False, failed={"evidence_sufficient"}, category="missing_evidence")]
    now += [item(f"ok{i}") for i in range(6)]
    before = [item(f"p{i}", passed=False, failed={"warranted"}, category="not_warranted") for i in range(1)]
    before += [item(f"q{i}", passed=False, failed={"evidence_sufficient"}, category="missing_evidence")
               for i in range(5)]
    before += [item(f"pk{i}") for i in range(4)]
    causes = root_causes(now, before)
    assert [c.category for c in causes] == ["not_warranted", "missing_evidence"]
    top = causes[0]
    assert (top.count, top.misstated_minor, top.previous_count, top.trend) == (3, 3000, 1, "up")
    assert causes[1].trend == "down"
    assert root_causes([item(passed=False, category="duplicate")], [])[0].trend == "new"


# ------------------------------------------------------------------ the accuracy report


def test_accuracy_report_json_and_csv():
    period = period_containing("month", date(2024, 5, 10), "Asia/Singapore")
    audited = [item("c1", p=0.5), item("c2", p=0.5),
               item("c3", p=0.25, passed=False, failed={"warranted"}, category="not_warranted")]
    report = accuracy_report(region="SG", currency="SGD", period=period,
                             population=PopulationCount(size=8, sampled=4, amount_minor=8000),
                             audited=audited, previous_audited=[item("x", p=1.0)])
    doc = json.loads(json.dumps(report.as_json()))  # JSON-serialisable throughout
    assert doc["accuracy"]["estimate"] == pytest.approx(0.5)  # weights 2, 2, 4: 4/8
    assert doc["error_rate"]["estimate"] == pytest.approx(0.5)
    assert doc["population"] == {"compensations": 8, "amount_minor": 8000, "sampled": 4, "audited": 3,
                                 "unaudited": 0, "dropped_by_capacity": 0}
    assert doc["accuracy"]["interval_method"] == "clopper_pearson_effective_n"
    assert doc["accuracy"]["nonresponse"]["unaudited"] == 0
    # over-compensation: weighted mean 4*1000/8 = 500 per item, times 8 items
    assert doc["misstated"]["over_compensation"]["estimate_minor"] == 4000
    assert doc["misstated"]["under_compensation"]["estimate_minor"] == 0
    assert doc["period"]["start_utc"] == "2024-04-30T16:00:00+00:00"
    assert doc["previous_period_accuracy"]["estimate"] == 1.0
    assert doc["root_causes"][0]["category"] == "not_warranted"
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    writer.writerows(report.csv_rows())
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert all(len(r) == len(CSV_HEADER) for r in rows)
    assert any(r["section"] == "error_rate_by_agent" and r["key"] == "a1" for r in rows)
    assert next(r for r in rows if r["section"] == "accuracy")["value"] == "0.5"


def test_one_audited_of_three_sampled_is_reported_as_non_response_not_as_a_census():
    """The field case: "0.0%, 95% CI 0.0%-0.0%" labelled census from 1 audited (failed) of 3 sampled."""
    period = period_containing("day", date(2024, 5, 10), "UTC")
    failed = item("c1", p=1.0, passed=False, failed={"warranted"}, category="not_warranted")
    report = accuracy_report(region="US", currency="USD", period=period,
                             population=PopulationCount(size=3, sampled=3, amount_minor=3000),
                             audited=[failed], unaudited=[1.0, 1.0])
    doc = json.loads(json.dumps(report.as_json()))
    accuracy = doc["accuracy"]
    assert accuracy["estimate"] == 0.0
    assert accuracy["interval_method"] == "clopper_pearson" and accuracy["interval_method"] != "census"
    assert (accuracy["ci95_low"], accuracy["ci95_high"]) == (0.0, 0.975)
    assert "Clopper-Pearson" in accuracy["interval_method_text"]
    assert accuracy["nonresponse"] == {"unaudited": 2, "sampled": 3, "share": 0.666667, "weighted_share": 0.666667,
                                       "treatment": "missing_at_random", "if_all_unaudited_failed": 0.0,
                                       "if_all_unaudited_passed": 0.666667}
    assert doc["population"]["unaudited"] == 2
    assert "non-response" in doc["method"]
    # the money misstated is no census either: one audit cannot estimate a variance
    assert doc["misstated"]["over_compensation"]["interval_method"] == "not_estimable"
    assert doc["misstated"]["over_compensation"]["upper_bound_minor"] is None
    rows = report.csv_rows()
    nonresponse = next(r for r in rows if r[3] == "nonresponse")
    assert nonresponse[4:9] == ["unaudited_sampled", 1, 2, 0.666667, 0.0]
    # all three audited: now the period is known exactly
    done = accuracy_report(region="US", currency="USD", period=period,
                           population=PopulationCount(size=3, sampled=3, amount_minor=3000),
                           audited=[failed, item("c2", p=1.0), item("c3", p=1.0)])
    assert done.as_json()["accuracy"]["interval_method"] == "census"


def test_accuracy_report_without_audits_says_so():
    period = period_containing("day", date(2024, 5, 10), "UTC")
    report = accuracy_report(region="GB", currency="GBP", period=period,
                             population=PopulationCount(size=0, sampled=0, amount_minor=0), audited=[])
    doc = json.loads(json.dumps(report.as_json()))
    assert doc["accuracy"]["estimate"] is None
    assert doc["accuracy"]["interval_method"] == "no_sample"
    assert doc["misstated"]["over_compensation"]["estimate_minor"] is None
    assert doc["error_rates"]["agent"] == []


# ------------------------------------------------------------------ calibration


def pair(a, b, first, second):
    return CalibrationPair(a, b, first, second, all(first.values()), all(second.values()))


def test_agreement_per_attribute_and_auditor():
    wrong_amount = {**ALL_OK, "amount_correct": False}
    pairs = [pair("ann", "bob", ALL_OK, ALL_OK), pair("ann", "bob", wrong_amount, wrong_amount),
             pair("ann", "cy", ALL_OK, wrong_amount), pair("cy", "bob", wrong_amount, ALL_OK)]
    by_attr = {r.key: r for r in agreement_by_attribute(pairs)}
    assert by_attr["amount_correct"].percent_agreement == pytest.approx(0.5)
    assert by_attr["amount_correct"].kappa == pytest.approx(0.0)  # po .5, pe .5
    assert by_attr["warranted"].kappa is None  # everyone said warranted: kappa undefined
    assert by_attr["warranted"].percent_agreement == 1.0
    by_auditor = {r.key: r for r in agreement_by_auditor(pairs)}
    assert by_auditor["ann"].pairs == 3
    assert by_auditor["cy"].percent_agreement == pytest.approx(12 / 14)
    # cy failed both, the others passed both: po 0, pe 0 (no label in common), kappa 0
    assert by_auditor["cy"].kappa == pytest.approx(0.0)
    assert by_auditor["cy"].percent_agreement < by_auditor["ann"].percent_agreement


def test_calibration_report_with_gold_accuracy_over_time():
    period = period_containing("week", date(2024, 5, 15), "UTC")
    gold = [GoldResult("ann", date(2024, 5, 14), True), GoldResult("ann", date(2024, 5, 15), False),
            GoldResult("bob", date(2024, 5, 7), True), GoldResult("bob", date(2023, 1, 1), False)]
    report = calibration_report(region="US", period=period, pairs=[], gold=gold, history=3)
    doc = json.loads(json.dumps(report.as_json()))
    everyone = [g for g in doc["gold_accuracy"] if g["auditor_id"] == "*"]
    assert [g["period"] for g in everyone] == ["2024-W18", "2024-W19", "2024-W20"]
    assert [g["items"] for g in everyone] == [0, 1, 2]
    assert everyone[-1]["accuracy"] == 0.5
    assert everyone[0]["accuracy"] is None
    assert {g["auditor_id"] for g in doc["gold_accuracy"]} == {"*", "ann", "bob"}
    assert all(len(r) == 10 for r in report.csv_rows())
