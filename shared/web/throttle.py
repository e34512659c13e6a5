"""Sign-in throttling: who may try a password now, and what a failure costs. Pure (no I/O).

The rule (docs/audit.md, "Sign-in"; the insights dashboard signs in the same way):

- A **client** is the browser's known-device cookie when it was issued to this account by an earlier
  successful sign-in (a *known device*), otherwise the network address (IPv4, or the /64 of IPv6).
- Failures are counted per **(account, client)**: ``pair_limit`` failures within the window lock that
  pair for the lockout. Guessing from one place locks out that place only.
- Per **client** across accounts, for unknown devices: ``client_limit`` failures within the window block
  the address for the lockout (password spraying over many accounts from one place).
- Per **account**, for unknown devices: ``account_limit`` failures within the window (many addresses
  guessing one account) lock the account *for unknown devices only*. Known devices still sign in, so no
  stranger, however many addresses they have, locks an auditor out of the browser they use every day.
- Every attempt is counted as a failure *before* the password is checked (concurrent guesses cannot all
  pass a "not locked yet" check) and given back when the password was right.
- Accounts are keyed by a hash of the name typed, existing or not: an unknown account is counted and
  locked exactly like a real one, and the answer (status, page, the work done) is the same for a wrong
  password, an unknown account and a lock.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta


class Scope(enum.StrEnum):
    ACCOUNT_CLIENT = "account_client"
    CLIENT = "client"
    ACCOUNT = "account"


@dataclass(frozen=True)
class Limits:
    pair: int  # failures of one account from one client
    client: int  # failures from one unknown client across accounts
    account: int  # failures of one account from unknown clients
    window: timedelta  # failures count within this long of the first one
    lockout: timedelta  # how long a reached limit blocks


@dataclass(frozen=True)
class Counter:
    failures: int = 0
    window_started_at: datetime | None = None
    locked_until: datetime | None = None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now


Key = tuple[Scope, str]


def account_key(username: str) -> str:
    """The name typed, hashed: bounded in size, and never a password typed into the wrong field at rest."""
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()


def network_client(host: str | None) -> str:
    """A network client: the IPv4 address, or the /64 an IPv6 address belongs to (one subscriber)."""
    if not host:
        return "ip:unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"ip:{host[:64]}"
    if address.version == 6:
        return f"ip6:{ipaddress.ip_network(f'{address}/64', strict=False)}"
    return f"ip:{address}"


def keys(username: str, client: str, *, known_device: bool) -> list[Key]:
    """The counters an attempt is checked against and counted on, in lock order."""
    account = account_key(username)
    out: list[Key] = [(Scope.ACCOUNT_CLIENT, f"{account}|{client}")]
    if not known_device:
        out += [(Scope.CLIENT, client), (Scope.ACCOUNT, account)]
    return sorted(out)


def limit_of(scope: Scope, limits: Limits) -> int:
    return {Scope.ACCOUNT_CLIENT: limits.pair, Scope.CLIENT: limits.client, Scope.ACCOUNT: limits.account}[scope]


def admitted(counters: dict[Key, Counter], now: datetime) -> bool:
    """May the password be checked at all? Not while any counter the attempt is under is locked."""
    return not any(c.locked(now) for c in counters.values())


def count_failure(scope: Scope, counter: Counter, now: datetime, limits: Limits) -> Counter:
    """One more failure; a counter whose window is over starts a new one; reaching the limit locks."""
    if counter.window_started_at is None or counter.window_started_at + limits.window <= now:
        counter = Counter(0, now, None)
    failures = counter.failures + 1
    locked = now + limits.lockout if failures >= limit_of(scope, limits) else counter.locked_until
    return Counter(failures, counter.window_started_at, locked)


def give_back(scope: Scope, counter: Counter, limits: Limits) -> Counter:
    """The attempt counted up front had the right password: the pair starts afresh; the wider counters
    lose this one attempt (and a lock it alone set)."""
    if scope is Scope.ACCOUNT_CLIENT:
        return Counter(0, counter.window_started_at, None)
    failures = max(0, counter.failures - 1)
    return replace(counter, failures=failures,
                   locked_until=None if failures < limit_of(scope, limits) else counter.locked_until)


def newly_locked(before: Counter, after: Counter, now: datetime) -> bool:
    return after.locked(now) and not before.locked(now)
