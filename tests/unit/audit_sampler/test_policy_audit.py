"""Sampling policy files: the shipped ones load; bad ones fail with every problem named by its path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.audit_sampler.config import DEFAULT_POLICY_DIR
from services.audit_sampler.domain.policy import (
    PolicyError,
    PolicySet,
    SamplingMode,
    load_policy_file,
    parse_policy,
)

MINIMAL = {"region": "US", "seed": "a-long-enough-seed", "baseline_rate": 0.1}


def errors_of(data) -> dict[str, str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(data, "test.yaml")
    return dict(info.value.errors)


def test_shipped_policies_cover_the_required_regions_and_fall_back_to_default():
    policies = PolicySet.load(DEFAULT_POLICY_DIR)
    assert {"default", "US", "GB", "SG", "ID"} <= set(policies.policies)
    assert policies.for_region("US").region == "US"
    assert policies.for_region("TH").region == "default"
    assert policies.for_region("SG").mode is SamplingMode.MONETARY_UNIT


def test_minimal_policy_gets_defaults():
    policy = parse_policy(MINIMAL)
    assert policy.mode is SamplingMode.RISK and policy.max_rate == 1.0
    assert [q.name for q in policy.queues] == ["high", "normal"]
    assert policy.queue_for(1.0, mandatory=True).name == "high"
    assert policy.queue_for(1.0, mandatory=False).name == "normal"
    assert policy.queue_for(5.0, mandatory=False).name == "high"
    assert "wrong_amount" in policy.error_categories


def test_version_changes_with_content():
    assert parse_policy(MINIMAL).version != parse_policy({**MINIMAL, "baseline_rate": 0.2}).version


@pytest.mark.parametrize(("patch", "path"), [
    ({"region": "usa"}, "region"),
    ({"seed": "short"}, "seed"),
    ({"baseline_rate": 1.5}, "baseline_rate"),
    ({"baseline_rate": "0.1"}, "baseline_rate"),
    ({"baseline_rate": True}, "baseline_rate"),
    ({"max_rate": 0}, "max_rate"),
    ({"mode": "magic"}, "mode"),
    ({"mode": "monetary_unit"}, "monetary_unit_interval"),
    ({"always_audit_above": {"usd": 100}}, "always_audit_above.usd"),
    ({"always_audit_above": {"USD": 1.5}}, "always_audit_above.USD"),
    ({"always_audit_above": {"USD": -5}}, "always_audit_above.USD"),
    ({"surprise": 1}, "surprise"),
    ({"risk_boosts": {"new_agent": {"first_days": -1, "multiplier": 2}}}, "risk_boosts.new_agent.first_days"),
    ({"risk_boosts": {"new_agent": {"multiplier": 0.5}}}, "risk_boosts.new_agent.multiplier"),
    ({"risk_boosts": {"repeat_buyer": {"within_days": 30}}}, "risk_boosts.repeat_buyer.multiplier"),
    ({"risk_boosts": {"error_prone_reasons": {"codes": "damaged", "multiplier": 2}}},
     "risk_boosts.error_prone_reasons.codes"),
    ({"risk_boosts": {"unusual_for_reason": {"multiplier": 2}}}, "risk_boosts.unusual_for_reason.reasons"),
    ({"risk_boosts": {"typo_boost": {}}}, "risk_boosts.typo_boost"),
    ({"switching": {"to_tightened_failures": 6, "to_tightened_window": 5}}, "switching.to_tightened_failures"),
    ({"switching": {"reduced_multiplier": 2}}, "switching.reduced_multiplier"),
    ({"queues": {"only": {"sla_hours": 24, "min_risk": 2}}}, "queues"),
    ({"queues": {"normal": {"sla_hours": 0}}}, "queues.normal.sla_hours"),
    ({"queues": {"normal": {"sla_hours": 24, "daily_capacity": 0}}}, "queues.normal.daily_capacity"),
    ({"calibration_share": 2}, "calibration_share"),
    ({"lease_seconds": 1}, "lease_seconds"),
    ({"error_categories": ["Bad Category"]}, "error_categories"),
])
def test_invalid_fields_are_named(patch, path):
    assert path in errors_of({**MINIMAL, **patch})


def test_all_errors_are_reported_at_once():
    errors = errors_of({"region": "x", "seed": 1, "baseline_rate": 9})
    assert {"region", "seed", "baseline_rate"} <= set(errors)


def test_not_a_mapping():
    assert "(root)" in errors_of(["region", "US"])


def test_file_errors(tmp_path: Path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("region: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy_file(bad)


def test_reload_keeps_old_policies_on_error_and_picks_up_changes(tmp_path: Path):
    (tmp_path / "default.yaml").write_text(yaml.safe_dump({**MINIMAL, "region": "default"}))
    store = PolicySet.load(tmp_path)
    assert store.for_region("US").baseline_rate == 0.1
    us = tmp_path / "us.yaml"
    us.write_text(yaml.safe_dump({**MINIMAL, "baseline_rate": 0.3}))
    assert store.reload() is True
    assert store.for_region("US").baseline_rate == 0.3
    assert store.reload() is False  # nothing changed
    us.write_text(yaml.safe_dump({**MINIMAL, "baseline_rate": 3}))
    with pytest.raises(PolicyError):
        store.reload()
    assert store.for_region("US").baseline_rate == 0.3


def test_default_policy_is_required_and_regions_unique(tmp_path: Path):
    (tmp_path / "us.yaml").write_text(yaml.safe_dump(MINIMAL))
    with pytest.raises(PolicyError, match="region: default is required"):
        PolicySet.load(tmp_path)
    (tmp_path / "default.yaml").write_text(yaml.safe_dump({**MINIMAL, "region": "default"}))
    (tmp_path / "us2.yaml").write_text(yaml.safe_dump(MINIMAL))
    with pytest.raises(PolicyError, match="defined twice"):
        PolicySet.load(tmp_path)


async def test_the_service_reloader_keeps_serving_and_fails_readiness_on_a_bad_file(tmp_path: Path):
    from services.audit_sampler.app import PolicyReloader

    (tmp_path / "default.yaml").write_text(yaml.safe_dump({**MINIMAL, "region": "default"}))
    reloader = PolicyReloader(PolicySet.load(tmp_path))
    (tmp_path / "us.yaml").write_text("region: US\nbaseline_rate: lots\n")
    await reloader.reload()
    assert reloader.policies.for_region("US").region == "default"
    with pytest.raises(RuntimeError, match="invalid sampling policy"):
        await reloader.sampling_policies()
    (tmp_path / "us.yaml").write_text(yaml.safe_dump({**MINIMAL, "baseline_rate": 0.5}))
    await reloader.reload()
    await reloader.sampling_policies()
    assert reloader.policies.for_region("US").baseline_rate == 0.5


def test_policy_validate_command(tmp_path: Path, capsys):
    from services.audit_sampler.__main__ import main

    shipped = sorted(str(p) for p in Path(DEFAULT_POLICY_DIR).glob("*.yaml"))
    assert main(["policy", "validate", *shipped]) == 0
    assert "us.yaml: ok (region US" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("region: US\nseed: a-long-enough-seed\nbaseline_rate: 2\n")
    assert main(["policy", "validate", shipped[0], str(bad)]) == 1
    assert "baseline_rate: must be >= 0.0 and <= 1.0, got 2" in capsys.readouterr().err
