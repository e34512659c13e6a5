"""Fixtures shared by audit_sampler's integration tests: one fresh database per test module with the
service's schema migrated (``audit_database``); each module opens its engine on it with the pool it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.db import migrate

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "audit_sampler" / "migrations"


@pytest.fixture(scope="module")
async def audit_database(fresh_database: str) -> str:
    """The module's fresh database with audit_sampler's schema at its newest migration."""
    await migrate(fresh_database, "audit_sampler", MIGRATIONS)
    return fresh_database

