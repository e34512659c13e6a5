"""Agent authority limits (issue 14): the shipped files load; bad files fail with every problem named by its
path; boundaries (equal to a limit is within), windows cut on the region's local days, a 0-decimal currency,
and issued-vs-approved checks of each kind."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from services.audit_sampler.__main__ import main
from services.audit_sampler.config import DEFAULT_LIMITS_DIR
from services.audit_sampler.domain import queues as q
from services.audit_sampler.domain.authority import (
    BUYER_WINDOW,
    DAILY_TOTAL,
    MAX_SINGLE,
    NO_RULE,
    ApprovedRequest,
    LimitsError,
    LimitsSet,
    check_issue,
    judge,
    parse_limits,
)
from shared.regions import catalogue

SG = {"region": "SG", "currency": "SGD", "buyer_window_days": 30, "request_required_above": 1000,
      "rules": [{"name": "tier1", "agent_tiers": ["tier1"], "max_single": 3000, "daily_total_per_agent": 10000,
                 "buyer_window_total": 5000},
                {"name": "anyone", "max_single": 500, "daily_total_per_agent": 2000, "buyer_window_total": 1000}]}


def errors_of(data) -> dict[str, str]:
    with pytest.raises(LimitsError) as info:
        parse_limits(data, "test.yaml")
    return dict(info.value.errors)


def test_shipped_limits_load_and_name_their_regions():
    limits = LimitsSet.load(DEFAULT_LIMITS_DIR)
    assert {"SG", "GB", "US", "ID"} <= set(limits.limits)
    assert limits.for_region("ID").currency == "IDR"
    assert limits.for_region("TH") is None  # no file: no authority delegated


def test_every_problem_is_named_by_its_path_in_one_pass():
    bad = {"region": "SG", "currency": "USD", "buyer_window_days": 0, "colour": "red",
           "rules": [{"name": "a", "max_single": 12.5, "daily_total_per_agent": 100, "buyer_window_total": -1,
                      "reasons": ["Late Delivery"]},
                     {"name": "a", "max_single": 500, "daily_total_per_agent": 100, "buyer_window_total": 10 ** 13}]}
    errors = errors_of(bad)
    assert "must be SGD" in errors["currency"]
    assert "between 1 and 366" in errors["buyer_window_days"]
    assert "unknown field" in errors["colour"]
    assert "no decimals" in errors["rules[0].max_single"]
    assert "rules[0].buyer_window_total" in errors
    assert "rules[0].reasons" in errors
    assert "used by an earlier rule" in errors["rules[1].name"]
    assert "at least max_single" in errors["rules[1].daily_total_per_agent"]
    assert "rules[1].buyer_window_total" in errors


def test_a_file_needs_a_catalogue_region_and_rules():
    errors = errors_of({"region": "XX", "currency": "XXX"})
    assert "region" in errors and "rules" in errors
    assert "expected a mapping" in errors_of(["not", "a", "mapping"])["(root)"]


def test_validate_cli_exits_1_and_prints_paths(tmp_path: Path, capsys):
    good = tmp_path / "sg.yaml"
    good.write_text(yaml.safe_dump(SG))
    bad = tmp_path / "bad.yaml"
    bad.write_text("region: SG\ncurrency: SGD\nrules: [{name: x, max_single: 1}]\n")
    assert main(["limits", "validate", str(good)]) == 0
    assert "ok (region SG, 2 rules" in capsys.readouterr().out
    assert main(["limits", "validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "rules[0].daily_total_per_agent: required" in err and "rules[0].buyer_window_total: required" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("region: [unclosed\n")
    assert main(["limits", "validate", str(broken)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_first_matching_rule_applies():
    limits = parse_limits(SG)
    assert limits.rule_for("sg-tier1", "tier1", "damaged").name == "tier1"
    assert limits.rule_for("sg-tier1", None, "damaged").name == "anyone"


@pytest.mark.parametrize(("amount", "agent_total", "buyer_total", "exceeded"), [
    (3000, 0, 0, ()),  # equal to the single limit: within
    (3001, 0, 0, (MAX_SINGLE,)),
    (3000, 7000, 0, ()),  # the day total reaches the limit exactly: within
    (3000, 7001, 0, (DAILY_TOTAL,)),
    (2000, 0, 3000, ()),  # the buyer's window reaches its limit exactly: within
    (2000, 0, 3001, (BUYER_WINDOW,)),
    (3001, 9000, 4000, (MAX_SINGLE, DAILY_TOTAL, BUYER_WINDOW)),
])
def test_equal_to_a_limit_is_within(amount, agent_total, buyer_total, exceeded):
    j = judge(parse_limits(SG), team="sg-tier1", tier="tier1", reason="damaged", amount_minor=amount,
              agent_day_total_minor=agent_total, buyer_window_total_minor=buyer_total)
    assert j.exceeded == exceeded and j.within == (not exceeded) and j.rule == "tier1"


def test_no_rule_or_no_limits_needs_an_approver():
    limits = parse_limits({**SG, "rules": [SG["rules"][0]]})
    j = judge(limits, team="t", tier=None, reason="damaged", amount_minor=1, agent_day_total_minor=0,
              buyer_window_total_minor=0)
    assert not j.within and j.exceeded == (NO_RULE,)
    assert judge(None, team="t", tier=None, reason="x", amount_minor=1, agent_day_total_minor=0,
                 buyer_window_total_minor=0).exceeded == (NO_RULE,)


@given(limit=st.integers(1, 10 ** 12), amount=st.integers(1, 10 ** 12), total=st.integers(0, 10 ** 12))
def test_within_exactly_when_every_sum_is_at_most_its_limit(limit, amount, total):
    data = {**SG, "rules": [{"name": "r", "max_single": limit, "daily_total_per_agent": limit,
                             "buyer_window_total": limit}]}
    j = judge(parse_limits(data), team="t", tier=None, reason="x", amount_minor=amount,
              agent_day_total_minor=total, buyer_window_total_minor=0)
    assert j.within == (amount <= limit and total + amount <= limit)


def test_zero_decimal_currency_limits_are_whole_units():
    idr = {"region": "ID", "currency": "IDR", "rules": [
        {"name": "agents", "max_single": 150000, "daily_total_per_agent": 1000000, "buyer_window_total": 300000}]}
    limits = parse_limits(idr)
    within = judge(limits, team="t", tier=None, reason="x", amount_minor=150000, agent_day_total_minor=0,
                   buyer_window_total_minor=150000)
    above = judge(limits, team="t", tier=None, reason="x", amount_minor=150001, agent_day_total_minor=0,
                  buyer_window_total_minor=0)
    assert within.within and above.exceeded == (MAX_SINGLE,)
    # An IDR file written in "cents" is a different file; a file in the wrong currency is refused.
    assert "must be IDR" in errors_of({**idr, "currency": "USD"})["currency"]


def test_the_buyer_window_and_the_agent_day_are_local_days_of_the_region():
    sg = catalogue().get("SG")
    us = catalogue().get("US")
    # 16:30 UTC is already the next day in Singapore (UTC+8) and still the same day in New York.
    late = datetime(2026, 11, 30, 16, 30, tzinfo=UTC)
    assert q.local_day(sg, late) == date(2026, 12, 1)
    assert q.local_day(us, late) == date(2026, 11, 30)
    limits = parse_limits({**SG, "buyer_window_days": 7})
    assert limits.window(q.local_day(sg, late)) == (date(2026, 11, 25), date(2026, 12, 1))
    assert parse_limits({**SG, "buyer_window_days": 1}).window(date(2026, 12, 1)) == (date(2026, 12, 1),) * 2


def _request(status="approved", approved=1000, buyer="B-1"):
    return ApprovedRequest("RQ-1", buyer, status, approved if status == "approved" else None)


@pytest.mark.parametrize(("request_", "buyer", "amount", "mismatches"), [
    (_request(), "B-1", 1000, ()),
    (_request(), "B-1", 1001, ("above_approved",)),
    (_request(), "B-2", 1000, ("other_buyer",)),
    (_request("awaiting_approval"), "B-1", 1000, ("not_approved",)),
    (_request("rejected"), "B-2", 1000, ("other_buyer", "not_approved")),
])
def test_issued_against_approved(request_, buyer, amount, mismatches):
    check = check_issue(request_id="RQ-1", request=request_, buyer_id=buyer, amount_minor=amount, currency="SGD",
                        limits=parse_limits(SG))
    assert check.mismatches == mismatches
    assert check.flagged == bool(mismatches) and (not mismatches or "RQ-1" in check.finding)


def test_without_a_request_only_above_the_required_amount_is_flagged():
    limits = parse_limits(SG)
    assert check_issue(request_id=None, request=None, buyer_id="B", amount_minor=1000, currency="SGD",
                       limits=limits).mismatches == ()
    check = check_issue(request_id=None, request=None, buyer_id="B", amount_minor=1001, currency="SGD",
                        limits=limits)
    assert check.mismatches == ("no_request",) and "issued 10.01 SGD" in check.finding
    assert "above 10.00 SGD" in check.finding
    assert not check_issue(request_id=None, request=None, buyer_id="B", amount_minor=10 ** 9, currency="SGD",
                           limits=None).flagged
