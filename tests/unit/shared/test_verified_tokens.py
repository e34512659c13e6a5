"""Verified bearer tokens are remembered until they expire, and only then: the cache never accepts a
token a fresh verification would refuse."""

import time

import jwt
import pytest

from shared.auth import TokenService, VerifiedTokens
from shared.http import Problem

SECRET = "unit-test-secret-" + "x" * 32


def _counting(monkeypatch):
    calls = []
    real = jwt.decode

    def decode(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", decode)
    return calls


def test_a_verified_token_is_not_verified_again_until_it_expires(monkeypatch):
    calls = _counting(monkeypatch)
    now = [time.time()]
    tokens = VerifiedTokens(SECRET, "compensation-platform", clock=lambda: now[0])
    token = TokenService(SECRET).issue("replayer", roles=["service"], regions=["SG"], ttl_seconds=600)

    first = tokens.verify(token)
    assert first.subject == "replayer" and first.regions == frozenset({"SG"}) and first.roles == {"service"}
    assert tokens.verify(token) == first
    assert len(calls) == 1

    now[0] += 601  # past exp: verified again (and refused, once the real clock gets there too)
    tokens.verify(token)
    assert len(calls) == 2


def test_an_expired_token_is_refused_although_it_was_verified_before():
    tokens = VerifiedTokens(SECRET, "compensation-platform")
    token = TokenService(SECRET).issue("replayer", roles=["service"], regions=["*"], ttl_seconds=1)
    tokens.verify(token)
    time.sleep(max(0.0, jwt.decode(token, options={"verify_signature": False})["exp"] - time.time()) + 0.05)
    with pytest.raises(Problem) as refused:
        tokens.verify(token)
    assert refused.value.status == 401 and refused.value.detail == "token expired"


def test_refused_tokens_are_refused_every_time(monkeypatch):
    tokens = VerifiedTokens(SECRET, "compensation-platform")
    forged = TokenService("another-secret-" + "y" * 32).issue("mallory", roles=["service"], regions=["*"])
    session = TokenService(SECRET).issue("lee", roles=["lead"], regions=["SG"], audience="workbench:s1")
    calls = _counting(monkeypatch)
    for token in (forged, forged, session, session):
        with pytest.raises(Problem) as refused:
            tokens.verify(token)
        assert refused.value.status == 401
    assert len(calls) == 4


def test_the_cache_stays_bounded():
    tokens = VerifiedTokens(SECRET, "compensation-platform", max_size=3)
    issuer = TokenService(SECRET)
    for i in range(10):
        tokens.verify(issuer.issue(f"s{i}", roles=["service"], regions=["*"]))
    assert len(tokens._verified) <= 3
