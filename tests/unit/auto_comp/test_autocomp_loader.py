"""Strategy files: each kind of mistake gives an error naming file, strategy, field and what is wrong;
an invalid load never partially applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.auto_comp.domain.loader import StrategyLoadError, load_strategies
from tests.unit.auto_comp.autocomp_builders import load, strategy_dict, write

SEEDS = Path(__file__).resolve().parents[3] / "services" / "auto_comp" / "strategies"


def errors_of(tmp_path: Path, *strategies) -> list[str]:
    write(tmp_path, *strategies)
    with pytest.raises(StrategyLoadError) as err:
        load_strategies(tmp_path)
    return [str(e) for e in err.value.errors]


def one_error(tmp_path: Path, field: str, fragment: str, **overrides) -> None:
    errs = errors_of(tmp_path, strategy_dict(**overrides))
    assert any(f" {field}: " in e and fragment in e and "s.yaml" in e for e in errs), errs


def test_seed_strategies_load():
    loaded = load_strategies(SEEDS)
    regions = {r for s in loaded.strategies for r in s.regions}
    assert {"US", "GB", "SG", "ID"} <= regions
    scenarios = {s.scenario for s in loaded.strategies}
    assert {"late_delivery", "lost_parcel", "damaged_item", "missing_parts", "seller_cancellation"} <= scenarios
    for s in loaded.strategies:
        assert s.currency == {"US": "USD", "GB": "GBP", "SG": "SGD", "ID": "IDR"}[next(iter(s.regions))]


def test_valid_file_loads_with_a_content_version(tmp_path):
    a = load(tmp_path, strategy_dict())
    b = load(tmp_path, strategy_dict())
    assert a.version == b.version
    c = load(tmp_path, strategy_dict(priority=7))
    assert c.version != a.version


def test_error_names_file_strategy_and_field(tmp_path):
    errs = errors_of(tmp_path, strategy_dict(priority="high"))
    assert len(errs) == 1
    assert errs[0].startswith(str(tmp_path / "s.yaml") + ": strategy sg-late priority: must be a whole number")


@pytest.mark.parametrize(("overrides", "field", "fragment"), [
    ({"id": None}, "id", "is required"),
    ({"id": "Has Spaces"}, "id", "lower-case letters"),
    ({"version": 0}, "version", "must be >= 1"),
    ({"regions": ["XX"]}, "regions[0]", "unknown region 'XX'"),
    ({"currency": "USD"}, "currency", "USD is not the currency of region SG (SGD)"),
    ({"effective_from": "2026-01-01T00:00:00"}, "effective_from", "needs a UTC offset"),
    ({"effective_from": "next monday"}, "effective_from", "not an ISO 8601 timestamp"),
    ({"effective_to": "2025-01-01T00:00:00Z"}, "effective_to", "must be after effective_from"),
    ({"enabled": "yes please"}, "enabled", "must be true or false"),
    ({"mode": "dry_run"}, "mode", "must be one of active, shadow"),
    ({"priority": -1}, "priority", "must be >= 0"),
    ({"colour": "blue"}, "colour", "unknown field"),
    ({"match": {"reasons": ["late"]}}, "match.reasons[0]", "must be one of late_delivery"),
    ({"match": {"reasons": []}}, "match.reasons", "must be a non-empty list"),
    ({"match": {"reasons": ["late_delivery"], "thresholds": {"days_lat": {"min": 3}}}},
     "match.thresholds.days_lat", "must be one of days_late"),
    ({"match": {"reasons": ["late_delivery"], "thresholds": {"days_late": {"min": 5, "max": 3}}}},
     "match.thresholds.days_late", "min 5 is above max 3"),
    ({"match": {"reasons": ["late_delivery"], "thresholds": {"days_late": {}}}},
     "match.thresholds.days_late", "give min, max or both"),
    ({"match": {"reasons": ["late_delivery"], "order_value": {"min": 10.5}}},
     "match.order_value.min", "quoted string"),
    ({"compensation": {"kind": "voucher", "amount": {"percent": 10}}},
     "compensation.voucher", "is required for kind voucher"),
    ({"compensation": {"kind": "full_refund", "amount": {"fixed": "1.00"}}},
     "compensation.kind", "must be one of voucher, store_credit"),
    ({"compensation": {"kind": "store_credit", "amount": {"fixed": "1.00", "percent": 5}}},
     "compensation.amount", "exactly one of fixed or percent"),
    ({"compensation": {"kind": "store_credit", "amount": {"percent": 150}}},
     "compensation.amount.percent", "between 0 and 100"),
    ({"compensation": {"kind": "store_credit", "amount": {"percent": 10, "floor": "9.00", "cap": "5.00"}}},
     "compensation.amount", "is above cap"),
    ({"compensation": {"kind": "store_credit", "amount": {"fixed": "1.001"}}},
     "compensation.amount.fixed", "more than 2 decimals"),
    ({"compensation": {"kind": "store_credit", "amount": {"fixed": "1.00"}, "rounding": "bankers"}},
     "compensation.rounding", "must be one of half_up"),
    ({"compensation": {"kind": "store_credit", "severity": "days_late", "tiers": [
        {"name": "a", "from": 3, "to": 6, "amount": {"fixed": "1.00"}},
        {"name": "b", "from": 6, "amount": {"fixed": "2.00"}}]}}, "compensation.tiers", "overlaps tier b"),
    ({"compensation": {"kind": "store_credit", "severity": "days_late", "tiers": [
        {"name": "a", "from": 4, "amount": {"fixed": "1.00"}}]}},
     "compensation.tiers", "no tier covers days_late 3..3"),
    ({"liability": [{"when": "otherwise", "shares": [{"party": "seller", "percent": 60},
                                                     {"party": "platform", "percent": 30}]}]},
     "liability[0].shares", "must sum to 100, got 90"),
    ({"liability": [{"when": "carrier_delay", "if_handoff_missing": "next_rule",
                     "shares": [{"party": "carrier", "percent": 100}]}]},
     "liability", "last rule must be 'when: otherwise'"),
    ({"liability": [{"when": "seller_late_dispatch", "if_handoff_missing": "next_rule",
                     "shares": [{"party": "carrier", "percent": 100}]},
                    {"when": "otherwise", "shares": [{"party": "platform", "percent": 100}]}]},
     "liability[0].shares", "carrier cannot be charged"),
    # whom to charge without the carrier hand-off time is stated, never a silent default (issue 13)
    ({"liability": [{"when": "carrier_delay", "shares": [{"party": "carrier", "percent": 100}]},
                    {"when": "otherwise", "shares": [{"party": "platform", "percent": 100}]}]},
     "liability[0].if_handoff_missing", "is required: next_rule, applies or ticket_time"),
    ({"liability": [{"when": "seller_late_dispatch", "if_handoff_missing": "blame_seller",
                     "shares": [{"party": "seller", "percent": 100}]},
                    {"when": "otherwise", "shares": [{"party": "platform", "percent": 100}]}]},
     "liability[0].if_handoff_missing", "must be one of next_rule, applies, ticket_time"),
    ({"liability": [{"when": "otherwise", "if_handoff_missing": "applies",
                     "shares": [{"party": "platform", "percent": 100}]}]},
     "liability[0].if_handoff_missing", "'otherwise' needs no evidence"),
    ({"liability": [{"when": "otherwise", "shares": [{"party": "bank", "percent": 100}]}]},
     "liability[0].shares[0].party", "must be one of seller, carrier, platform"),
    ({"abuse_guard": {"window_days": 30}}, "abuse_guard", "give max_count, max_amount or both"),
    ({"abuse_guard": {"window_days": 0, "max_count": 1}}, "abuse_guard.window_days", "must be >= 1"),
    ({"holdout_percent": 101}, "holdout_percent", "between 0 and 100"),
    ({"holdout_percent": "2.555"}, "holdout_percent", "at most two decimals"),
    ({"budget": {"degrade_to_lower_tier": True}}, "budget.degrade_to_lower_tier", "at least two"),
    ({"budget": {"pacing_allowance_percent": 120}}, "budget.pacing_allowance_percent", "must be <= 100"),
])
def test_each_mistake_has_its_clear_error(tmp_path, overrides, field, fragment):
    one_error(tmp_path, field, fragment, **overrides)


def test_priority_tie_is_a_load_error(tmp_path):
    errs = errors_of(tmp_path, strategy_dict(id="a"), strategy_dict(id="b"))
    assert any("strategy b priority: ties with strategy a" in e for e in errs), errs


def test_no_tie_when_they_cannot_meet(tmp_path):
    # different reasons, different regions, disjoint dates, or one disabled: no tie, both strategies load
    loaded = [
        load(tmp_path / "1", strategy_dict(id="a"), strategy_dict(id="b", match={"reasons": ["damaged"]})),
        load(tmp_path / "2", strategy_dict(id="a"), strategy_dict(id="b", regions=["GB"], currency="GBP")),
        load(tmp_path / "3", strategy_dict(id="a", effective_to="2026-02-01T00:00:00Z"),
             strategy_dict(id="b", effective_from="2026-02-01T00:00:00Z")),
        load(tmp_path / "4", strategy_dict(id="a"), strategy_dict(id="b", enabled=False))]
    assert [sorted(s.id for s in one.strategies) for one in loaded] == [["a", "b"]] * 4


def test_duplicate_id_across_files(tmp_path):
    write(tmp_path, strategy_dict(), name="a.yaml")
    write(tmp_path, strategy_dict(priority=5), name="b.yaml")
    with pytest.raises(StrategyLoadError) as err:
        load_strategies(tmp_path)
    assert "b.yaml: strategy sg-late id: duplicate strategy id" in str(err.value)


def test_one_bad_file_fails_the_whole_load(tmp_path):
    write(tmp_path, strategy_dict(id="good"), name="a.yaml")
    (tmp_path / "b.yaml").write_text("strategies: [ {id: broken\n")
    with pytest.raises(StrategyLoadError) as err:
        load_strategies(tmp_path)
    assert len(err.value.errors) == 1
    assert "b.yaml" in str(err.value) and "not valid YAML" in str(err.value)


def test_file_shape_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("- just a list\n")
    with pytest.raises(StrategyLoadError, match="must be a mapping with a 'strategies' list"):
        load_strategies(tmp_path)
    with pytest.raises(StrategyLoadError, match="does not exist"):
        load_strategies(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StrategyLoadError, match="no strategy files"):
        load_strategies(tmp_path / "empty")


def test_all_mistakes_of_a_file_are_reported_together(tmp_path):
    errs = errors_of(tmp_path, strategy_dict(priority="x", enabled="maybe", holdout_percent=500))
    assert len(errs) >= 2


def test_the_documented_example_loads_and_decides_as_documented(tmp_path):
    from datetime import timedelta

    from services.auto_comp.domain.engine import evaluate_strategy
    from shared.regions import region
    from tests.unit.auto_comp.autocomp_builders import T0, ticket

    doc = (Path(__file__).resolve().parents[3] / "docs" / "strategies.md").read_text()
    example = doc.split("## Example", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    (tmp_path / "example.yaml").write_text(example)
    [strategy] = load_strategies(tmp_path).strategies
    due = T0 - timedelta(days=30)
    t = ticket(days_late=7, order=12_000, carrier_id="C1", dispatch_due_at=due, shipped_at=due)
    p = evaluate_strategy(strategy, t, region("SG"), T0).proposal
    assert p is not None and p.amount.minor == 2_400 and [m.minor for m in p.fallback_amounts] == [1_200]
    assert [s.party.value for s in p.shares] == ["carrier"]
