"""Fixtures of the ledger's integration tests: one migrated ledger schema per test module, and settings on it."""

import pytest

from services.ledger.config import Settings
from tests.integration.ledger.ledger_support import ledger_engine


@pytest.fixture(scope="module")
async def engine(fresh_database):
    engine = await ledger_engine(fresh_database)
    yield engine
    await engine.dispose()


@pytest.fixture
def settings(fresh_database) -> Settings:
    return Settings(database_url=fresh_database)
