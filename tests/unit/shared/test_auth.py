import time

import pytest

from shared.auth import Principal, TokenService, generate_api_key, key_matches, parse_api_key
from shared.http import Problem


def test_token_roundtrip_carries_roles_and_regions():
    ts = TokenService("x" * 32)
    p = ts.verify(ts.issue("alice", ["auditor"], ["SG", "MY"], ttl_seconds=60))
    assert p.subject == "alice" and p.roles == {"auditor"} and p.regions == {"SG", "MY"}
    assert p.can_access("SG") and not p.can_access("GB")


def test_expired_forged_and_foreign_tokens_are_401():
    ts = TokenService("x" * 32)
    expired = ts.issue("a", [], ["SG"], ttl_seconds=-1)
    with pytest.raises(Problem) as exc:
        ts.verify(expired)
    assert exc.value.status == 401 and "expired" in (exc.value.detail or "")
    other = TokenService("y" * 32).issue("a", ["ops_admin"], ["*"])
    with pytest.raises(Problem) as exc:
        ts.verify(other)
    assert exc.value.status == 401
    with pytest.raises(Problem):
        ts.verify("not-a-token")


def test_short_secret_is_refused_at_startup():
    with pytest.raises(ValueError, match="at least 16"):
        TokenService("short")


def test_region_grants_and_roles():
    p = Principal("bob", "token", frozenset({"lead"}), frozenset({"GB"}))
    p.require_region("GB")
    with pytest.raises(Problem) as exc:
        p.require_region("SG")
    assert exc.value.status == 403
    with pytest.raises(Problem):
        p.require_role("senior_auditor")
    admin = Principal("ops", "token", frozenset({"ops_admin"}), frozenset({"*"}))
    assert admin.can_access("VN")


def test_api_keys_are_random_and_checked_in_constant_time():
    key_id, full, stored = generate_api_key()
    assert parse_api_key(full) == key_id
    assert key_matches(full, stored)
    assert not key_matches(full + "x", stored)
    assert full not in stored
    assert parse_api_key("garbage") is None
    assert generate_api_key()[1] != full
    assert time.time() > 0


def test_session_cookie_tokens_are_not_bearer_tokens():
    # A workbench cookie carries an audience; lifted from a browser it must not open the other APIs.
    ts = TokenService("x" * 32)
    cookie = ts.issue("auditor1", ["auditor"], ["SG"], audience="workbench-session:abc123")
    with pytest.raises(Problem) as exc:
        ts.verify(cookie)
    assert exc.value.status == 401
    principal, session_id = ts.verify_audience(cookie, "workbench-session:")
    assert session_id == "abc123" and principal.subject == "auditor1" and principal.regions == {"SG"}


def test_audience_must_match_prefix_and_carry_a_session():
    ts = TokenService("x" * 32)
    for token in (ts.issue("a", [], ["SG"]),  # plain bearer token: no audience
                  ts.issue("a", [], ["SG"], audience="other:abc"),
                  ts.issue("a", [], ["SG"], audience="workbench-session:"),
                  TokenService("y" * 32).issue("a", [], ["SG"], audience="workbench-session:abc")):
        with pytest.raises(Problem) as exc:
            ts.verify_audience(token, "workbench-session:")
        assert exc.value.status == 401
