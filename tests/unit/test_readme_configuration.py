"""The README's configuration tables name every environment variable the services read, so an operator
never has to read settings classes to find one."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

README = Path(__file__).resolve().parents[2] / "README.md"
SETTINGS_MODULES = ["shared.config", "services.intake.config", "services.auto_comp.config",
                    "services.audit_sampler.config", "services.audit_sampler.web.settings",
                    "services.ledger.config", "services.insights.config"]
# Fixed per service in code (SERVICE_NAME), or replaced by each service's <SERVICE>_PORT (PORT).
NOT_FOR_OPERATORS = {"SERVICE_NAME", "PORT"}


def environment_variables() -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for module_name in SETTINGS_MODULES:
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj.__module__ == module_name:
                prefix = str(obj.model_config.get("env_prefix", ""))
                for name, field in obj.model_fields.items():
                    alias = field.validation_alias if isinstance(field.validation_alias, str) else None
                    found.setdefault((alias or prefix + name).upper(), f"{module_name}.{obj.__name__}")
    return [(owner, variable) for variable, owner in sorted(found.items()) if variable not in NOT_FOR_OPERATORS]


@pytest.mark.parametrize(("owner", "variable"), environment_variables())
def test_every_setting_is_in_the_readme(owner: str, variable: str) -> None:
    assert f"`{variable}`" in README.read_text(), f"{variable} ({owner}) is missing from README's configuration"
