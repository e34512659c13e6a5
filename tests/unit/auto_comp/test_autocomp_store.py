"""Reload: all-or-nothing, the previous version stays in force on failure, and the alert gauge says so."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.auto_comp.domain.loader import StrategyLoadError
from services.auto_comp.store import StrategyStore
from tests.unit.auto_comp.autocomp_builders import strategy_dict, write


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels or None)


def test_failed_reload_keeps_the_previous_version(tmp_path):
    write(tmp_path, strategy_dict(version=1))
    store = StrategyStore(tmp_path)
    first = store.current
    write(tmp_path, strategy_dict(version=2), strategy_dict(id="other", priority="high"))
    result = store.reload()
    assert not result.ok and result.version == first.version
    assert any(e.strategy == "other" and e.field == "priority" for e in result.errors)
    assert store.current is first and store.current.strategies[0].version == 1  # nothing partially applied
    assert gauge("auto_comp_strategy_reload_failed") == 1.0
    write(tmp_path, strategy_dict(version=2))
    ok = store.reload()
    assert ok.ok and ok.previous_version == first.version and store.current.strategies[0].version == 2
    assert gauge("auto_comp_strategy_reload_failed") == 0.0
    assert gauge("auto_comp_strategy_config_info", version=ok.version) == 1.0
    assert gauge("auto_comp_strategy_config_info", version=first.version) is None
    assert gauge("auto_comp_strategy_version", strategy="sg-late", mode="active") == 2.0


def test_a_service_never_starts_on_a_broken_set(tmp_path):
    write(tmp_path, strategy_dict(enabled="sometimes"))
    with pytest.raises(StrategyLoadError, match="enabled: must be true or false"):
        StrategyStore(tmp_path)


def test_a_failed_reload_is_named_for_readyz_until_a_good_one(tmp_path):
    """/readyz's strategies warning: which file and what is wrong, and the version still in force."""
    write(tmp_path, strategy_dict(version=1))
    store = StrategyStore(tmp_path)
    assert store.strategies() is None
    write(tmp_path, strategy_dict(version=2), strategy_dict(id="other", priority="high"))
    assert not store.reload().ok
    warning = store.strategies()
    assert warning is not None and f"still serving version {store.current.version}" in warning
    assert ".yaml" in warning and "other" in warning and "priority" in warning
    write(tmp_path, strategy_dict(version=2))
    assert store.reload().ok and store.strategies() is None
