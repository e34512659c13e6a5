"""How the service shapes root causes and stored spike alerts (pure): exact mix/rate in the API's form,
episodes and their open state, stable alert ids, the volume pre-filter, and the event's bounds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.insights.domain.root_causes import explain_change
from services.insights.domain.spike_watch import (
    alert_id,
    candidate_floor,
    episodes_view,
    local_midnight,
    open_counts,
)
from services.insights.domain.spikes import DetectorParams
from shared.contracts import events as ev


def _row(key: str, total: int, compensated: int, amount: int = 0) -> dict[str, int]:
    return {"tickets": total, "compensated": compensated, "comps": compensated, "amount_minor": amount}


def test_explain_change_gives_exact_parts_that_sum_to_the_change():
    previous = {"C1": _row("C1", 10, 2, 2000), "C2": _row("C2", 10, 6, 6000)}
    current = {"C1": _row("C1", 30, 6, 6000), "C2": _row("C2", 10, 6, 6000), "C3": _row("C3", 5, 5, 500)}
    out = explain_change(previous, current, top=1)
    rate = out["ratios"]["compensation_rate"]
    change, mix, rest = (Fraction(rate["exact"][k]) for k in ("change", "mix", "rate"))
    assert change == Fraction(17, 45) - Fraction(8, 20) and mix + rest == change
    assert sum(Fraction(s["exact"]["total"]) for s in rate["segments"]) == change
    new = next(s for s in rate["segments"] if s["key"] == "C3")
    assert new["presence"] == "new" and new["exact"]["rate"] == "0"  # an entering key is all mix
    movers = out["movers"]
    assert [m["key"] for m in movers["top"]] == ["C1"] and movers["others"]["values"] == 2
    assert movers["top"][0]["ticket_contribution"] == "0.800000"  # 20 of the 25 more tickets


@given(st.dictionaries(st.sampled_from("abcdef"), st.tuples(st.integers(1, 500), st.integers(0, 500)), min_size=1),
       st.dictionaries(st.sampled_from("abcdef"), st.tuples(st.integers(1, 500), st.integers(0, 500)), min_size=1))
def test_mix_plus_rate_is_the_change_for_any_tallies(prev, cur):
    def rows(d):  # type: ignore[no-untyped-def]
        return {k: _row(k, t, min(c, t), 7 * c) for k, (t, c) in d.items()}

    for ratio in explain_change(rows(prev), rows(cur))["ratios"].values():
        assert Fraction(ratio["exact"]["mix"]) + Fraction(ratio["exact"]["rate"]) == Fraction(ratio["exact"]["change"])


def test_a_period_without_tickets_has_no_ratio_to_explain():
    out = explain_change({}, {"C1": _row("C1", 3, 1)})
    assert "undefined" in out["ratios"]["compensation_rate"]
    assert out["movers"]["ticket_change"] == 3 and out["movers"]["ticket_change_ratio"] is None


def test_compensations_without_decisions_leave_the_strategy_ratio_undefined_not_wrong():
    orphan = {**_row("s2", 0, 0), "compensated": 1}  # a compensation of a strategy that decided nothing
    out = explain_change({"s1": _row("s1", 4, 1)}, {"s1": _row("s1", 4, 2), "s2": orphan})
    assert "no denominator" in out["ratios"]["compensation_rate"]["undefined"]


def _stored(key: str, day: date, kind: str = "spike", dimension: str = "reason", tz: str = "Asia/Singapore"):  # type: ignore[no-untyped-def]
    start = local_midnight(day, tz).astimezone(UTC)
    return {"region": "SG", "dimension": dimension, "series_key": key, "kind": kind, "day": day,
            "alert_id": alert_id("SG", dimension, key, day, kind), "bucket_start": start,
            "bucket_end": local_midnight(day + timedelta(days=1), tz).astimezone(UTC), "observed": 70,
            "expected": 20.0, "lower_edge": 10.0, "upper_edge": 31.0, "sigma": 5.0, "z": 10.0, "cusum": 1.0,
            "contributors": [], "detected_at": datetime(2026, 11, 20, tzinfo=UTC)}


def test_consecutive_days_are_one_episode_open_while_the_last_is_yesterday():
    today = date(2026, 11, 20)
    rows = [_stored("damaged", date(2026, 11, 18)), _stored("damaged", date(2026, 11, 19), "shift"),
            _stored("damaged", date(2026, 11, 19)),  # the same day stored as both kinds: once, as the spike
            _stored("lost_in_transit", date(2026, 11, 10)), _stored("S1", date(2026, 11, 19), dimension="seller")]
    episodes = episodes_view(rows, "Asia/Singapore", today)
    damaged = next(e for e in episodes if e["key"] == "damaged")
    assert (damaged["first_day"], damaged["last_day"], damaged["days"], damaged["open"]) == (
        "2026-11-18", "2026-11-19", 2, True)
    assert [a["kind"] for a in damaged["alerts"]] == ["spike", "spike"]
    assert not next(e for e in episodes if e["key"] == "lost_in_transit")["open"]
    assert open_counts(rows, "Asia/Singapore", today) == {"reason": 1, "carrier": 0, "seller": 1}
    assert [e["key"] for e in episodes_view(rows, "Asia/Singapore", today, open_only=True)] == ["S1", "damaged"]


def test_a_local_day_across_a_dst_change_is_one_bucket():
    day = date(2026, 11, 1)  # New York falls back: a 25-hour day
    row = _stored("damaged", day, tz="America/New_York")
    (episode,) = episodes_view([row], "America/New_York", day + timedelta(days=1))
    assert episode["first_day"] == episode["last_day"] == "2026-11-01" and episode["open"]


def test_alert_ids_are_stable_distinct_and_valid_identifiers():
    a = alert_id("SG", "seller", "S-1", date(2026, 11, 19), "spike")
    assert a == alert_id("SG", "seller", "S-1", date(2026, 11, 19), "spike")
    assert a != alert_id("SG", "seller", "S-1", date(2026, 11, 19), "shift")
    assert a != alert_id("SG", "carrier", "S-1", date(2026, 11, 19), "spike")
    assert len(a) <= 128 and a.replace("-", "").isalnum()


def test_the_pre_filter_matches_the_volume_guard():
    assert candidate_floor(DetectorParams()) == 20  # 5 a day on one weekday for 4 weeks
    assert candidate_floor(DetectorParams(min_expected=0)) == 1


def test_the_event_refuses_unbounded_numbers():
    base = dict(alert_id="spk-1", dimension="reason", key="damaged", kind="spike", day=date(2026, 11, 19),
                bucket_start=datetime(2026, 11, 18, 16, tzinfo=UTC), bucket_end=datetime(2026, 11, 19, 16, tzinfo=UTC),
                observed=70, expected=20.5, lower=11.0, upper=31.2, z=9.8,
                episode_start=datetime(2026, 11, 18, 16, tzinfo=UTC))
    assert ev.SpikeDetected(**base).expected == 20.5
    for field, bad in (("expected", float("inf")), ("upper", -1.0), ("z", float("nan")), ("observed", -1),
                       ("expected", 1e13), ("key", "a\nb"), ("dimension", "strategy")):
        with pytest.raises(ValidationError):
            ev.SpikeDetected(**{**base, field: bad})
