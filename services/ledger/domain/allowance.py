"""Budget allowances (ADR 0012): how much the ledger grants auto_comp to spend locally, and until when.

A grant is held against the budget at once (``allotted``), so the hard limit counts it the moment it is
made, whether or not auto_comp spends it: automatic spend + outstanding allowances <= limit. It is sized by
the pacing rule of today (usage <= limit x elapsed fraction + the strategies' pacing percent of the limit,
at most the limit), measured on usage *including* every outstanding allowance, at the time of the grant;
pacing can therefore only be stricter than a per-voucher check made later in the lease.

Sizing, for a request that needs ``at_least`` now and expects to spend ``wanted`` before it expires:
- room = min(limit, pace cap now) - usage; nothing when room <= 0 (``budget_exhausted`` when the limit
  itself is reached, else ``paced``);
- the part waiting tickets need (``at_least``) is granted in full when it fits the room; beyond it, at most
  ``share_percent`` of the room left after it, so grants shrink as the budget nears its limit and the
  room is shared by the allowances of every partition;
- near the end of the period (a grant whose lease would reach into the last two leases), the extra part
  is capped so that all outstanding allowances of the budget stay within ``period_end_percent`` of the
  limit: unspent allowance stranded at the period's end stays within that percent (ADR 0012);
- the expiry is ``now + lease``, no later than the period's end; closer than ``min_lease`` to the end,
  nothing is granted for that period (``period_ended``; auto_comp moves on to the next period).
Whatever a request does not get is explained by ``limited_by`` and ``retry_after``: when asking again can
give more (for pacing: when the pace line will have room for ``at_least``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.ledger.domain.budget import BudgetState, pacing_cap
from shared.contracts.events import AllowanceLimit
from shared.money import Money
from shared.periods import elapsed_fraction


@dataclass(frozen=True)
class GrantPolicy:
    lease: timedelta = timedelta(seconds=60)
    share_percent: int = 10
    period_end_percent: int = 1
    retry: timedelta = timedelta(seconds=5)
    min_lease: timedelta = timedelta(seconds=15)


@dataclass(frozen=True)
class GrantDecision:
    amount: int
    expires_at: datetime | None
    limited_by: AllowanceLimit | None
    retry_after: datetime | None
    pace_cap: int  # usage the pace line allows now (the limit when not paced); 0 without a budget
    detail: str


def size_grant(budget: BudgetState | None, *, at_least: int, wanted: int, pacing_percent: int, now: datetime,
               start: datetime, end: datetime, policy: GrantPolicy) -> GrantDecision:
    """What to grant for one request (pure; the budget is the locked row, ``allotted`` included)."""
    if at_least < 0 or wanted <= 0 or at_least > wanted:
        raise ValueError("0 <= at_least <= wanted and wanted > 0")
    if budget is None or budget.limit is None:
        return GrantDecision(0, None, AllowanceLimit.NO_BUDGET, now + policy.retry, 0,
                             "no budget is set for this region and period")
    limit = budget.limit
    elapsed, total = elapsed_fraction(now, start, end)
    cap = min(limit, pacing_cap(limit, pacing_percent, elapsed, total))
    money = _formatter(budget.currency)
    if end - now < policy.min_lease:
        return GrantDecision(0, None, AllowanceLimit.PERIOD_ENDED, max(end, now + policy.retry), cap,
                             f"the period {budget.period} ends at {end.isoformat()}: too close to grant for it")
    used = budget.used
    room_limit, room = limit - used, cap - used
    if room <= 0:
        why = AllowanceLimit.BUDGET_EXHAUSTED if room_limit <= 0 else AllowanceLimit.PACED
        return GrantDecision(0, None, why, _retry_after(why, budget, max(at_least, 1), pacing_percent, now, start,
                                                        end, policy), cap,
                             _why(why, used, limit, cap, pacing_percent, money))
    base = min(at_least, room)
    extra = min(wanted - base, (room - base) * policy.share_percent // 100)
    expires = min(now + policy.lease, end)
    if end - now <= 2 * policy.lease:
        reserve = limit * policy.period_end_percent // 100
        extra = min(extra, max(0, reserve - budget.allotted))
    amount = base + max(extra, 0)
    limited: AllowanceLimit | None = None
    retry_after = None
    detail = f"granted {money(amount)} until {expires.isoformat()}"
    if base < at_least:
        limited = AllowanceLimit.BUDGET_EXHAUSTED if room_limit <= room else AllowanceLimit.PACED
        retry_after = _retry_after(limited, budget, at_least, pacing_percent, now, start, end, policy)
        detail += f"; {money(at_least)} asked for, " + _why(limited, used, limit, cap, pacing_percent, money)
    if amount == 0:
        # Only reachable near the period's end with other allowances holding the whole reserve.
        limited = limited or AllowanceLimit.PERIOD_ENDED
        retry_after = retry_after or now + policy.retry
        return GrantDecision(0, None, limited, retry_after, cap,
                             f"the period's last allowances hold its reserve ({money(budget.allotted)} outstanding)")
    return GrantDecision(amount, expires, limited, retry_after, cap, detail)


def _retry_after(why: AllowanceLimit, budget: BudgetState, need: int, pacing_percent: int, now: datetime,
                 start: datetime, end: datetime, policy: GrantPolicy) -> datetime:
    """Budget exhausted: after the retry interval (a return or a raised limit may free room). Paced: when
    the pace line leaves room for ``need`` (exactly, in whole microseconds), at least the retry interval."""
    soon = now + policy.retry
    if why is not AllowanceLimit.PACED or budget.limit is None or budget.limit == 0:
        return soon
    limit, target = budget.limit, budget.used + need
    _, total = elapsed_fraction(now, start, end)
    # pacing_cap(elapsed) >= target  <=>  limit*elapsed*100 + limit*pct*total >= target*100*total
    numerator = target * 100 * total - limit * pacing_percent * total
    elapsed = max(0, -(-numerator // (limit * 100)))
    at = start + timedelta(microseconds=min(elapsed, total))
    return min(max(at, soon), max(end, soon))


def _why(why: AllowanceLimit, used: int, limit: int, cap: int, pacing_percent: int, money: Any) -> str:
    if why is AllowanceLimit.PACED:
        return (f"paced: usage {money(used)} is at the pace line {money(cap)} ({pacing_percent}% allowance "
                f"over the elapsed share of {money(limit)})")
    return f"budget exhausted: usage {money(used)} of {money(limit)}"


def _formatter(currency: str) -> Any:
    return lambda minor: Money(minor, currency).format()


@dataclass
class Allowance:
    """The ledger's record of one allowance: what it granted, what was charged against it, and, once
    auto_comp returned it, what auto_comp spent (``spent_reported``) and what the ledger released.

    Every granted unit is at any time exactly one of: charged (a compensation's hold or posting), spent but
    not charged yet (after the return: ``spent_reported - charged``), released (returned unspent), or held
    by the open allowance (``granted - charged`` before the return). ``outstanding`` is what the budget's
    ``allotted`` counts for it."""

    allowance_id: str
    region: str
    period: str
    currency: str
    pacing_percent: int
    owner: str
    returned: bool = False
    granted: int = 0
    charged: int = 0
    charged_count: int = 0
    released: int = 0
    spent_reported: int | None = None
    count_reported: int | None = None
    expires_at: datetime | None = None
    last_seq: int = 0
    return_reason: str | None = None
    returned_at: datetime | None = None
    answers: dict[int, Any] = field(default_factory=dict)  # request seq -> the answer given (loaded ones)
    new: bool = False
    dirty: bool = False
    charged_delta: int = 0  # delta mode: charges of this batch, added under the row lock at the end
    count_delta: int = 0

    @property
    def outstanding(self) -> int:
        return self.granted - self.released - self.charged

    @property
    def spendable_cap(self) -> int:
        """The most that may ever be charged against it: the grant, or what auto_comp reported spent."""
        return self.spent_reported if self.spent_reported is not None else self.granted

    @property
    def settled(self) -> bool:
        return self.returned and self.charged == self.spent_reported and self.charged_count == self.count_reported
