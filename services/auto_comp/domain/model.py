"""The strategy model: what a strategy file says once it has been validated."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

from shared.contracts.events import CompensationKind, PartyType, TicketReason
from shared.money import Money, Rounding


class Mode(enum.StrEnum):
    ACTIVE = "active"
    SHADOW = "shadow"  # decide and record everything, issue nothing


class Measure(enum.StrEnum):
    """Evidence a strategy can put thresholds on; all are whole calendar days in the region's time zone."""

    DAYS_LATE = "days_late"  # delivered date - promised delivery date
    DAYS_SINCE_ORDER = "days_since_order"  # ticket date - order date, only while not delivered
    DAYS_DISPATCH_LATE = "days_dispatch_late"  # shipped date (or ticket date) - dispatch due date
    DAYS_SINCE_PROMISED = "days_since_promised"  # ticket date - promised date, only while not delivered


class Basis(enum.StrEnum):
    ORDER = "order"  # the whole order value
    AFFECTED = "affected"  # the affected items' value, falling back to the order value when not given


class LiabilityCondition(enum.StrEnum):
    SELLER_LATE_DISPATCH = "seller_late_dispatch"
    CARRIER_DELAY = "carrier_delay"
    OTHERWISE = "otherwise"


class EvidenceFallback(enum.StrEnum):
    """What a conditional liability rule does when the ticket lacks the carrier hand-off time (``shipped_at``),
    the evidence both conditions are judged on. Stated in every such rule: no silent default (issue 13)."""

    NEXT_RULE = "next_rule"  # the condition does not hold: the next rule decides
    APPLIES = "applies"  # the condition holds: charge as this rule says
    TICKET_TIME = "ticket_time"  # not handed over by the ticket: judge the hand-off as the ticket's time


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds; None means unbounded on that side."""

    min: int | None = None
    max: int | None = None

    def contains(self, value: int) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.max is None:
            return f">= {self.min}"
        if self.min is None:
            return f"<= {self.max}"
        return f"{self.min}..{self.max}"


@dataclass(frozen=True, slots=True)
class Match:
    reasons: frozenset[TicketReason]
    thresholds: dict[Measure, Range] = field(default_factory=dict)
    order_value: tuple[Money | None, Money | None] = (None, None)
    buyer_segments: frozenset[str] | None = None  # None: any segment (or none given)


@dataclass(frozen=True, slots=True)
class Formula:
    """Fixed amount, or percent of the basis clamped to [floor, cap]."""

    fixed: Money | None = None
    percent: Fraction | None = None
    basis: Basis = Basis.ORDER
    floor: Money | None = None
    cap: Money | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    severity: Range
    formula: Formula


@dataclass(frozen=True, slots=True)
class Compensation:
    kind: CompensationKind
    rounding: Rounding
    formula: Formula | None = None  # exactly one of formula / tiers
    tiers: tuple[Tier, ...] = ()
    severity: Measure | None = None  # what the tiers are cut on
    validity_days: int | None = None  # vouchers
    min_spend: Money | None = None  # vouchers


@dataclass(frozen=True, slots=True)
class Share:
    party: PartyType
    percent: int


@dataclass(frozen=True, slots=True)
class LiabilityRule:
    when: LiabilityCondition
    shares: tuple[Share, ...]
    if_handoff_missing: EvidenceFallback | None = None  # required for every condition but ``otherwise``


@dataclass(frozen=True, slots=True)
class AbuseGuard:
    window_days: int
    max_count: int | None
    max_amount: Money | None


@dataclass(frozen=True, slots=True)
class Budget:
    pacing_allowance_percent: int | None = None  # None: no pacing
    degrade_to_lower_tier: bool = False


@dataclass(frozen=True, slots=True)
class Strategy:
    id: str
    version: int
    scenario: str
    regions: frozenset[str]
    currency: str
    effective_from: datetime
    effective_to: datetime | None
    enabled: bool
    mode: Mode
    priority: int
    match: Match
    compensation: Compensation
    liability: tuple[LiabilityRule, ...]
    abuse_guard: AbuseGuard | None
    holdout_basis_points: int  # 0..10000; percent * 100 so "2.5" percent stays exact
    budget: Budget
    source: str  # the file it came from

    def effective_at(self, instant: datetime) -> bool:
        return self.effective_from <= instant and (self.effective_to is None or instant < self.effective_to)


@dataclass(frozen=True, slots=True)
class StrategySet:
    """Every strategy of one load, immutable; ``version`` is a content hash so replicas can compare."""

    strategies: tuple[Strategy, ...]
    version: str
    files: tuple[str, ...] = ()
    _by_region_reason: dict[tuple[str, TicketReason], tuple[Strategy, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Deciding looks strategies up per ticket: index them once, highest priority first.
        index: dict[tuple[str, TicketReason], list[Strategy]] = {}
        for s in sorted(self.strategies, key=lambda s: -s.priority):
            for code in s.regions:
                for reason in s.match.reasons:
                    index.setdefault((code, reason), []).append(s)
        object.__setattr__(self, "_by_region_reason", {k: tuple(v) for k, v in index.items()})

    def covering(self, region: str, reason: TicketReason) -> tuple[Strategy, ...]:
        """Strategies of this region and reason, highest priority first (enabled or not, any dates)."""
        return self._by_region_reason.get((region, reason), ())

    def for_region(self, region: str) -> list[Strategy]:
        return [s for s in self.strategies if region in s.regions]

    def get(self, strategy_id: str) -> Strategy | None:
        return next((s for s in self.strategies if s.id == strategy_id), None)
