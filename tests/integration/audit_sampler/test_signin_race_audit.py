"""Workbench sign-in lockout under concurrent attempts, on the real PostgreSQL: parallel password guesses
cannot all pass the "not locked yet" check; at most the allowed number of attempts is ever checked."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from sqlalchemy import text

from services.audit_sampler.web import queries
from services.audit_sampler.web.auth import SignInFailed, WorkbenchAuth
from services.audit_sampler.web.security import hash_password
from services.audit_sampler.web.settings import WorkbenchSettings
from shared.auth import TokenService
from shared.db import make_engine, migrate

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "audit_sampler" / "migrations"
PASSWORD = "correct horse battery staple"
MAX_FAILURES = 5


@pytest.fixture(scope="module")
async def auth(fresh_database):
    await migrate(fresh_database, "audit_sampler", MIGRATIONS)
    engine = make_engine(fresh_database, "audit_sampler", pool_size=25)
    settings = WorkbenchSettings(signin_max_failures=MAX_FAILURES, signin_lockout_seconds=900)
    yield WorkbenchAuth(engine, TokenService(secrets.token_urlsafe(24)), settings)
    await engine.dispose()


async def add_user(auth: WorkbenchAuth, username: str) -> None:
    async with auth.engine.begin() as conn:  # a cheap scrypt cost: the test is about the counting
        await queries.upsert_user(conn, username, hash_password(PASSWORD, n=2 ** 10), ["auditor"], ["US"])


async def attempt(auth: WorkbenchAuth, username: str, password: str) -> str:
    try:
        await auth.sign_in(username, password)
    except SignInFailed as exc:
        return "locked" if "locked" in str(exc) else "wrong"
    return "ok"


async def test_parallel_wrong_passwords_check_at_most_the_allowed_number(auth):
    await add_user(auth, "guessed")
    answers = await asyncio.gather(*(attempt(auth, "guessed", f"guess number {i}") for i in range(20)))
    assert answers.count("wrong") == MAX_FAILURES and answers.count("locked") == 20 - MAX_FAILURES
    # the right password now finds the account locked
    assert await attempt(auth, "guessed", PASSWORD) == "locked"
    async with auth.engine.connect() as conn:
        failed = (await conn.execute(text(
            "SELECT failed_sign_ins FROM workbench_users WHERE username = 'guessed'"))).scalar()
    assert failed == MAX_FAILURES


async def test_the_right_password_among_parallel_attempts_still_signs_in_and_clears_the_count(auth):
    await add_user(auth, "careful")
    for i in range(MAX_FAILURES - 2):
        assert await attempt(auth, "careful", f"typo {i}") == "wrong"
    answers = await asyncio.gather(attempt(auth, "careful", PASSWORD), attempt(auth, "careful", PASSWORD))
    assert answers == ["ok", "ok"]
    async with auth.engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT failed_sign_ins, locked_until FROM workbench_users WHERE username = 'careful'"))).one()
    assert tuple(row) == (0, None)
