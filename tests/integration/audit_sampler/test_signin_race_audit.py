"""Workbench sign-in throttling on the real PostgreSQL: by (account, client), by client and by account;
concurrent guesses cannot all pass the "not paused yet" check; a stranger cannot pause an auditor's known
browser; unknown, paused and wrong answers are the same after the same work."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from services.audit_sampler.persistence import workbench as queries
from services.audit_sampler.web.auth import SignInFailed, WorkbenchAuth
from services.audit_sampler.web.security import hash_password
from services.audit_sampler.web.settings import WorkbenchSettings
from services.audit_sampler.web.throttle import account_key
from shared.auth import TokenService
from shared.db import make_engine
from shared.web import auth as auth_module  # the shared sign-in runs the one scrypt

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
PAIR, CLIENT, ACCOUNT = 5, 12, 20


@pytest.fixture(scope="module")
async def auth(audit_database):
    engine = make_engine(audit_database, "audit_sampler", pool_size=25)
    settings = WorkbenchSettings(signin_max_failures=PAIR, signin_client_max_failures=CLIENT,
                                 signin_account_max_failures=ACCOUNT, signin_lockout_seconds=900)
    yield WorkbenchAuth(engine, TokenService(secrets.token_urlsafe(24)), settings)
    await engine.dispose()


async def add_user(auth: WorkbenchAuth, username: str) -> None:
    async with auth.engine.begin() as conn:  # a cheap scrypt cost: the test is about the counting
        await queries.upsert_user(conn, username, hash_password(PASSWORD, n=2 ** 10), ["auditor"], ["US"])


async def attempt(auth: WorkbenchAuth, username: str, password: str, ip: str = "198.51.100.1",
                  device: str | None = None) -> str:
    """'ok', or the failure message (the same text whatever the reason)."""
    try:
        await auth.sign_in(username, password, client_host=ip, device_cookie=device)
    except SignInFailed as exc:
        return str(exc)
    return "ok"


async def known_device(auth: WorkbenchAuth, username: str, ip: str) -> str:
    _, _, device = await auth.sign_in(username, PASSWORD, client_host=ip)
    return device.value


async def failures(auth: WorkbenchAuth, scope: str, key: str) -> int | None:
    async with auth.engine.connect() as conn:
        return (await conn.execute(text("SELECT failures FROM signin_throttle WHERE scope = :s AND key = :k"),
                                   {"s": scope, "k": key})).scalar()


async def test_parallel_guesses_from_one_client_check_at_most_the_allowed_number(auth):
    await add_user(auth, "guessed")
    answers = await asyncio.gather(*(attempt(auth, "guessed", f"guess number {i}") for i in range(20)))
    assert "ok" not in answers and len(set(answers)) == 1  # one answer for wrong and paused alike
    assert await failures(auth, "account_client", f"{account_key('guessed')}|ip:198.51.100.1") == PAIR
    # the right password from the same client is paused too (and not counted while paused) ...
    assert await attempt(auth, "guessed", PASSWORD) == answers[0]
    assert await failures(auth, "account_client", f"{account_key('guessed')}|ip:198.51.100.1") == PAIR
    # ... but the owner at another address is not: one place's guesses pause that place only
    assert await attempt(auth, "guessed", PASSWORD, ip="192.0.2.44") == "ok"


async def test_a_stranger_with_many_addresses_cannot_pause_the_auditors_known_browser(auth):
    await add_user(auth, "auditor-ines")
    device = await known_device(auth, "auditor-ines", "192.0.2.10")
    # twenty addresses, each stopping short of its own pair limit: the account limit is reached
    guesses = [attempt(auth, "auditor-ines", f"guess {i}", ip=f"203.0.113.{i // (PAIR - 1)}")
               for i in range(ACCOUNT)]
    assert "ok" not in await asyncio.gather(*guesses)
    assert await failures(auth, "account", account_key("auditor-ines")) == ACCOUNT
    # paused for unknown clients now, even with the right password from a fresh address ...
    assert await attempt(auth, "auditor-ines", PASSWORD, ip="192.0.2.99") != "ok"
    # ... while the browser she signed in from before signs in, from anywhere
    assert await attempt(auth, "auditor-ines", PASSWORD, ip="192.0.2.10", device=device) == "ok"
    assert await attempt(auth, "auditor-ines", PASSWORD, ip="198.51.100.200", device=device) == "ok"
    # a device cookie of another account is no known device of this one
    other = await known_device(auth, "guessed", "192.0.2.44")
    assert await attempt(auth, "auditor-ines", PASSWORD, ip="192.0.2.99", device=other) != "ok"
    # a stolen cookie does not bypass the pair limit: five wrong passwords pause that device too
    for i in range(PAIR):
        await attempt(auth, "auditor-ines", f"wrong {i}", device=device)
    assert await attempt(auth, "auditor-ines", PASSWORD, device=device) != "ok"


async def test_one_address_spraying_many_accounts_is_paused_for_every_account(auth):
    await add_user(auth, "sprayed")
    device = await known_device(auth, "sprayed", "198.51.100.77")
    for i in range(CLIENT):
        assert await attempt(auth, f"someone-{i}", "password1", ip="198.51.100.77") != "ok"
    assert await attempt(auth, "sprayed", PASSWORD, ip="198.51.100.77") != "ok"
    # the known browser behind the same (office) address still signs in
    assert await attempt(auth, "sprayed", PASSWORD, ip="198.51.100.77", device=device) == "ok"


async def test_unknown_accounts_answer_like_real_ones_after_the_same_work(auth, monkeypatch):
    """Same status and text for a wrong password, an unknown account, a paused one and a disabled one, and
    the same work: every attempt runs exactly one scrypt and the same counter statements."""
    await add_user(auth, "real-one")
    checks: list[str | None] = []
    original = auth_module.verify_password

    def counting(password: str, stored: str | None) -> bool:
        checks.append(stored)
        return original(password, stored)

    monkeypatch.setattr(auth_module, "verify_password", counting)
    wrong = await attempt(auth, "real-one", "not it", ip="192.0.2.200")
    unknown = await attempt(auth, "nobody-here", "not it", ip="192.0.2.200")
    for _ in range(PAIR):
        await attempt(auth, "nobody-here", "not it", ip="192.0.2.201")
        await attempt(auth, "real-one", "not it", ip="192.0.2.201")
    paused_unknown = await attempt(auth, "nobody-here", PASSWORD, ip="192.0.2.201")
    paused_real = await attempt(auth, "real-one", PASSWORD, ip="192.0.2.201")
    async with auth.engine.begin() as conn:
        await queries.disable_user(conn, "real-one", datetime.now(UTC))
    disabled = await attempt(auth, "real-one", PASSWORD, ip="192.0.2.202")
    assert wrong == unknown == paused_unknown == paused_real == disabled
    assert "unknown user name or wrong password" in wrong and "pauses for up to 15 minutes" in wrong
    assert len(checks) == 2 + 2 * PAIR + 3 and all(checks)  # one scrypt each, a dummy hash when no user
    # an unknown account is counted and paused exactly like a real one
    assert await failures(auth, "account_client", f"{account_key('nobody-here')}|ip:192.0.2.201") == PAIR


async def test_the_right_password_among_parallel_attempts_signs_in_and_gives_back_the_count(auth):
    await add_user(auth, "careful")
    for i in range(PAIR - 2):
        assert await attempt(auth, "careful", f"typo {i}", ip="192.0.2.150") != "ok"
    answers = await asyncio.gather(attempt(auth, "careful", PASSWORD, ip="192.0.2.150"),
                                   attempt(auth, "careful", PASSWORD, ip="192.0.2.150"))
    assert answers == ["ok", "ok"]
    assert await failures(auth, "account_client", f"{account_key('careful')}|ip:192.0.2.150") == 0
    # the wider counters keep only the real failures
    assert await failures(auth, "account", account_key("careful")) == PAIR - 2
