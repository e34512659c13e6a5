"""Fixtures of auto_comp's integration tests: one migrated auto_comp schema per test module."""

import pytest

from tests.integration.auto_comp.autocomp_support import autocomp_engine


@pytest.fixture(scope="module")
async def engine(fresh_database):
    engine = await autocomp_engine(fresh_database)
    yield engine
    await engine.dispose()
