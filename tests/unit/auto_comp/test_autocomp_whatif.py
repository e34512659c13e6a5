"""What-if before a change, over the backtest fixture: a proposed strategy file against the strategies in
force on the same tickets, per ticket and per liable party, checked against totals computed by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from services.auto_comp.__main__ import main
from services.auto_comp.backtest import read_tickets
from services.auto_comp.domain import whatif
from services.auto_comp.domain.loader import StrategyLoadError, load_strategies, load_with_proposal

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "auto_comp"
IN_FORCE = (FIXTURES / "strategies.yaml").read_text()

# The proposal, three edits of the file in force:
#  sg-late: from 2 days late (new tier late_2: 5%, floor 2.00), and the seller S1 pays half (platform alone before)
#  sg-damaged: no holdout (30% before)
#  id-seller-cancelled: 30000 IDR instead of 25000
PROPOSED = (IN_FORCE
            .replace("thresholds: {days_late: {min: 3}}", "thresholds: {days_late: {min: 2}}")
            .replace("        - {name: late_3_5, from: 3",
                     "        - {name: late_2, from: 2, to: 2, amount: {percent: 5, floor: \"2.00\", cap: \"15.00\"}}\n"
                     "        - {name: late_3_5, from: 3")
            .replace("      - {when: otherwise, shares: [{party: platform, percent: 100}]}\n    abuse_guard",
                     "      - {when: otherwise, shares: [{party: seller, percent: 50},\n"
                     "                                   {party: platform, percent: 50}]}\n    abuse_guard")
            .replace("    holdout_percent: 30\n", "")
            .replace('amount: {fixed: "25000"}', 'amount: {fixed: "30000"}'))

# By hand (the backtest fixture's decisions in force, tests/unit/auto_comp/test_autocomp_backtest.py):
#   T1 B1 4 days late   10.00 platform          -> 10.00: S1 5.00 + platform 5.00           payer_changed
#   T2 B1 7 days late   10.00 platform          -> 10.00: S1 5.00 + platform 5.00           payer_changed
#   T3 B1 3rd in 30 days: abuse guard           -> abuse guard (T1, T2 still granted)      unchanged
#   T4 B2 2 days late: not eligible             -> late_2 5% of 80.00 = 4.00: S1 2.00 + platform 2.00  newly
#   T5 B2 10 days late  30.00 platform          -> 30.00: S1 15.00 + platform 15.00         payer_changed
#   T6 B3 damaged: holdout                      -> 15% of 40.00 = 6.00: S2 3.00 + platform 3.00  newly
#   T7 B4 damaged        3.00: S2 1.50 + platform 1.50 -> the same                          unchanged
#   SG: 53.00 -> 63.00; platform 51.50 (4 tickets) -> 31.50 (6); S1 0 -> 27.00 (4); S2 1.50 (1) -> 4.50 (2)
#   ID: T8 25000 -> 30000 (seller S9), amount_changed; T9 below the minimum order value either way
SG_PARTIES = {("seller", "S1"): ((0, 0), (4, 2_700)), ("platform", None): ((4, 5_150), (6, 3_150)),
              ("seller", "S2"): ((1, 150), (2, 450))}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("whatif")
    (root / "in-force").mkdir()
    (root / "in-force" / "strategies.yaml").write_text(IN_FORCE)
    (root / "proposal").mkdir()
    (root / "proposal" / "strategies.yaml").write_text(PROPOSED)
    return root / "in-force", root / "proposal" / "strategies.yaml"


@pytest.fixture(scope="module")
def result(files):
    in_force, proposal = files
    return whatif.run_what_if(load_strategies(in_force), load_with_proposal(in_force, proposal),
                              read_tickets(FIXTURES / "tickets.jsonl"))


def test_changed_outcomes_per_ticket(result):
    by_id = {t.ticket.ticket.ticket_id: t for t in result.tickets}
    assert sorted(by_id) == ["T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9"]  # the replayed T1 once
    assert {tid: t.changes for tid, t in by_id.items()} == {
        "T1": ("payer_changed",), "T2": ("payer_changed",), "T3": (), "T4": ("newly_compensated",),
        "T5": ("payer_changed",), "T6": ("newly_compensated",), "T7": (), "T8": ("amount_changed",), "T9": ()}
    t4 = by_id["T4"]
    assert (t4.current.outcome, t4.current.failed_rule) == ("not_eligible", "match.thresholds.days_late")
    assert (t4.proposed.outcome, t4.proposed.tier, t4.proposed.amount_minor, t4.delta_minor) == (
        "compensated", "late_2", 400, 400)
    assert [(p.label, m) for p, m in t4.proposed.parts] == [("seller:S1", 200), ("platform", 200)]
    assert (by_id["T6"].current.outcome, by_id["T6"].proposed.amount_minor) == ("holdout", 600)
    assert by_id["T3"].current.outcome == by_id["T3"].proposed.outcome == "capped_by_abuse_guard"
    assert [(p.label, m) for p, m in by_id["T8"].proposed.parts] == [("seller:S9", 30_000)]


def test_totals_per_region_and_liable_party(result):
    sg, idr = ({r.region: r for r in result.regions}[k] for k in ("SG", "ID"))
    assert (sg.tickets, sg.compensations_current, sg.compensations_proposed) == (7, 4, 6)
    assert (sg.cost_current_minor, sg.cost_proposed_minor, sg.changed_tickets) == (5_300, 6_300, 5)
    assert dict(sg.changed) == {"payer_changed": 3, "newly_compensated": 2}
    parties = {(p.party, p.party_id): ((t.tickets_current, t.minor_current), (t.tickets_proposed, t.minor_proposed))
               for p, t in sg.parties()}
    assert parties == SG_PARTIES
    # largest change first: platform -20.00, S1 +27.00, S2 +3.00 -> S1, platform, S2
    assert [p.label for p, _ in sg.parties()] == ["seller:S1", "platform", "seller:S2"]
    assert sum(t.delta_minor for _, t in sg.parties()) == sg.cost_proposed_minor - sg.cost_current_minor
    assert (idr.cost_current_minor, idr.cost_proposed_minor, idr.changed_tickets) == (25_000, 30_000, 1)
    body = sg.as_dict()
    assert body["cost"] == {"current": "53.00 SGD", "proposed": "63.00 SGD", "delta": "10.00 SGD"}
    assert body["by_tier_minor"]["sg-late/late_2"] == {"current": 0, "proposed": 400}


def test_the_same_file_changes_nothing(files):
    in_force, _ = files
    same = whatif.run_what_if(load_strategies(in_force), load_with_proposal(in_force, in_force / "strategies.yaml"),
                              read_tickets(FIXTURES / "tickets.csv"))
    assert not any(t.changes for t in same.tickets)
    assert all(t.delta_minor == 0 for r in same.regions for _, t in r.parties())


def test_a_proposal_is_checked_with_the_files_it_joins(files, tmp_path):
    in_force, _ = files
    clash = tmp_path / "extra.yaml"  # a new file whose strategy ties with sg-damaged: refused, named
    clash.write_text(IN_FORCE.split("  - id: id-seller-cancelled")[0].replace("id: sg-late", "id: sg-late-2")
                     .replace("id: sg-damaged", "id: sg-damaged-2"))
    with pytest.raises(StrategyLoadError) as exc:
        load_with_proposal(in_force, clash)
    assert any(e.field == "priority" for e in exc.value.errors)
    with pytest.raises(StrategyLoadError):
        load_with_proposal(in_force, tmp_path / "missing.yaml")


def test_cli_json_csv_and_window(files, tmp_path, capsys):
    in_force, proposal = files
    args = ["what-if", "--strategies", str(in_force), "--proposed", str(proposal),
            "--events", str(FIXTURES / "tickets.jsonl")]
    assert main([*args, "--format", "json", "--changed-only", "--region", "SG"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [r["region"] for r in body["regions"]] == ["SG"]
    assert [t["ticket_id"] for t in body["tickets"]] == ["T1", "T2", "T4", "T6", "T5"]  # changed, in time order
    assert body["regions"][0]["by_liable_party"][0] == {
        "party": "seller", "party_id": "S1", "tickets": {"current": 0, "proposed": 4},
        "cost_minor": {"current": 0, "proposed": 2_700, "delta": 2_700}}
    # the window: local days 1-31 March in SG (T5 is 1 April there), so 6 of SG's tickets
    out = tmp_path / "sg-march.csv"
    assert main([*args, "--format", "csv", "--region", "SG", "--from", "2026-03-01", "--to", "2026-03-31",
                 "-o", str(out)]) == 0
    tickets = list(csv.DictReader((tmp_path / "sg-march-tickets.csv").open()))
    assert [t["ticket_id"] for t in tickets] == ["T1", "T2", "T3", "T4", "T6", "T7"]
    t4 = next(t for t in tickets if t["ticket_id"] == "T4")
    assert (t4["changes"], t4["current_outcome"], t4["proposed_paid_by"], t4["delta_minor"]) == (
        "newly_compensated", "not_eligible", "seller:S1=200; platform=200", "400")
    parties = {(p["party"], p["party_id"]): p for p in csv.DictReader((tmp_path / "sg-march-parties.csv").open())}
    assert (parties[("platform", "")]["cost_current_minor"], parties[("platform", "")]["cost_proposed_minor"]) == (
        "2150", "1650")
    assert main([*args, "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert "T4 (2026-03-11): not_eligible (match.thresholds.days_late) -> 4.00 SGD by sg-late/late_2" in text
    assert "seller:S1: 0 -> 4 tickets, 0.00 SGD -> 27.00 SGD (27.00 SGD)" in text


@pytest.mark.parametrize(("extra", "message"), [
    (["--from", "2026-13-01"], "--from/--to"),
    (["--from", "2026-03-10", "--to", "2026-03-01"], "--to is before --from"),
    (["--region", "XX"], "--region"),
])
def test_cli_bad_window_exits_2_naming_it(files, capsys, extra, message):
    in_force, proposal = files
    assert main(["what-if", "--strategies", str(in_force), "--proposed", str(proposal),
                 "--events", str(FIXTURES / "tickets.jsonl"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_proposal_exits_2_with_every_error(files, tmp_path, capsys):
    in_force, _ = files
    bad = tmp_path / "strategies.yaml"
    bad.write_text(PROPOSED.replace("percent: 5, floor", "percent: 500, floor"))
    assert main(["what-if", "--strategies", str(in_force), "--proposed", str(bad),
                 "--events", str(FIXTURES / "tickets.jsonl")]) == 2
    assert "invalid strategy" in capsys.readouterr().err
