"""Sampling decisions: reproducible draws, risk boosts, probabilities, switching, capacity."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.audit_sampler.domain.policy import SamplingState, SwitchingRules, parse_policy
from services.audit_sampler.domain.queues import Candidate, effective_probability, fill_queue_day
from services.audit_sampler.domain.sampling import (
    AgentProfile,
    InspectionLevel,
    ManualCompensation,
    decide,
    next_state,
    record_audit,
    replay_levels,
    uniform_draw,
    week_start,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
VETERAN = AgentProfile(first_seen_at=NOW - timedelta(days=400), compensations_before=5000,
                       recent_results=(True,) * 20, sampled_this_week=99)

POLICY = parse_policy({
    "region": "US", "seed": "unit-test-seed-1", "baseline_rate": 0.05,
    "always_audit_above": {"USD": 20000},
    "risk_boosts": {
        "agent_error_rate": {"threshold": 0.1, "multiplier": 3, "last_audits": 10, "min_audits": 5},
        "new_agent": {"first_days": 30, "first_compensations": 50, "multiplier": 4},
        "amount_to_order": {"percent_above": 50, "multiplier": 2},
        "error_prone_reasons": {"codes": ["quality_issue"], "multiplier": 2},
        "repeat_buyer": {"within_days": 30, "multiplier": 2.5},
        "unusual_for_reason": {"multiplier": 2, "reasons": {
            "late_delivery": {"kinds": ["voucher"], "max_amount": {"USD": 2500}}}},
    },
    "agent_weekly_minimum": 2,
    "queues": {"high": {"sla_hours": 24, "min_risk": 4}, "normal": {"sla_hours": 72, "min_risk": 0}},
})


def comp(n: int = 1, **kw) -> ManualCompensation:
    base = dict(compensation_id=f"C{n}", region="US", buyer_id=f"B{n}", agent_id="A1", team="T1",
                reason_code="damaged", kind="voucher", amount_minor=1000, currency="USD",
                order_amount_minor=10000, occurred_at=NOW)
    base.update(kw)
    return ManualCompensation(**base)


def test_draw_is_deterministic_uniform_and_keyed_by_seed():
    assert uniform_draw("s1", "C1") == uniform_draw("s1", "C1")
    assert uniform_draw("s1", "C1") != uniform_draw("s2", "C1")
    draws = [uniform_draw("s1", f"C{i}") for i in range(20000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.01


def test_no_risk_signal_gives_the_baseline():
    d = decide(POLICY, comp(), VETERAN)
    assert d.probability == 0.05 and d.risk == 1.0 and d.reasons == ("baseline",)
    assert d.queue == "normal" and not d.mandatory
    assert d.sampled == (d.draw < 0.05)


def test_amount_threshold_is_always_audited_in_the_top_queue():
    d = decide(POLICY, comp(amount_minor=20000, order_amount_minor=100000), VETERAN)
    assert d.probability == 1.0 and d.sampled and d.mandatory and d.reasons[0] == "amount_threshold"
    assert d.queue == "high"
    assert not decide(POLICY, comp(amount_minor=19999, order_amount_minor=100000), VETERAN).mandatory


def test_threshold_applies_per_currency_only():
    d = decide(POLICY, comp(amount_minor=10**9, currency="GBP", order_amount_minor=10**10), VETERAN)
    assert not d.mandatory


def test_each_boost_and_its_reason():
    cases = {
        "agent_error_rate": (comp(), AgentProfile(NOW - timedelta(days=400), 5000, (True,) * 8 + (False,) * 2,
                                                    sampled_this_week=99)),
        "new_agent": (comp(), AgentProfile(NOW - timedelta(days=3), 5000, (), sampled_this_week=99)),
        "amount_to_order": (comp(amount_minor=5001, order_amount_minor=10000), VETERAN),
        "error_prone_reason": (comp(reason_code="quality_issue"), VETERAN),
        "unusual_kind": (comp(reason_code="late_delivery", kind="full_refund", amount_minor=100), VETERAN),
        "unusual_amount": (comp(reason_code="late_delivery", amount_minor=2501), VETERAN),
    }
    expected = {"agent_error_rate": 3, "new_agent": 4, "amount_to_order": 2, "error_prone_reason": 2,
                "unusual_kind": 2, "unusual_amount": 2}
    for reason, (c, agent) in cases.items():
        d = decide(POLICY, c, agent)
        assert reason in d.reasons, reason
        assert d.risk == expected[reason], reason
        assert math.isclose(d.probability, 0.05 * expected[reason])


def test_boost_edges():
    # exactly 50 percent of the order is not "above 50 percent"
    assert "amount_to_order" not in decide(POLICY, comp(amount_minor=5000, order_amount_minor=10000),
                                           VETERAN).reasons
    assert "amount_to_order" not in decide(POLICY, comp(order_amount_minor=None), VETERAN).reasons
    # too few audits: an error rate is noise
    few = AgentProfile(NOW - timedelta(days=400), 5000, (False,) * 4, sampled_this_week=99)
    assert "agent_error_rate" not in decide(POLICY, comp(), few).reasons
    # new by count even when old by date
    by_count = AgentProfile(NOW - timedelta(days=400), 10, (), sampled_this_week=99)
    assert "new_agent" in decide(POLICY, comp(), by_count).reasons


def test_repeat_buyer_within_the_window_only():
    assert "repeat_buyer" in decide(POLICY, comp(), VETERAN, NOW - timedelta(days=30)).reasons
    assert "repeat_buyer" not in decide(POLICY, comp(), VETERAN, NOW - timedelta(days=31)).reasons
    assert "repeat_buyer" not in decide(POLICY, comp(), VETERAN, NOW + timedelta(days=1)).reasons


def test_boosts_multiply_and_cap_at_max_rate():
    risky = AgentProfile(NOW - timedelta(days=1), 0, (False,) * 10, sampled_this_week=99)
    d = decide(POLICY, comp(reason_code="quality_issue", amount_minor=9000), risky, NOW - timedelta(days=1))
    assert d.risk == 3 * 4 * 2 * 2 * 2.5
    assert d.probability == 1.0 and d.queue == "high"


def test_weekly_minimum_forces_the_first_items_of_a_week():
    fresh_week = AgentProfile(NOW - timedelta(days=400), 5000, (True,) * 20, sampled_this_week=1)
    d = decide(POLICY, comp(), fresh_week)
    assert d.mandatory and d.sampled and d.reasons[0] == "agent_weekly_minimum"


def test_switching_state_scales_the_probability():
    tight = AgentProfile(NOW - timedelta(days=400), 5000, (True,) * 20, SamplingState.TIGHTENED, 99)
    reduced = AgentProfile(NOW - timedelta(days=400), 5000, (True,) * 20, SamplingState.REDUCED, 99)
    assert decide(POLICY, comp(), tight).probability == 0.1
    assert decide(POLICY, comp(), reduced).probability == 0.025


def test_monetary_unit_mode_is_proportional_to_amount():
    mus = parse_policy({"region": "SG", "seed": "unit-test-seed-2", "baseline_rate": 0.01, "mode": "monetary_unit",
                        "monetary_unit_interval": {"SGD": 100000}})
    small = decide(mus, comp(amount_minor=1000, currency="SGD", order_amount_minor=None), VETERAN)
    big = decide(mus, comp(amount_minor=50000, currency="SGD", order_amount_minor=None), VETERAN)
    huge = decide(mus, comp(amount_minor=500000, currency="SGD", order_amount_minor=None), VETERAN)
    assert small.probability == 0.01 and big.probability == 0.5 and huge.probability == 1.0
    assert small.reasons[0] == "monetary_unit"
    # a currency without an interval falls back to the baseline
    assert decide(mus, comp(currency="USD"), VETERAN).reasons[0] == "baseline"


def test_empirical_inclusion_rates_match_the_configured_probabilities():
    """Over a large seeded population each stratum's sampled share is within 4 standard errors of p."""
    strata = {
        "baseline": (comp, VETERAN, None),
        "error_prone": (lambda n: comp(n, reason_code="quality_issue"), VETERAN, None),
        "repeat": (comp, VETERAN, NOW - timedelta(days=2)),
        "stacked": (lambda n: comp(n, reason_code="quality_issue", amount_minor=6000), VETERAN, None),
    }
    n = 40000
    for name, (make, agent, last) in strata.items():
        decisions = [decide(POLICY, replace(make(i), compensation_id=f"{name}-{i}"), agent, last)
                     for i in range(n)]
        p = decisions[0].probability
        assert all(d.probability == p for d in decisions)
        rate = sum(d.sampled for d in decisions) / n
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), (name, rate, p)
        # the Horvitz-Thompson count estimate recovers the population size
        assert abs(sum(1 / d.probability for d in decisions if d.sampled) - n) < 4 * math.sqrt(n * (1 - p) / p)


def test_replay_gives_the_same_sample():
    first = [decide(POLICY, comp(i), VETERAN).sampled for i in range(2000)]
    again = [decide(POLICY, comp(i), VETERAN).sampled for i in reversed(range(2000))][::-1]
    assert first == again


@given(amount=st.integers(1, 10**9), order=st.one_of(st.none(), st.integers(1, 10**9)),
       errors=st.lists(st.booleans(), max_size=30), days=st.integers(0, 1000), seen=st.integers(0, 10**6),
       state=st.sampled_from(list(SamplingState)), week=st.integers(0, 5))
def test_probability_is_always_a_probability(amount, order, errors, days, seen, state, week):
    agent = AgentProfile(NOW - timedelta(days=days), seen, tuple(errors), state, week)
    d = decide(POLICY, comp(amount_minor=amount, order_amount_minor=order), agent, NOW - timedelta(days=days))
    assert 0.0 < d.probability <= 1.0
    assert d.sampled == (d.draw < d.probability)
    assert d.risk >= 1.0
    assert not d.mandatory or d.probability == 1.0


RULES = SwitchingRules()


def test_switching_rules():
    n, t, r = SamplingState.NORMAL, SamplingState.TIGHTENED, SamplingState.REDUCED
    assert next_state(n, (True, False, True, False), RULES) is t  # 2 of the last 5 failed
    assert next_state(n, (False,) + (True,) * 5, RULES) is n  # old failure outside the window
    assert next_state(n, (True,) * 10, RULES) is r
    assert next_state(n, (True,) * 9, RULES) is n
    assert next_state(t, (False,) + (True,) * 4, RULES) is t
    assert next_state(t, (False,) + (True,) * 5, RULES) is n
    assert next_state(r, (True,) * 12, RULES) is r
    assert next_state(r, (True,) * 12 + (False,), RULES) is n
    assert next_state(n, (), RULES) is n


class _Agent:
    """An agent's remembered history and level, fed one audit at a time as the workflow records them."""

    def __init__(self, rules=RULES):
        self.rules, self.history, self.level = rules, [], InspectionLevel()

    def audit(self, results):
        seen = []
        for ok in results:
            self.history.append(ok)
            self.level = record_audit(self.level, self.history, self.rules)
            seen.append(self.level.state)
        return seen


def test_passes_under_tightened_do_not_count_toward_reduced():
    """The field case: tightened -> normal -> reduced after one audit under normal. With the run length of
    tightened -> normal as long as normal -> reduced, ten passes under tightened bought the way back to
    normal and, counted again, reduced inspection one audit later. ISO 2859-1 starts the run at normal."""
    t, n, r = SamplingState.TIGHTENED, SamplingState.NORMAL, SamplingState.REDUCED
    agent = _Agent(SwitchingRules(tightened_to_normal_passes=10, to_reduced_passes=10))
    seen = agent.audit([False, False] + [True] * 10)
    assert seen[1] is t and seen[-1] is n and agent.level == InspectionLevel(n, 0)
    agent.audit([True])
    assert agent.level == InspectionLevel(n, 1)  # was: reduced
    agent.audit([True] * 8)
    assert agent.level == InspectionLevel(n, 9)
    agent.audit([True])
    assert agent.level == InspectionLevel(r, 0)  # the tenth pass under normal


def test_default_rules_need_ten_passes_under_normal_after_tightened():
    n, t, r = SamplingState.NORMAL, SamplingState.TIGHTENED, SamplingState.REDUCED
    seen = _Agent().audit([False, False] + [True] * 5 + [True] * 10)
    assert seen[:2] == [n, t]
    assert seen[2:7] == [t, t, t, t, n]  # five passes under tightened: back to normal
    assert seen[7:16] == [n] * 9  # nine passes under normal are not enough (the old rule said reduced at 5)
    assert seen[16] is r


def test_failures_before_normal_began_do_not_tighten_again():
    """Two failures, then the run back to normal; one more failure (1 of the audits since normal began) does
    not send the agent back to tightened, although 2 of its last 5 audits failed overall."""
    n, t = SamplingState.NORMAL, SamplingState.TIGHTENED
    agent = _Agent(SwitchingRules(tightened_to_normal_passes=3))
    agent.audit([False, False, True, True, True])
    assert agent.level.state is n
    agent.audit([False])
    assert agent.level == InspectionLevel(n, 1)
    agent.audit([False])
    assert agent.level.state is t  # two failures under normal


def test_reduced_goes_back_to_normal_on_a_failure_and_starts_a_new_run():
    n, r = SamplingState.NORMAL, SamplingState.REDUCED
    agent = _Agent()
    agent.audit([True] * 10)
    assert agent.level == InspectionLevel(r, 0)
    agent.audit([True] * 7)
    assert agent.level == InspectionLevel(r, 7)
    agent.audit([False])
    assert agent.level == InspectionLevel(n, 0)
    agent.audit([True] * 9)
    assert agent.level == InspectionLevel(n, 9)  # the passes under reduced do not shorten the new run
    agent.audit([True])
    assert agent.level.state is r


def test_a_level_run_longer_than_the_remembered_history_uses_all_of_it():
    level = record_audit(InspectionLevel(SamplingState.NORMAL, 500), (True,) * 10, RULES)
    assert level.state is SamplingState.REDUCED


@given(st.lists(st.booleans(), max_size=60))
def test_replay_is_the_same_as_recording_one_audit_at_a_time(results):
    agent = _Agent()
    agent.audit(results)
    assert replay_levels(results, RULES) == agent.level
    assert 0 <= agent.level.audits_at_level <= len(results)


def test_week_start_is_monday():
    assert week_start(datetime(2026, 11, 22).date()).isoformat() == "2026-11-16"  # a Sunday
    assert week_start(datetime(2026, 11, 16).date()).isoformat() == "2026-11-16"


def test_capacity_keeps_the_highest_risk():
    cands = [Candidate("old-low", 1.0, True), Candidate("old-high", 5.0, True), Candidate("new-mid", 2.0, False),
             Candidate("new-low", 1.0, False)]
    kept, dropped = fill_queue_day(3, 1, cands)
    assert [c.key for c in kept] == ["old-high", "new-mid"]
    assert [c.key for c in dropped] == ["old-low", "new-low"]  # equal risk: the one already there ranks first
    kept, dropped = fill_queue_day(None, 100, cands)
    assert len(kept) == 4 and not dropped
    kept, dropped = fill_queue_day(1, 5, cands)
    assert not kept and len(dropped) == 4


def test_effective_probability():
    assert effective_probability(0.2, 3, 4) == 0.2 * 3 / 4
    assert effective_probability(0.2, 4, 4) == 0.2
    assert effective_probability(0.2, 0, 0) == 0.2
