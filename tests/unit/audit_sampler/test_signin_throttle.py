"""Sign-in throttling rules (pure): what each counter allows, when it locks, and what a success gives back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.audit_sampler.web.throttle import (
    Counter,
    Limits,
    Scope,
    account_key,
    admitted,
    count_failure,
    give_back,
    keys,
    network_client,
)

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
LIMITS = Limits(pair=5, client=30, account=100, window=timedelta(minutes=15), lockout=timedelta(minutes=15))


def fail(scope: Scope, counter: Counter, times: int, at: datetime = NOW) -> Counter:
    for _ in range(times):
        counter = count_failure(scope, counter, at, LIMITS)
    return counter


def test_a_known_device_is_counted_only_for_its_pair_with_the_account():
    unknown = keys("ada", "ip:203.0.113.9", known_device=False)
    assert [scope for scope, _ in unknown] == [Scope.ACCOUNT, Scope.ACCOUNT_CLIENT, Scope.CLIENT]
    known = keys("Ada ", "device:abc", known_device=True)
    assert known == [(Scope.ACCOUNT_CLIENT, f"{account_key('ada')}|device:abc")]


def test_accounts_are_keyed_by_a_hash_of_the_name_typed():
    assert account_key(" ADA") == account_key("ada") and len(account_key("x" * 10_000)) == 64
    assert "ada" not in account_key("ada")


def test_clients_are_addresses_or_ipv6_subscriber_networks():
    assert network_client("203.0.113.9") == "ip:203.0.113.9"
    assert network_client("2001:db8:1:2:aaaa::1") == network_client("2001:db8:1:2:ffff::9") == "ip6:2001:db8:1:2::/64"
    assert network_client(None) == "ip:unknown"


def test_the_limit_locks_for_the_lockout_and_a_new_window_starts_afresh():
    pair = fail(Scope.ACCOUNT_CLIENT, Counter(), 4)
    assert pair.failures == 4 and not pair.locked(NOW)
    pair = fail(Scope.ACCOUNT_CLIENT, pair, 1)
    assert pair.locked_until == NOW + timedelta(minutes=15)
    assert not admitted({(Scope.ACCOUNT_CLIENT, "k"): pair}, NOW + timedelta(minutes=14))
    assert admitted({(Scope.ACCOUNT_CLIENT, "k"): pair}, NOW + timedelta(minutes=15))
    later = count_failure(Scope.ACCOUNT_CLIENT, pair, NOW + timedelta(minutes=16), LIMITS)
    assert later == Counter(1, NOW + timedelta(minutes=16), None)


def test_the_wider_limits_are_high():
    client = fail(Scope.CLIENT, Counter(), 29)
    account = fail(Scope.ACCOUNT, Counter(), 99)
    assert not client.locked(NOW) and not account.locked(NOW)
    assert fail(Scope.CLIENT, client, 1).locked(NOW) and fail(Scope.ACCOUNT, account, 1).locked(NOW)


def test_a_success_gives_back_the_attempt_counted_up_front():
    pair = fail(Scope.ACCOUNT_CLIENT, Counter(), 5)  # the fifth attempt was the right password
    assert give_back(Scope.ACCOUNT_CLIENT, pair, LIMITS) == Counter(0, NOW, None)
    account = fail(Scope.ACCOUNT, Counter(), 100)
    back = give_back(Scope.ACCOUNT, account, LIMITS)
    assert back.failures == 99 and back.locked_until is None  # the lock was this attempt's alone
    client = fail(Scope.CLIENT, Counter(), 3)
    assert give_back(Scope.CLIENT, client, LIMITS).failures == 2


@given(st.lists(st.integers(0, 40), max_size=60))
def test_never_more_failures_in_a_window_than_the_limit_plus_what_a_lock_refuses(minutes):
    """Attempts at arbitrary times: while locked nothing is counted (the attempt is refused), so a pair
    never shows more than ``pair`` failures in one window."""
    counter = Counter()
    for m in sorted(minutes):
        at = NOW + timedelta(minutes=m)
        if admitted({(Scope.ACCOUNT_CLIENT, "k"): counter}, at):
            counter = count_failure(Scope.ACCOUNT_CLIENT, counter, at, LIMITS)
        assert counter.failures <= LIMITS.pair
