"""Scorecard verdicts follow the thresholds file; the thresholds file is validated like the strategy files;
simulated A/A strategies at the planned sample get "keep" at most 5% of the time; a strategy without a
holdout says "no evidence of return"; before the planned sample there is no keep or retire (peeking)."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import pytest

from services.insights.domain.returns import GroupTally
from services.insights.domain.scorecard import (
    KEEP,
    RETIRE,
    REVIEW,
    StrategyFacts,
    Thresholds,
    ThresholdsLoadError,
    evaluate,
    load_thresholds,
    parse_thresholds,
    review_order,
)

SHIPPED = Path(__file__).resolve().parents[3] / "services" / "insights" / "thresholds" / "scorecard.yaml"
T = Thresholds(planned_buyers_per_group=100, keep_min_return_on_cost=Fraction(1), retire_below_return_on_cost=
               Fraction(1, 4), min_redemption_rate=0.2, min_csat_after_compensation=3.5, min_csat_responses=10,
               max_mean_hours_to_compensate=48)


def group(buyers: int, values: list[int], cost: int = 0) -> GroupTally:
    """A group whose buyers' later-order values are ``values`` (padded with zeros to ``buyers``)."""
    values = values + [0] * (buyers - len(values))
    return GroupTally(buyers, sum(v > 0 for v in values), sum(values), cost, sum(v * v for v in values))


def facts(treated: GroupTally, control: GroupTally, **kw) -> StrategyFacts:
    return StrategyFacts("sg-late", compensations=treated.buyers, cost_minor=treated.cost_minor,
                         treated=treated, control=control, **kw)


def test_the_shipped_thresholds_file_is_valid_for_every_shipped_region():
    loaded = load_thresholds(SHIPPED)
    assert {"SG", "MY", "ID", "TH", "VN", "PH", "GB", "US"} <= set(loaded)
    assert all(t.keep_min_return_on_cost > 0 for t in loaded.values())


def test_a_clear_return_is_kept_with_the_reason_written_out():
    # treated buyers bring 3,000 each, holdout 500: +2,500 per buyer for 500 issued each = 5 per unit of cost
    row = evaluate(facts(group(100, [3_000] * 100, cost=50_000), group(100, [500] * 100)), T)
    assert row.verdict == KEEP and row.at_planned_sample
    assert row.return_on_cost == 5 and row.return_on_cost_interval is not None
    assert "at least 5.00 (95% lower bound), meeting the keep threshold 1.00" in row.reasons[0]


def test_no_return_at_the_planned_sample_is_retired():
    row = evaluate(facts(group(100, [1_000] * 50, cost=100_000), group(100, [1_000] * 50)), T)
    assert row.verdict == RETIRE
    assert "below the retire threshold 0.25" in row.reasons[0]


def test_between_the_thresholds_is_reviewed_with_both_named():
    rng = random.Random(3)
    treated = group(100, [rng.randrange(0, 4_000) for _ in range(100)], cost=50_000)
    control = group(100, [rng.randrange(0, 3_000) for _ in range(100)])
    row = evaluate(facts(treated, control), T)
    assert row.verdict == REVIEW and "neither clearly above 1.00 (keep) nor below 0.25 (retire)" in row.reasons[0]


def test_quality_thresholds_turn_a_keep_into_a_review_and_say_why():
    good = (group(100, [3_000] * 100, cost=50_000), group(100, [500] * 100))
    row = evaluate(facts(*good, vouchers=100, redeemed=10, csat_responses=20, csat_sum=60, timed=10,
                         ttc_seconds=10 * 50 * 3600, audited=5, audit_failed=1), T)
    assert row.verdict == REVIEW
    assert row.reasons[1:] == ("redemption 10.0% of 100 vouchers is below 20.0%",
                               "CSAT after compensation 3.00 (20 answers) is below 3.5",
                               "mean time to compensate 50.0 h is above 48 h",
                               "1 of 5 audited compensations had findings")
    # too few CSAT answers: the CSAT threshold does not apply yet
    assert evaluate(facts(*good, csat_responses=5, csat_sum=5), T).verdict == KEEP


def test_before_the_planned_sample_there_is_no_keep_or_retire():
    row = evaluate(facts(group(99, [3_000] * 99, cost=50_000), group(100, [500] * 100)), T)
    assert row.verdict == REVIEW and not row.at_planned_sample
    assert row.reasons[0].startswith("planned sample not reached: treated 99/100, holdout 100/100")
    assert row.return_on_cost_interval is not None  # the numbers are still shown


def test_a_strategy_without_a_holdout_says_no_evidence_of_return():
    row = evaluate(facts(group(500, [3_000] * 500, cost=50_000), GroupTally(0, 0, 0)), T)
    assert row.verdict == REVIEW and row.reasons[0] == "no holdout buyers in the period: no evidence of return"
    assert row.repeat_uplift is None and row.return_on_cost_interval is None


def test_simulated_aa_strategies_are_kept_at_most_5_percent_of_the_time():
    """Treated and holdout drawn from the same population (30% order again, 1-60 currency units), at the
    planned sample, with a keep threshold just above zero: "keep" in at most 5% of 400 strategies."""
    lenient = Thresholds(200, Fraction(1, 100), Fraction(0), None, None, 1, None)
    kept = 0
    for seed in range(400):
        rng = random.Random(seed)

        def draw(n: int, rng: random.Random = rng) -> list[int]:
            return [rng.randrange(100, 6_000) if rng.random() < 0.3 else 0 for _ in range(n)]

        kept += evaluate(facts(group(200, draw(200), cost=100_000), group(200, draw(200))), lenient).verdict == KEEP
    assert kept / 400 <= 0.05, kept


def test_review_queue_order():
    keep = evaluate(facts(group(100, [3_000] * 100, cost=50_000), group(100, [500] * 100)), T)
    retire = evaluate(facts(group(100, [1_000] * 50, cost=100_000), group(100, [1_000] * 50)), T)
    review = evaluate(facts(group(10, [1] * 10, cost=5), group(10, [1] * 10)), T)
    assert [r.verdict for r in review_order([keep, review, retire])] == [RETIRE, REVIEW, KEEP]


@pytest.mark.parametrize(("doc", "field", "message"), [
    ({"regions": {"XX": {}}}, "(region)", "not in the region catalogue"),
    ({"regions": {"SG": {"planned_buyers_per_group": 400}}}, "keep_min_return_on_cost", "is required"),
    ({"regions": {"SG": {**T.as_dict(), "keep_min_return_on_cost": 0}}}, "keep_min_return_on_cost", "must be >"),
    ({"regions": {"SG": {**T.as_dict(), "planned_buyers_per_group": 5}}}, "planned_buyers_per_group", "whole"),
    ({"regions": {"SG": {**T.as_dict(), "min_redemption_rate": 1.5}}}, "min_redemption_rate", "<= 1"),
    ({"regions": {"SG": {**T.as_dict(), "colour": "red"}}}, "colour", "unknown field"),
    ({"regions": {"SG": {**T.as_dict(), "retire_below_return_on_cost": 2}}}, "retire_below_return_on_cost",
     "must not exceed"),
    ({"strategies": []}, "(file)", "one key, 'regions'"),
])
def test_bad_thresholds_name_region_and_field(doc, field, message):
    for block in doc.get("regions", {}).values():
        block.pop("file", None)
    with pytest.raises(ThresholdsLoadError) as exc:
        parse_thresholds(doc, "t.yaml")
    assert any(e.field == field and message in e.message for e in exc.value.errors), exc.value.errors


def test_an_unreadable_file_is_a_load_error(tmp_path):
    (tmp_path / "t.yaml").write_text("regions: [unclosed")
    with pytest.raises(ThresholdsLoadError):
        load_thresholds(tmp_path / "t.yaml")


def test_peeking_every_week_after_the_planned_sample_keeps_aa_strategies_at_most_5_percent():
    """A/A populations watched at the planned sample and at four later looks (the groups keep growing):
    the verdict is taken on each group's first planned buyers, so "keep" at ANY look stays within 5%, and
    every look after the plan repeats the first verdict."""
    plan = 200
    lenient = Thresholds(plan, Fraction(1, 100), Fraction(0), None, None, 1, None)
    kept_at_any_look = 0
    for seed in range(300):
        rng = random.Random(10_000 + seed)
        treated = [rng.randrange(100, 6_000) if rng.random() < 0.3 else 0 for _ in range(3 * plan)]
        control = [rng.randrange(100, 6_000) if rng.random() < 0.3 else 0 for _ in range(3 * plan)]
        verdicts = set()
        for n in (plan, plan + 100, 2 * plan, 2 * plan + 100, 3 * plan):
            f = StrategyFacts("sg-aa", compensations=n, cost_minor=500 * n,
                              treated=group(n, treated[:n], cost=500 * n), control=group(n, control[:n]),
                              judged_treated=group(plan, treated[:plan], cost=500 * plan),
                              judged_control=group(plan, control[:plan]))
            row = evaluate(f, lenient)
            assert row.at_planned_sample and row.judged_buyers_per_group == plan
            verdicts.add(row.verdict)
        assert len(verdicts) == 1, (seed, verdicts)  # later looks cannot change the verdict
        kept_at_any_look += KEEP in verdicts
    assert kept_at_any_look / 300 <= 0.05, kept_at_any_look


def test_the_planned_sample_is_what_is_judged_not_everyone_seen_since():
    """Judged on the first 100 buyers of each group (no return), a strategy is not rescued by a later
    lucky run of buyers: the verdict and the interval are those of the planned sample."""
    flat = group(100, [1_000] * 50, cost=100_000)
    later = group(300, [1_000] * 50 + [9_000] * 200, cost=300_000)
    row = evaluate(StrategyFacts("sg-late", compensations=300, cost_minor=300_000, treated=later,
                                 control=group(300, [1_000] * 150), judged_treated=flat,
                                 judged_control=group(100, [1_000] * 50)), T)
    assert row.verdict == RETIRE and row.judged_buyers_per_group == 100
    assert row.as_dict("SGD")["treated_buyers"] == 300  # the facts still show everyone
