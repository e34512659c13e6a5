"""Corrective actions (issue 14): validation names each field, status changes follow the rules, and the
before/after effect reads a known change (and no change) right, with Newcombe's interval from shared.stats."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.audit_sampler.domain import actions as domain
from shared import stats

TODAY = date(2026, 11, 20)


def action(**changes) -> domain.ActionInput:
    base = dict(region="SG", source="finding", source_ref="item 17", target_type="agent", target_id="A-7",
                kind="coaching", owner="lee", due_on=TODAY + timedelta(days=14), window_days=28, note=None)
    return domain.ActionInput(**{**base, **changes})


def test_a_good_action_has_no_errors():
    assert domain.action_errors(action(), TODAY) == []


@pytest.mark.parametrize(("changes", "field"), [
    ({"source": "rumour"}, "source"), ({"target_type": "planet"}, "target_type"), ({"target_id": ""}, "target_id"),
    ({"kind": "shouting"}, "kind"), ({"owner": "a b"}, "owner"), ({"due_on": None}, "due_on"),
    ({"due_on": TODAY - timedelta(days=1)}, "due_on"), ({"window_days": 0}, "window_days"),
    ({"note": "x" * 2001}, "note"), ({"source_ref": "two\nlines"}, "source_ref"),
])
def test_each_bad_field_is_named(changes, field):
    assert [e["field"] for e in domain.action_errors(action(**changes), TODAY)] == [field]


def test_done_and_cancelled_are_final():
    assert domain.transition_error("open", "done") is None
    assert domain.transition_error("in_progress", "open") is None
    assert "cannot become" in domain.transition_error("done", "open")
    assert "cannot become" in domain.transition_error("cancelled", "in_progress")
    assert domain.transition_error("open", "paused") is not None


def test_a_known_drop_in_error_rate_reads_as_a_fall_with_an_interval_below_zero():
    e = domain.effect(before_errors=8, before_audits=20, after_errors=1, after_audits=20, window_days=28,
                      complete=True)
    assert e.before_rate == 0.4 and e.after_rate == 0.05
    assert e.difference == pytest.approx(-0.35)
    assert e.low is not None and e.high is not None and e.low < -0.35 < e.high < 0
    assert e.reading.startswith("error rate fell")
    # the interval is shared.stats' Newcombe interval, not a copy
    shared = stats.newcombe_interval(1, 20, 8, 20)
    assert (e.low, e.high) == (shared.low, shared.high)


def test_no_change_and_too_little_data_are_said_so():
    same = domain.effect(before_errors=3, before_audits=20, after_errors=3, after_audits=20, window_days=28,
                         complete=False)
    assert same.low < 0 < same.high and same.reading.startswith("no clear change")
    assert "still running" in same.reading
    empty = domain.effect(before_errors=0, before_audits=0, after_errors=1, after_audits=5, window_days=28,
                          complete=True)
    assert empty.difference is None and empty.reading.startswith("not measurable")


def test_windows_count_from_done_and_stop_at_now():
    opened = datetime(2026, 11, 1, tzinfo=UTC)
    done = datetime(2026, 11, 5, tzinfo=UTC)
    w = domain.windows(opened_at=opened, done_at=done, window_days=10, now=datetime(2026, 11, 10, tzinfo=UTC))
    assert (w.before_start, w.before_end) == (opened - timedelta(days=10), opened)
    assert (w.after_start, w.after_end, w.complete) == (done, datetime(2026, 11, 10, tzinfo=UTC), False)
    assert domain.windows(opened_at=opened, done_at=None, window_days=10, now=opened + timedelta(days=30)).complete
