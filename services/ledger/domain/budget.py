"""Regional budget per period: the hard limit, pacing, and threshold alerts.

Usage is allotted (outstanding budget allowances, ADR 0012) + reserved (pending holds) + posted automatic
spend + posted manual spend. Allowances and pending holds count the moment they are made (TigerBeetle's
rule; Blnk #181 is the bug of not doing so). Automatic grants and requests must fit under the limit with
everything already used; manual compensations are never denied and may push usage past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.contracts.events import DenialReason

THRESHOLDS = (50, 80, 100)


@dataclass
class BudgetState:
    region: str
    period: str
    currency: str
    limit: int | None  # None: no budget set yet (manual usage may still be recorded)
    reserved: int = 0
    posted_auto: int = 0
    posted_manual: int = 0
    released: int = 0
    breakage: int = 0
    allotted: int = 0  # granted to allowances (ADR 0012), neither charged against nor released yet
    thresholds_fired: set[int] = field(default_factory=set)
    exists: bool = True  # a row is in the database already
    dirty: bool = False

    @property
    def used(self) -> int:
        return self.allotted + self.reserved + self.posted_auto + self.posted_manual

    @property
    def remaining(self) -> int:
        return 0 if self.limit is None else max(self.limit - self.used, 0)

    @property
    def automatic_committed(self) -> int:
        """Automatic spend (held or posted) plus outstanding allowances: what the hard limit bounds."""
        return self.allotted + self.reserved + self.posted_auto

    def within_hard_limit(self) -> bool:
        return self.limit is None or self.automatic_committed <= self.limit


@dataclass(frozen=True)
class Decision:
    amount: int | None
    denial: DenialReason | None


def pacing_cap(limit: int, allowance_percent: int, elapsed: int, total: int) -> int:
    """limit * elapsed/total + allowance% of limit, rounded down (never lets through a fraction more)."""
    if total <= 0:
        return limit
    return (limit * elapsed * 100 + limit * allowance_percent * total) // (100 * total)


def decide(budget: BudgetState | None, tiers: list[int], *, allowance_percent: int | None = None,
           elapsed: int = 0, total: int = 1) -> Decision:
    """Reserve the first tier (preferred amount, then fallbacks in descending order) that fits.

    A tier fits when usage + tier <= limit, and, with pacing, <= the pacing cap. When nothing fits, the
    reason is ``paced`` if some tier would have fitted the limit alone, else ``budget_exhausted``.
    """
    if budget is None or budget.limit is None:
        return Decision(None, DenialReason.NO_BUDGET)
    if any(t <= 0 for t in tiers):
        raise ValueError("reservation amounts must be positive")
    cap = budget.limit
    if allowance_percent is not None:
        cap = min(cap, pacing_cap(budget.limit, allowance_percent, elapsed, total))
    paced = False
    for tier in tiers:
        after = budget.used + tier
        if after <= cap:
            return Decision(tier, None)
        if after <= budget.limit:
            paced = True
    return Decision(None, DenialReason.PACED if paced else DenialReason.BUDGET_EXHAUSTED)


def crossed_thresholds(budget: BudgetState) -> list[int]:
    """Thresholds reached now and not announced before this period (each fires once per period)."""
    if budget.limit is None or budget.limit == 0:
        return []
    out = [t for t in THRESHOLDS
           if t not in budget.thresholds_fired and budget.used * 100 >= t * budget.limit]
    budget.thresholds_fired.update(out)
    return out
