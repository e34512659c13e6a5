"""Report plumbing of the web layer: parameters, CSV safety, server-side charts."""

import csv
import io
from datetime import date

import pytest

from services.audit_sampler.web.charts import Point, bar_chart, trend_chart
from services.audit_sampler.web.reporting import parse_report_query, to_csv
from shared.http import Problem


def test_report_query_cuts_the_period_in_the_region_time_zone():
    q = parse_report_query("sg", "week", "2024-05-15")
    assert q.region.code == "SG"
    assert (q.period.start, q.period.end) == (date(2024, 5, 13), date(2024, 5, 20))
    assert q.period.start_utc.isoformat() == "2024-05-12T16:00:00+00:00"


def test_report_query_defaults_to_this_month():
    q = parse_report_query("US", None, None)
    assert q.period.kind.value == "month" and q.period.start.day == 1


def test_report_query_names_every_bad_field():
    with pytest.raises(Problem) as caught:
        parse_report_query("ZZ", "quarter", "2024-13-01")
    assert caught.value.status == 422
    assert {e["field"] for e in caught.value.errors or []} == {"region", "period", "date"}
    with pytest.raises(Problem) as missing:
        parse_report_query(None, "day", None)
    assert [e["field"] for e in missing.value.errors or []] == ["region"]


def test_csv_cells_cannot_become_spreadsheet_formulas():
    text = to_csv(["key", "value"], [["=HYPERLINK(\"http://x\")", 1], ["-1+2", None], ["agent-1", 0.5]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1][0].startswith("'=") and rows[2] == ["'-1+2", ""] and rows[3] == ["agent-1", "0.5"]


def test_charts_escape_labels_and_draw_intervals():
    svg = str(trend_chart([Point("<script>", 0.9, 0.85, 0.95), Point("W2", None)], title="t&t"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "t&amp;t" in svg
    assert svg.count('class="ci"') == 1 and "no audits" in svg
    bars = str(bar_chart([Point("amount_correct", 0.2, 0.1, 0.3)], title="rates"))
    assert "amount_correct" in bars and 'class="bar"' in bars and "20.0%" in bars
    assert "nothing to show" in str(bar_chart([], title="empty"))
