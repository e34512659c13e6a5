"""Root causes: top movers with exact contributions, the exact mix/rate split of a ratio's change (Kitagawa,
midpoint weights), and the contributors to a spike. Hand-computed cases plus hypothesis laws."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.insights.domain.movers import (
    Measure,
    Presence,
    RatioPart,
    Tally,
    UndefinedRatio,
    as_decimal,
    decompose_ratio,
    spike_contributors,
    top_movers,
)

# --- top movers -----------------------------------------------------------------------------------------


def test_top_movers_rank_by_absolute_change_and_carry_exact_contributions():
    previous = {"late_delivery": Tally(100, 50_000), "lost_parcel": Tally(40, 90_000), "damaged": Tally(10, 3_000),
                "wrong_item": Tally(5, 1_000)}
    current = {"late_delivery": Tally(160, 80_000), "lost_parcel": Tally(30, 70_000), "damaged": Tally(12, 3_600),
               "missing_parts": Tally(3, 900)}
    report = top_movers(previous, current, top=2)
    assert report.previous_total == Tally(155, 144_000) and report.current_total == Tally(205, 154_500)
    assert report.count_change == 50 and report.amount_change_minor == 10_500
    assert [m.key for m in report.movers] == ["late_delivery", "lost_parcel"]
    late, lost = report.movers
    assert late.count_change == 60 and late.count_contribution == Fraction(6, 5)  # 60 of +50: others offset it
    assert lost.count_change == -10 and lost.count_contribution == Fraction(-1, 5)
    assert late.amount_contribution == Fraction(30_000, 10_500)
    assert late.previous_share == Fraction(100, 155) and late.current_share == Fraction(160, 205)
    assert report.others is not None and report.others.values == 3
    assert report.others.count_change == 0 and report.others.amount_change_minor == 500
    assert report.count_change_ratio == Fraction(50, 155)
    assert as_decimal(late.count_contribution) == Decimal("1.2000")


def test_movers_by_amount_and_presence_of_new_and_gone_values():
    previous = {"S-1": Tally(10, 1_000), "S-2": Tally(5, 9_000)}
    current = {"S-1": Tally(30, 2_000), "S-3": Tally(1, 20_000)}
    report = top_movers(previous, current, top=3, measure=Measure.AMOUNT)
    assert [(m.key, m.presence) for m in report.movers] == [
        ("S-3", Presence.NEW), ("S-2", Presence.GONE), ("S-1", Presence.BOTH)]
    assert report.others is None


def test_movers_when_nothing_changed_in_total_have_no_contribution_shares():
    report = top_movers({"a": Tally(5), "b": Tally(5)}, {"a": Tally(8), "b": Tally(2)})
    assert report.count_change == 0
    assert all(m.count_contribution is None for m in report.movers)
    assert top_movers({}, {}).movers == () and top_movers({}, {}).count_change_ratio is None


def test_movers_refuse_bad_input():
    with pytest.raises(ValueError):
        Tally(-1)
    with pytest.raises(TypeError):
        Tally(1, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Tally(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        top_movers({}, {}, top=0)


tallies = st.dictionaries(st.sampled_from([f"v{i}" for i in range(12)]),
                          st.builds(Tally, st.integers(0, 10_000), st.integers(-10**9, 10**9)), max_size=12)


@given(tallies, tallies, st.integers(1, 12), st.sampled_from(Measure))
def test_listed_movers_and_the_rest_add_up_to_the_total_change_exactly(previous, current, top, measure):
    report = top_movers(previous, current, top=top, measure=measure)
    rest_count = report.others.count_change if report.others else 0
    rest_amount = report.others.amount_change_minor if report.others else 0
    assert sum(m.count_change for m in report.movers) + rest_count == report.count_change
    assert sum(m.amount_change_minor for m in report.movers) + rest_amount == report.amount_change_minor
    if report.count_change:
        shares = [m.count_contribution for m in report.movers]
        rest = report.others.count_contribution if report.others else 0
        assert sum(shares, Fraction(0)) + rest == 1  # type: ignore[operator]
    assert len(report.movers) <= top
    first = [abs(m.count_change if measure is Measure.COUNT else m.amount_change_minor) for m in report.movers]
    assert first == sorted(first, reverse=True)


# --- ratio decomposition --------------------------------------------------------------------------------


def test_decomposition_of_a_compensation_rate_by_hand():
    # A: 10 of 100 tickets compensated -> 30 of 300; B: 40 of 100 -> 20 of 100. Rate 1/4 -> 1/8.
    previous = {"A": RatioPart(10, 100), "B": RatioPart(40, 100)}
    current = {"A": RatioPart(30, 300), "B": RatioPart(20, 100)}
    d = decompose_ratio(previous, current)
    assert (d.previous_rate, d.current_rate, d.change) == (Fraction(1, 4), Fraction(1, 8), Fraction(-1, 8))
    effects = {e.key: e for e in d.segments}
    # mix = dw * mean rate; rate = dr * mean weight
    assert (effects["A"].mix, effects["A"].rate) == (Fraction(1, 40), 0)
    assert (effects["B"].mix, effects["B"].rate) == (Fraction(-3, 40), Fraction(-3, 40))
    assert (d.mix, d.rate) == (Fraction(-1, 20), Fraction(-3, 40))
    assert [e.key for e in d.segments] == ["B", "A"]  # largest contribution first


def test_segments_entering_or_leaving_change_the_mix_only():
    previous = {"carrier:old": RatioPart(5, 50), "carrier:ninja": RatioPart(10, 50)}
    current = {"carrier:ninja": RatioPart(10, 50), "carrier:new": RatioPart(25, 50)}
    d = decompose_ratio(previous, current)
    effects = {e.key: e for e in d.segments}
    assert effects["carrier:new"].presence is Presence.NEW and effects["carrier:new"].rate == 0
    assert effects["carrier:new"].mix == Fraction(1, 2) * Fraction(1, 2)  # w1 * r1
    assert effects["carrier:old"].presence is Presence.GONE and effects["carrier:old"].rate == 0
    assert effects["carrier:old"].mix == -Fraction(1, 2) * Fraction(1, 10)  # -w0 * r0
    assert effects["carrier:old"].current_rate is None
    assert d.mix + d.rate == d.change == Fraction(35, 100) - Fraction(15, 100)


def test_cost_per_ticket_in_minor_units_stays_exact():
    # IDR has no minor digits: amounts are whole rupiah; the ratio is rupiah per ticket.
    d = decompose_ratio({"late": RatioPart(1_000_000, 3), "lost": RatioPart(500_000, 7)},
                        {"late": RatioPart(1_200_001, 3), "lost": RatioPart(400_000, 11)})
    assert d.mix + d.rate == d.change == Fraction(1_600_001, 14) - Fraction(1_500_000, 10)
    assert as_decimal(d.change, 2) == Decimal("-35714.21")


def test_decomposition_refuses_what_it_cannot_explain():
    with pytest.raises(UndefinedRatio, match="previous"):
        decompose_ratio({}, {"a": RatioPart(1, 2)})
    with pytest.raises(UndefinedRatio, match="current"):
        decompose_ratio({"a": RatioPart(1, 2)}, {"a": RatioPart(0, 0)})
    with pytest.raises(ValueError, match="no denominator"):
        decompose_ratio({"a": RatioPart(1, 2), "b": RatioPart(3, 0)}, {"a": RatioPart(1, 2)})
    with pytest.raises(ValueError):
        RatioPart(1, -1)
    with pytest.raises(TypeError):
        RatioPart(Fraction(1, 2), 1)  # type: ignore[arg-type]


@st.composite
def periods(draw):
    keys = draw(st.lists(st.sampled_from([f"s{i}" for i in range(10)]), min_size=1, max_size=10, unique=True))

    def part():
        d = draw(st.integers(0, 5_000))
        return RatioPart(draw(st.integers(0, d)) if d else 0, d)

    previous = {k: part() for k in keys if draw(st.booleans())}
    current = {k: part() for k in keys if draw(st.booleans())}
    previous.setdefault("base", RatioPart(draw(st.integers(0, 10)), 10))
    current.setdefault("base", RatioPart(draw(st.integers(0, 10)), 10))
    return previous, current


@given(periods())
def test_mix_and_rate_effects_sum_exactly_to_the_change(pair):
    previous, current = pair
    d = decompose_ratio(previous, current)
    assert d.mix + d.rate == d.change == d.current_rate - d.previous_rate
    assert sum((e.total for e in d.segments), Fraction(0)) == d.change
    assert sum((e.previous_weight for e in d.segments), Fraction(0)) == 1
    assert sum((e.current_weight for e in d.segments), Fraction(0)) == 1


@given(periods(), st.randoms(use_true_random=False))
def test_relabelling_segments_relabels_the_effects_and_nothing_else(pair, rnd):
    previous, current = pair
    keys = sorted(set(previous) | set(current))
    shuffled = keys[:]
    rnd.shuffle(shuffled)
    rename = dict(zip(keys, (f"x-{k}" for k in shuffled), strict=True))
    d = decompose_ratio(previous, current)
    r = decompose_ratio({rename[k]: v for k, v in previous.items()}, {rename[k]: v for k, v in current.items()})
    assert (r.change, r.mix, r.rate) == (d.change, d.mix, d.rate)
    assert {rename[e.key]: (e.mix, e.rate) for e in d.segments} == {e.key: (e.mix, e.rate) for e in r.segments}


@given(periods())
def test_swapping_the_periods_negates_every_effect(pair):
    previous, current = pair
    d, back = decompose_ratio(previous, current), decompose_ratio(current, previous)
    forward = {e.key: (e.mix, e.rate) for e in d.segments}
    assert {e.key: (-e.mix, -e.rate) for e in back.segments} == forward


@given(periods(), st.integers(2, 50))
def test_scaling_a_period_changes_no_effect(pair, k):
    previous, current = pair
    scaled = {key: RatioPart(p.numerator * k, p.denominator * k) for key, p in current.items()}
    d, s = decompose_ratio(previous, current), decompose_ratio(previous, scaled)
    assert [(e.key, e.mix, e.rate) for e in d.segments] == [(e.key, e.mix, e.rate) for e in s.segments]


@given(periods())
def test_a_segment_whose_rate_did_not_change_has_no_rate_effect(pair):
    previous, current = pair
    current = dict(current)
    for key, p in previous.items():
        if p.denominator and key in current and current[key].denominator:
            current[key] = RatioPart(p.numerator * 3, p.denominator * 3)  # same rate, other volume
    for e in decompose_ratio(previous, current).segments:
        if e.presence is Presence.BOTH:
            assert e.rate == 0


@given(st.dictionaries(st.sampled_from("abcdef"), st.tuples(st.integers(1, 1000), st.integers(1, 1000)),
                       min_size=1), st.integers(0, 7))
def test_equal_rates_everywhere_leave_no_mix_effect_and_a_pure_mix_change_no_rate_effect(denoms, num):
    # every segment at rate num/7 in both periods: the change is 0 and so is the total mix effect
    previous = {k: RatioPart(num * d0, 7 * d0) for k, (d0, _) in denoms.items()}
    current = {k: RatioPart(num * d1, 7 * d1) for k, (_, d1) in denoms.items()}
    d = decompose_ratio(previous, current)
    assert d.change == 0 and d.mix == 0 and d.rate == 0
    # same shares of the denominator in both periods: no mix effect anywhere
    same_mix = {k: RatioPart(min(num, d0), d0) for k, (d0, _) in denoms.items()}
    doubled = {k: RatioPart(d0 if num % 2 else 0, d0) for k, (d0, _) in denoms.items()}
    m = decompose_ratio(same_mix, doubled)
    assert all(e.mix == 0 for e in m.segments) and m.rate == m.change


# --- spike contributors ---------------------------------------------------------------------------------


def test_spike_contributors_name_the_values_that_carry_the_excess():
    baseline = [{"C-ninja": 10, "C-jnt": 20, "C-dhl": 5}, {"C-ninja": 12, "C-jnt": 18, "C-dhl": 7}]
    at = {"C-ninja": 51, "C-jnt": 19, "C-dhl": 2, "C-new": 4}
    top = spike_contributors(at, baseline, top=2)
    assert [c.key for c in top] == ["C-ninja", "C-new"]
    ninja = top[0]
    assert (ninja.observed, ninja.expected, ninja.excess) == (51, 11, 40)
    # net excess: observed 76 - expected (11 + 19 + 6) = 40; C-jnt and C-dhl fell
    assert ninja.share == 1 and top[1].share == Fraction(4, 40)
    assert spike_contributors({"a": 1}, [{"a": 5}]) == ()


@given(st.lists(st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 500)), min_size=1, max_size=8),
       st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 500)))
def test_contributor_shares_are_exact_and_ranked(baseline, at):
    everyone = spike_contributors(at, baseline, top=7)
    assert [c.excess for c in everyone] == sorted((c.excess for c in everyone), reverse=True)
    assert all(c.excess > 0 and c.excess == c.observed - c.expected for c in everyone)
    net = sum(at.values()) - Fraction(sum(sum(b.values()) for b in baseline), len(baseline))
    if net > 0:
        assert all(c.share == c.excess / net for c in everyone)
    else:
        assert all(c.share is None for c in everyone)


def test_contributors_refuse_bad_input():
    with pytest.raises(ValueError):
        spike_contributors({"a": 1}, [])
    with pytest.raises(ValueError):
        spike_contributors({"a": -1}, [{"a": 1}])
    with pytest.raises(ValueError):
        spike_contributors({"a": 1}, [{"a": 1}], top=0)
