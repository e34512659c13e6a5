"""Backtest over the fixture file, checked against totals computed by hand (see the comments)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.auto_comp.__main__ import main
from services.auto_comp.backtest import BacktestInputError, read_tickets
from services.auto_comp.domain.backtest import run_backtest
from services.auto_comp.domain.loader import load_strategies

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "auto_comp"

# SG, by hand:
#   T1 B1 4 days late (25 Feb -> 1 Mar SGT), 100.00: tier 3-5, 10% = 10.00
#   T2 B1 7 days late, 50.00: tier 6+, 20% = 10.00 (floor 5.00 not reached)
#   T3 B1 3rd compensation within 30 days: abuse guard (max 2)
#   T4 B2 2 days late: not eligible (days_late >= 3)
#   T5 B2 10 days late, 300.00: 20% = 60.00 -> cap 30.00; occurred 31 Mar 17:00 UTC = 1 Apr SGT -> 2026-04
#   T6 B3 damaged: in the 30% holdout (bucket 2938 < 3000)
#   T7 B4 damaged, affected 10.00: 15% = 1.50 -> floor 3.00
#   T1 again: a replay, ignored
#   => 7 tickets, 6 matched, 4 compensations, 53.00 total, 13.25 average; March 23.00, April 30.00
# ID: T8 fixed 25000 IDR; T9 order 50000 < min 100000: not eligible
EXPECTED_SG = {
    "tickets": 7, "matched": 6, "compensations": 4, "total_minor": 5_300, "average_minor": 1_325,
    "removed_by_abuse_guard": 1, "removed_by_holdout": 1, "removed_one_per_order_and_scenario": 0,
    "not_eligible_by_rule": {"match.thresholds.days_late": 1},
}


@pytest.fixture(scope="module")
def strategies():
    return load_strategies(FIXTURES / "strategies.yaml")


@pytest.mark.parametrize("events", ["tickets.jsonl", "tickets.csv"])
def test_backtest_totals_match_hand_computation(strategies, events):
    reports = {r.region: r.as_dict() for r in run_backtest(strategies, read_tickets(FIXTURES / events))}
    sg = reports["SG"]
    for key, value in EXPECTED_SG.items():
        assert sg[key] == value, key
    assert sg["total"] == "53.00 SGD" and sg["average"] == "13.25 SGD"
    assert {k: (v["count"], v["total_minor"]) for k, v in sg["by_scenario"].items()} == {
        "late_delivery": (3, 5_000), "damaged_item": (1, 300)}
    assert {k: (v["count"], v["total_minor"]) for k, v in sg["by_tier"].items()} == {
        "sg-late/late_3_5": (1, 1_000), "sg-late/late_6_plus": (2, 4_000), "sg-damaged/single": (1, 300)}
    assert {k: v["total_minor"] for k, v in sg["budget_by_period"].items()} == {"2026-03": 2_300, "2026-04": 3_000}
    idr = reports["ID"]
    assert (idr["tickets"], idr["compensations"], idr["total_minor"], idr["average"]) == (2, 1, 25_000, "25000 IDR")
    assert idr["not_eligible_by_rule"] == {"match.order_value.min": 1}


def test_cli_json_output(capsys):
    code = main(["backtest", "--strategies", str(FIXTURES / "strategies.yaml"),
                 "--events", str(FIXTURES / "tickets.jsonl"), "--format", "json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    sg = next(r for r in out["regions"] if r["region"] == "SG")
    assert sg["total_minor"] == 5_300


def test_cli_text_output(capsys):
    assert main(["backtest", "--strategies", str(FIXTURES / "strategies.yaml"),
                 "--events", str(FIXTURES / "tickets.csv")]) == 0
    out = capsys.readouterr().out
    assert "== SG (SGD)" in out and "total cost: 53.00 SGD  average: 13.25 SGD" in out
    assert "2026-04: 1 = 30.00 SGD" in out


def test_cli_rejects_invalid_strategies(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("strategies: [{id: x}]\n")
    assert main(["backtest", "--strategies", str(tmp_path), "--events", str(FIXTURES / "tickets.csv")]) == 2
    assert "invalid strategy" in capsys.readouterr().err


def test_validate_strategies_command(tmp_path, capsys):
    assert main(["validate-strategies", str(FIXTURES / "strategies.yaml")]) == 0
    assert "ok: 3 strategies" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text("strategies: [{id: x, version: 0}]\n")
    assert main(["validate-strategies", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "strategy x version: must be >= 1" in err and "nothing would be applied" in err


@pytest.mark.parametrize(("name", "content", "message"), [
    ("a.jsonl", "not json\n", "a.jsonl:1: not JSON"),
    ("b.jsonl", '{"region": "SG"}\n', "expected an object with region, occurred_at and payload"),
    ("c.jsonl", '{"region": "SG", "occurred_at": "2026-03-01T00:00:00", "payload": {}}\n', "needs a UTC offset"),
    ("d.jsonl", '{"region": "SG", "occurred_at": "2026-03-01T00:00:00Z", "payload": {"ticket_id": "T"}}\n',
     "d.jsonl:1: payload."),
    ("e.csv", "region,occurred_at,currency,ticket_id,order_id,buyer_id,seller_id,reason,order_amount_minor\n"
              "SG,2026-03-01T00:00:00Z,SGD,T,O,B,S,damaged,12.50\n", "e.csv:2: order_amount_minor must be whole"),
    ("f.csv", "region,occurred_at,currency,ticket_id,order_id,buyer_id,seller_id,reason,order_amount_minor\n"
              "SG,2026-03-01T00:00:00Z,USD,T,O,B,S,damaged,1250\n", "must be SGD"),
])
def test_bad_event_files_name_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(BacktestInputError, match=message.replace(".", r"\.")):
        read_tickets(tmp_path / name)


def test_other_event_types_are_skipped(tmp_path):
    f = tmp_path / "log.jsonl"
    f.write_text('{"event_type": "voucher.redeemed", "region": "SG", "payload": {}}\n')
    assert read_tickets(f) == []
