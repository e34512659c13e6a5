"""Spending a budget allowance (ADR 0012): the decisions auto_comp makes locally, as pure functions.

An allowance belongs to one key: (region, budget period, partition of tickets.v1, pacing percent of the
strategies that spend it). The consumer that owns the partition spends it; its whole state is a row in
auto_comp's database, locked while a batch decides, so a killed consumer's allowance is simply used (or
closed) by whoever owns the partition next.

For a compensation with tiers (preferred amount, then lower tiers when the strategy degrades):
- spend the preferred amount when the allowance has it;
- otherwise, when the ledger said recently that it has no more for this allowance (``limited_by`` with a
  ``retry_after`` still ahead: budget exhausted, paced, or no budget), spend the first lower tier that
  fits what is left, or decide ``budget_denied`` / ``paced`` without asking again;
- otherwise wait: the ticket is recorded pending and finished when the ledger answers. Once a ticket of a
  key waits, later ones of that key wait behind it (first come, first served), so none is decided on a
  shortage the ledger never confirmed.
Spending never goes beyond the grant or past ``close_at`` (the expiry less a safety margin); the database
enforces the same with a conditional update.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.contracts.events import AllowanceLimit

# A ledger answer that settles a shortage: tickets are denied (or degraded) on it until ``retry_after``.
# ``period_ended`` and ``allowance_closed`` are not shortages: the tickets go to the next allowance.
DENYING = frozenset({AllowanceLimit.BUDGET_EXHAUSTED, AllowanceLimit.PACED, AllowanceLimit.NO_BUDGET})

# A fresh allowance asks for room for this many compensations of the size it needs now.
FIRST_GRANT_COMPENSATIONS = 20
# An allowance asks for more while at least this long's spend at its recent rate is left, so that the answer
# arrives before it runs dry.
LOW_WATER_TIME = timedelta(seconds=3)


@dataclass
class Allowance:
    """One row of ``auto_comp.allowances`` as a batch holds it (locked), plus the batch's own changes."""

    allowance_id: str
    region: str
    period: str
    partition: int
    pacing_percent: int
    currency: str
    owner: str
    close_at: datetime  # spending stops here: expiry (or the period's end) less the safety margin
    open: bool = True
    granted: int = 0
    spent: int = 0
    count: int = 0
    expires_at: datetime | None = None
    request_seq: int = 0  # last request sent (0: none yet)
    answered_seq: int = 0  # last request answered
    requested_at: datetime | None = None
    request_attempts: int = 0
    request_at_least: int = 0
    request_wanted: int = 0
    limited_by: AllowanceLimit | None = None
    retry_after: datetime | None = None
    detail: str | None = None
    last_grant: int = 0
    last_granted_at: datetime | None = None
    spent_at_last_grant: int = 0
    waiting: bool = False  # tickets of its key are pending (first come, first served)
    new: bool = False
    # this batch
    spent_now: int = 0
    count_now: int = 0
    shortfall: int = 0  # what the tickets that wait in this batch need beyond what is left
    largest: int = 0  # the largest preferred amount seen in this batch
    request_now: bool = False
    answered_now: bool = False
    close_now: str | None = None  # a close reason when this batch closes it

    @property
    def key(self) -> tuple[str, str, int, int]:
        return self.region, self.period, self.partition, self.pacing_percent

    @property
    def remaining(self) -> int:
        return self.granted - self.spent

    @property
    def in_flight(self) -> bool:
        return self.request_seq > self.answered_seq

    def usable(self, now: datetime) -> bool:
        return self.open and self.close_now is None and self.granted > 0 and now < self.close_at

    def expired(self, now: datetime) -> bool:
        return self.open and now >= self.close_at

    def shortage(self, now: datetime) -> AllowanceLimit | None:
        """The ledger's last word when it still stands: no more to be had before ``retry_after``."""
        if self.limited_by in DENYING and self.retry_after is not None and now < self.retry_after:
            return self.limited_by
        return None


class TakeKind(enum.Enum):
    SPEND = "spend"
    WAIT = "wait"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Take:
    kind: TakeKind
    amount: int = 0
    degraded: bool = False
    reason: AllowanceLimit | None = None


def take(a: Allowance, tiers: list[int], now: datetime) -> Take:
    """Decide one compensation against its allowance (tiers: preferred first, strictly descending) and
    record the spend in ``a``. Callers go in ticket order."""
    if not tiers or any(t <= 0 for t in tiers):
        raise ValueError("tiers must be positive amounts")
    preferred = tiers[0]
    a.largest = max(a.largest, preferred)
    if not a.waiting:
        usable = a.usable(now)
        left = a.remaining if usable else 0
        if usable and left >= preferred:
            return _spend(a, preferred, False)
        shortage = a.shortage(now)
        if shortage is not None:
            for tier in tiers[1:]:
                if usable and left >= tier:
                    return _spend(a, tier, True)
            return Take(TakeKind.DENY, reason=shortage)
    a.waiting = True
    a.shortfall += preferred
    return Take(TakeKind.WAIT)


def _spend(a: Allowance, amount: int, degraded: bool) -> Take:
    a.spent += amount
    a.count += 1
    a.spent_now += amount
    a.count_now += 1
    return Take(TakeKind.SPEND, amount, degraded)


def plan_request(a: Allowance, now: datetime, *, horizon: timedelta) -> bool:
    """Whether to ask the ledger now, and for what (sets ``request_*``): for waiting tickets; ahead of need
    at the low-water mark (half the last grant, twice the largest compensation, or three seconds of spend at
    the recent rate, whichever is most) or with half the lease gone; never while a request is in flight or
    while the ledger's shortage answer stands."""
    if not a.open or a.close_now is not None or a.in_flight:
        return False
    if a.limited_by is not None and a.retry_after is not None and now < a.retry_after:
        return False  # the ledger said when asking again makes sense
    at_least = max(0, a.shortfall - (a.remaining if a.usable(now) else 0))
    if not a.waiting:
        if not a.usable(now):
            return False  # not granted yet and nothing waits: nothing to ask for
        # Ask while a round trip's worth of spend is still left (a few seconds at the recent rate).
        low_water = max(a.last_grant // 2, 2 * a.largest, expected_spend(a, now, LOW_WATER_TIME))
        lease = a.close_at - a.last_granted_at if a.last_granted_at is not None else timedelta(0)
        if a.remaining >= low_water and a.close_at - now > lease / 2:
            return False
    a.request_seq += 1
    a.request_now = True
    a.requested_at = now
    a.request_attempts = 1
    a.request_at_least = at_least
    # Tickets that wait now are a sign of more to come: ask for twice their need at least.
    a.request_wanted = max(2 * at_least, expected_spend(a, now, horizon), FIRST_GRANT_COMPENSATIONS * a.largest, 1)
    return True


def expected_spend(a: Allowance, now: datetime, horizon: timedelta) -> int:
    """What it will spend over ``horizon`` at the rate it spent since its last grant (integer arithmetic)."""
    if a.last_granted_at is None:
        return 0
    elapsed_us = max(100_000, _micros(now - a.last_granted_at))  # a tenth of a second at least
    spent = a.spent - a.spent_at_last_grant
    return spent * _micros(horizon) // elapsed_us


def apply_answer(a: Allowance, *, seq: int, granted: int, granted_total: int, expires_at: datetime | None,
                 limited_by: AllowanceLimit | None, retry_after: datetime | None, detail: str, now: datetime,
                 safety: timedelta, period_end: datetime) -> bool:
    """Apply one ledger answer; idempotent (a repeated or older answer changes nothing it should not).

    Returns False when the allowance is closed (nothing applies: the ledger released, or will release,
    whatever it granted when the return reaches it, which is after this request on the same partition)."""
    if not a.open:
        return False
    if granted_total > a.granted:
        a.granted = granted_total
    if expires_at is not None and (a.expires_at is None or expires_at > a.expires_at):
        a.expires_at = expires_at
        a.close_at = min(expires_at, period_end) - safety
    if seq >= a.answered_seq:
        if granted:
            a.last_grant, a.last_granted_at, a.spent_at_last_grant = granted, now, a.spent
        a.limited_by, a.retry_after, a.detail = limited_by, retry_after, detail
        a.answered_seq = max(a.answered_seq, seq)
        if a.request_seq < seq:
            a.request_seq = seq
    a.answered_now = True
    return True


def close_reason(a: Allowance, now: datetime, period_end: datetime, safety: timedelta) -> str | None:
    """Why an open allowance must close now (``expired`` / ``period_end``), or None."""
    if not a.expired(now):
        return None
    return "period_end" if a.close_at >= period_end - safety else "expired"


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
