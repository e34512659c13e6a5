"""The dashboard's SVG charts and number formats: pure functions, checked as documents (well-formed SVG, no
inline styles or scripts the pages' CSP would refuse, data escaped) and as numbers (ticks, money exponent)."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.insights.web import charts
from services.insights.web import format as fmt

NS = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    root = ET.fromstring(str(markup))
    assert root.tag == f"{NS}svg" and root.get("role") == "img"
    for element in root.iter():
        assert "style" not in element.attrib and not element.tag.endswith("script")
    return root


def count(root: ET.Element, tag: str, css: str | None = None) -> int:
    return sum(1 for e in root.iter(f"{NS}{tag}") if css is None or css in (e.get("class") or "").split())


@given(st.floats(-1e12, 1e12), st.floats(-1e12, 1e12))
def test_ticks_cover_the_range_in_round_steps(a, b):
    ticks = charts.nice_ticks(a, b)
    lo, hi = min(a, b), max(a, b)
    assert ticks[0] <= lo + 1e-6 * max(1.0, abs(lo)) and ticks[-1] >= hi - 1e-6 * max(1.0, abs(hi))
    assert 2 <= len(ticks) <= 7
    steps = [t2 - t1 for t1, t2 in itertools.pairwise(ticks)]
    assert all(s > 0 and abs(s - steps[0]) <= 1e-6 * steps[0] for s in steps)  # evenly spaced, increasing


def test_line_chart_draws_points_gaps_and_intervals():
    svg = charts.line_chart(["2026-09", "2026-10", "2026-11"],
                            [charts.Series("accuracy", [0.9, None, 0.8], lows=[0.85, None, 0.6],
                                           highs=[0.95, None, 0.9])],
                            title="Accuracy", fmt=fmt.pct, y_max=1.0)
    root = parse(svg)
    assert count(root, "circle", "dot") == 2 and count(root, "line", "ci") == 2
    assert count(root, "polyline") == 0  # the gap splits the line: no run of two points
    titles = [t.text for t in root.iter(f"{NS}title")]
    assert "accuracy, 2026-11: 80.0% (95% CI 60.0% to 90.0%)" in titles


def test_labels_and_names_are_escaped():
    evil = '<script>alert("x")</script>'
    root = parse(charts.bar_chart([evil], [charts.Series(evil, [3])], title=evil, fmt=str, marks={0: evil}))
    assert any(evil in (t.text or "") for t in root.iter(f"{NS}title"))  # as text, not as an element
    assert count(root, "script") == 0
    parse(charts.hbar_chart([(evil, 2.0, 1.0)], title=evil, fmt=str))
    parse(charts.sparkline([1, 2], title=evil, marks={1: evil}))


def test_bar_chart_marks_spikes_and_skips_future_days():
    root = parse(charts.bar_chart(["1", "2", "3"], [charts.Series("tickets", [4, 9, None], "s2"),
                                                    charts.Series("compensated", [1, 2, None])],
                                  title="t", fmt=str, marks={1: "spike in damaged"}))
    assert count(root, "rect", "bar") == 4 and count(root, "path", "spike-mark") == 1


def test_empty_charts_say_so():
    assert "nothing measured" in charts.line_chart(["a"], [charts.Series("x", [None])], title="t", fmt=str)
    assert "no tickets" in charts.bar_chart([], [], title="t", fmt=str, empty="no tickets")
    parse(charts.sparkline([], title="t"))
    with pytest.raises(ValueError, match="values for"):
        charts.line_chart(["a", "b"], [charts.Series("x", [1.0])], title="t", fmt=str)


def test_burndown_draws_used_pace_limit_and_projection():
    days = [str(d) for d in range(1, 31)]
    used = [1000 * d if d <= 10 else None for d in range(1, 31)]
    pace = [3000 * d // 30 * 10 for d in range(1, 31)]
    root = parse(charts.burndown_chart(days, used, pace=pace, limit=30_000, projected_end=30_000, title="b",
                                       fmt=str))
    assert count(root, "circle", "used") == 10
    assert count(root, "line", "limit") == 1 and count(root, "line", "projection") == 2  # the line and its key
    pace_line = next(e for e in root.iter(f"{NS}polyline") if "pace" in e.get("class", ""))
    assert len(pace_line.get("points", "").split()) == 30
    no_limit = parse(charts.burndown_chart(days, used, pace=None, limit=None, projected_end=None, title="b",
                                           fmt=str))
    assert count(no_limit, "line", "limit") == 0 and count(no_limit, "polyline", "pace") == 0


def test_money_in_the_currency_exponent():
    assert fmt.money(1_250_000, "IDR") == "1,250,000 IDR"
    assert fmt.money(1_250_000, "VND") == "1,250,000 VND"
    assert fmt.money(1250, "SGD") == "12.50 SGD" and fmt.money(-5, "USD") == "-0.05 USD"
    assert fmt.money(None, "USD") == fmt.DASH
    assert fmt.money_short(1_500_000, "IDR") == "1.5M" and fmt.money_short(150_000, "USD") == "1.5k"
    assert fmt.pct(None) == fmt.DASH and fmt.pct(0.5833) == "58.3%"
    assert fmt.duration(1800) == "30 min" and fmt.duration(7200) == "2.0 h" and fmt.duration(3 * 86400) == "3.0 d"
