"""The decision engine: which strategy applies to a ticket, for how much, charged to whom.

Day counts are whole calendar days between two local dates in the region's time zone (a parcel promised
on Monday and delivered on Thursday is 3 days late, whatever the hours). The engine is deterministic: it
reads the ticket's own occurred_at as "now", so a replayed ticket gets the same answer.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.auto_comp.domain.model import (
    AbuseGuard,
    Basis,
    EvidenceFallback,
    Formula,
    LiabilityCondition,
    LiabilityRule,
    Measure,
    Mode,
    Strategy,
    StrategySet,
    Tier,
)
from shared.contracts.events import CompensationKind, PartyType, TicketOpened
from shared.money import Money, Rounding
from shared.regions import Region


class Outcome(enum.StrEnum):
    ISSUED = "issued"
    NOT_ELIGIBLE = "not_eligible"
    CAPPED = "capped_by_abuse_guard"
    HOLDOUT = "holdout"
    BUDGET_DENIED = "budget_denied"
    PACED = "paced"
    PENDING_BUDGET = "pending_budget"  # reservation requested, the ledger has not answered yet
    # No answer was applied before the reservation's expiry: nothing issued, the ledger releases it.
    RESERVATION_EXPIRED = "reservation_expired"
    WOULD_ISSUE = "would_issue"  # shadow strategies only: everything passed, nothing was issued


FINAL_OUTCOMES = frozenset(Outcome) - {Outcome.PENDING_BUDGET}


# ------------------------------------------------------------------ evidence


def local_day_diff(region: Region, later: datetime, earlier: datetime) -> int:
    """Calendar days from earlier to later, both read as dates on the region's wall clock."""
    return (region.local(later).date() - region.local(earlier).date()).days


def measures(ticket: TicketOpened, region: Region, occurred_at: datetime) -> dict[Measure, int | None]:
    """Each measure a strategy can test, or None when the ticket lacks the evidence for it."""
    t = ticket
    return {
        Measure.DAYS_LATE: (local_day_diff(region, t.delivered_at, t.promised_delivery_at)
                            if t.delivered_at and t.promised_delivery_at else None),
        Measure.DAYS_SINCE_ORDER: (local_day_diff(region, occurred_at, t.order_placed_at)
                                   if t.delivered_at is None and t.order_placed_at else None),
        Measure.DAYS_DISPATCH_LATE: (local_day_diff(region, t.shipped_at or occurred_at, t.dispatch_due_at)
                                     if t.dispatch_due_at else None),
        Measure.DAYS_SINCE_PROMISED: (local_day_diff(region, occurred_at, t.promised_delivery_at)
                                      if t.delivered_at is None and t.promised_delivery_at else None),
    }


def dispatched_late(ticket: TicketOpened, handed_over_at: datetime) -> bool:
    """Handed to the carrier after the dispatch deadline (no deadline: never late)."""
    return ticket.dispatch_due_at is not None and handed_over_at > ticket.dispatch_due_at


def condition_holds(rule: LiabilityRule, ticket: TicketOpened, occurred_at: datetime) -> bool:
    """Whether a liability rule's condition holds for the ticket.

    Both conditions are judged on the carrier hand-off time (``shipped_at``). When the ticket lacks it, the
    rule's own ``if_handoff_missing`` decides (the loader requires one): the next rule, the rule applies, or
    the hand-off is taken as the ticket's time (not handed over when the buyer complained).
    """
    when = rule.when
    if when is LiabilityCondition.OTHERWISE:
        return True
    handed_over_at = ticket.shipped_at
    if handed_over_at is None:
        fallback = rule.if_handoff_missing
        if fallback is EvidenceFallback.APPLIES:
            return True
        if fallback is not EvidenceFallback.TICKET_TIME:
            return False  # next_rule
        handed_over_at = occurred_at
    if when is LiabilityCondition.SELLER_LATE_DISPATCH:
        return dispatched_late(ticket, handed_over_at)
    # carrier_delay: a carrier had the parcel and the seller handed it over on time
    return ticket.carrier_id is not None and not dispatched_late(ticket, handed_over_at)


# ------------------------------------------------------------------ amounts


def formula_amount(formula: Formula, ticket: TicketOpened, rounding: Rounding) -> Money:
    """Fixed, or percent of the basis rounded to whole minor units by ``rounding``, then floor and cap."""
    if formula.fixed is not None:
        return formula.fixed
    assert formula.percent is not None
    order = Money(ticket.order_amount.amount_minor, ticket.order_amount.currency)
    basis = order
    if formula.basis is Basis.AFFECTED and ticket.affected_amount is not None:
        basis = Money(ticket.affected_amount.amount_minor, ticket.affected_amount.currency)
    # percent / 100 of the basis; round_ratio gives the same integer for an unreduced fraction
    raw = Money(round_ratio(basis.minor * formula.percent.numerator, formula.percent.denominator * 100, rounding),
                basis.currency)
    return raw.clamp(formula.floor, formula.cap)


def round_ratio(numerator: int, denominator: int, rounding: Rounding) -> int:
    """numerator / denominator (denominator > 0) rounded to an integer by the rule, in integer arithmetic
    (the same results as ``shared.money.round_fraction``, without the Decimal context on the hot path)."""
    quotient, remainder = divmod(numerator, denominator)  # floor division: remainder >= 0
    if remainder == 0 or rounding is Rounding.DOWN:
        return quotient
    if rounding is Rounding.UP:
        return quotient + 1
    twice = 2 * remainder
    if twice > denominator:
        return quotient + 1
    if twice < denominator:
        return quotient
    if rounding is Rounding.HALF_EVEN:
        return quotient + (quotient % 2)
    return quotient + 1 if numerator > 0 else quotient  # HALF_UP: half rounds away from zero


@dataclass(frozen=True, slots=True)
class PartyShare:
    party: PartyType
    party_id: str | None
    percent: int


@dataclass(frozen=True, slots=True)
class Proposal:
    strategy: Strategy
    scenario: str
    tier: str | None
    amount: Money
    fallback_amounts: tuple[Money, ...]  # lower tiers, strictly descending, for the ledger to degrade to
    kind: CompensationKind
    liability_rule: LiabilityCondition
    shares: tuple[PartyShare, ...]
    validity_days: int | None
    min_spend: Money | None


def split_liability(amount: Money, shares: Sequence[PartyShare]) -> list[tuple[PartyShare, Money]]:
    """Parts that sum exactly to the amount (largest remainder; earlier parties win ties)."""
    parts = amount.allocate([s.percent for s in shares])
    return list(zip(shares, parts, strict=True))


def liability_for(strategy: Strategy, ticket: TicketOpened, occurred_at: datetime
                  ) -> tuple[LiabilityCondition, tuple[PartyShare, ...]]:
    for rule in strategy.liability:  # conditions are checked only as far as the first rule that holds
        when = rule.when
        if not condition_holds(rule, ticket, occurred_at):
            continue
        if ticket.carrier_id is None and any(s.party is PartyType.CARRIER for s in rule.shares):
            continue  # no carrier to charge: the next rule decides
        return when, tuple(PartyShare(s.party, _party_id(s.party, ticket), s.percent) for s in rule.shares)
    # The loader guarantees a last "otherwise" rule; it can only be skipped for a missing carrier id.
    return LiabilityCondition.OTHERWISE, (PartyShare(PartyType.PLATFORM, None, 100),)


def _party_id(party: PartyType, ticket: TicketOpened) -> str | None:
    if party is PartyType.SELLER:
        return ticket.seller_id
    if party is PartyType.CARRIER:
        return ticket.carrier_id
    return None


# ------------------------------------------------------------------ matching


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One strategy's (or no strategy's) verdict on a ticket before the abuse guard and the budget."""

    strategy: Strategy | None
    proposal: Proposal | None
    failed_rule: str | None = None
    detail: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def eligible(self) -> bool:
        return self.proposal is not None


def _inputs(ticket: TicketOpened, found: dict[Measure, int | None]) -> dict[str, Any]:
    return {
        "reason": ticket.reason.value,
        "order_amount_minor": ticket.order_amount.amount_minor,
        "affected_amount_minor": ticket.affected_amount.amount_minor if ticket.affected_amount else None,
        "currency": ticket.order_amount.currency,
        "buyer_segment": ticket.buyer_segment,
        **{_MEASURE_NAMES[m]: v for m, v in found.items() if v is not None},
    }


_MEASURE_NAMES = {m: m.value for m in Measure}


def _select_tier(strategy: Strategy, found: dict[Measure, int | None]) -> tuple[Tier | None, str | None]:
    comp = strategy.compensation
    if not comp.tiers:
        return None, None
    assert comp.severity is not None
    value = found[comp.severity]
    if value is None:
        return None, f"no {comp.severity.value} evidence to pick a tier"
    for tier in comp.tiers:
        if tier.severity.contains(value):
            return tier, None
    return None, f"no tier covers {comp.severity.value} = {value}"


def evaluate_strategy(strategy: Strategy, ticket: TicketOpened, region: Region, occurred_at: datetime,
                      found: dict[Measure, int | None] | None = None,
                      inputs: dict[str, Any] | None = None) -> Evaluation:
    """``found`` and ``inputs`` (read-only, shared by every strategy a ticket is tried on) are computed
    when not given."""
    found = found if found is not None else measures(ticket, region, occurred_at)
    inputs = inputs if inputs is not None else _inputs(ticket, found)

    def fail(rule: str, detail: str) -> Evaluation:
        return Evaluation(strategy, None, rule, detail, inputs)

    m = strategy.match
    if ticket.reason not in m.reasons:
        return fail("match.reasons", f"reason {ticket.reason.value} is not covered")
    if m.buyer_segments is not None and ticket.buyer_segment not in m.buyer_segments:
        return fail("match.buyer_segments", f"buyer segment {ticket.buyer_segment!r} is not in "
                                            f"{sorted(m.buyer_segments)}")
    order = Money(ticket.order_amount.amount_minor, ticket.order_amount.currency)
    if order.currency != strategy.currency:
        return fail("currency", f"order in {order.currency}, strategy in {strategy.currency}")
    lo, hi = m.order_value
    if lo is not None and order < lo:
        return fail("match.order_value.min", f"order value {order.format()} is below {lo.format()}")
    if hi is not None and order > hi:
        return fail("match.order_value.max", f"order value {order.format()} is above {hi.format()}")
    for measure, bounds in m.thresholds.items():
        value = found[measure]
        if value is None:
            return fail(f"match.thresholds.{measure.value}", f"the ticket lacks the evidence for {measure.value}")
        if not bounds.contains(value):
            return fail(f"match.thresholds.{measure.value}",
                        f"{measure.value} = {value}, needs {bounds.describe()}")
    tier, why = _select_tier(strategy, found)
    if why is not None:
        return fail("compensation.tiers", why)
    comp = strategy.compensation
    formula = tier.formula if tier is not None else comp.formula
    assert formula is not None
    amount = formula_amount(formula, ticket, comp.rounding)
    if amount.minor <= 0:
        return fail("compensation.amount", "the amount rounds to zero")
    fallbacks: list[Money] = []
    if tier is not None and strategy.budget.degrade_to_lower_tier:
        previous = amount
        for lower in reversed(comp.tiers[:comp.tiers.index(tier)]):
            cheaper = formula_amount(lower.formula, ticket, comp.rounding)
            if 0 < cheaper.minor < previous.minor:
                fallbacks.append(cheaper)
                previous = cheaper
    rule, shares = liability_for(strategy, ticket, occurred_at)
    proposal = Proposal(strategy, strategy.scenario, tier.name if tier else None, amount, tuple(fallbacks[:5]),
                        comp.kind, rule, shares, comp.validity_days, comp.min_spend)
    return Evaluation(strategy, proposal, None, "matched", inputs)


@dataclass(frozen=True, slots=True)
class TicketEvaluation:
    live: Evaluation  # from the active strategies: the one decision of record
    shadows: tuple[Evaluation, ...]  # every shadow strategy that covers the reason, each on its own


def candidates(strategy_set: StrategySet, region: str, ticket: TicketOpened, occurred_at: datetime
               ) -> list[Strategy]:
    return [s for s in strategy_set.covering(region, ticket.reason) if s.enabled and s.effective_at(occurred_at)]


def evaluate_ticket(strategy_set: StrategySet, ticket: TicketOpened, region: Region,
                    occurred_at: datetime) -> TicketEvaluation:
    """The highest-priority active strategy that matches wins; when none matches, the decision names the
    rule that failed for the highest-priority candidate."""
    found = measures(ticket, region, occurred_at)
    inputs = _inputs(ticket, found)
    pool = candidates(strategy_set, region.code, ticket, occurred_at)
    active = [s for s in pool if s.mode is Mode.ACTIVE]
    shadows = tuple(evaluate_strategy(s, ticket, region, occurred_at, found, inputs)
                    for s in pool if s.mode is Mode.SHADOW)
    first_failure: Evaluation | None = None
    for strategy in active:
        ev = evaluate_strategy(strategy, ticket, region, occurred_at, found, inputs)
        if ev.eligible:
            return TicketEvaluation(ev, shadows)
        first_failure = first_failure or ev
    if first_failure is None:
        first_failure = Evaluation(None, None, "strategy", f"no active strategy for {ticket.reason.value} in "
                                                           f"{region.code} at {occurred_at.isoformat()}",
                                   inputs)
    return TicketEvaluation(first_failure, shadows)


# ------------------------------------------------------------------ holdout and abuse guard


def holdout_bucket(strategy_id: str, buyer_id: str) -> int:
    """A stable bucket 0..9999 per (strategy, buyer): the same buyer stays in or out across replicas,
    restarts and replays, and a new strategy reshuffles buyers independently of the others."""
    digest = hashlib.sha256(f"{strategy_id}\x1f{buyer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000


def in_holdout(strategy: Strategy, buyer_id: str) -> bool:
    return holdout_bucket(strategy.id, buyer_id) < strategy.holdout_basis_points


@dataclass(frozen=True, slots=True)
class Granted:
    """An automatic compensation already counted against a buyer (pending or issued)."""

    occurred_at: datetime
    amount: Money


def abuse_guard_verdict(guard: AbuseGuard | None, history: Iterable[Granted], occurred_at: datetime,
                        amount: Money) -> str | None:
    """Why the guard stops this compensation, or None.

    Counted: the buyer's compensations whose tickets occurred within ``window_days`` of this ticket, on
    either side. Counting both sides makes the limit hold for every window of that length whatever order
    the tickets are processed in (the last one processed of any set within a window sees all the others).
    """
    if guard is None:
        return None
    window = timedelta(days=guard.window_days)
    near = [g for g in history if abs(g.occurred_at - occurred_at) < window and g.amount.currency ==
            amount.currency]
    if guard.max_count is not None and len(near) + 1 > guard.max_count:
        return f"{len(near)} compensation(s) within {guard.window_days} days; max {guard.max_count}"
    if guard.max_amount is not None:
        total = sum((g.amount for g in near), Money.zero(amount.currency))
        if total + amount > guard.max_amount:
            return (f"{total.format()} already within {guard.window_days} days; {amount.format()} more "
                    f"exceeds max {guard.max_amount.format()}")
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    evaluation: Evaluation
    failed_rule: str | None
    detail: str


def settle(ev: Evaluation, *, buyer_id: str, occurred_at: datetime, order_taken: bool,
           history: Iterable[Granted]) -> Verdict:
    """Everything after matching except the budget: one compensation per order and scenario, the abuse
    guard, then the holdout, so the control group is exactly the buyers who would have been compensated."""
    if ev.proposal is None:
        return Verdict(Outcome.NOT_ELIGIBLE, ev, ev.failed_rule, ev.detail)
    p = ev.proposal
    if order_taken:
        return Verdict(Outcome.NOT_ELIGIBLE, ev, "one_per_order_and_scenario",
                       f"the order already has a {p.scenario} compensation")
    why = abuse_guard_verdict(p.strategy.abuse_guard, history, occurred_at, p.amount)
    if why is not None:
        return Verdict(Outcome.CAPPED, ev, "abuse_guard", why)
    if in_holdout(p.strategy, buyer_id):
        return Verdict(Outcome.HOLDOUT, ev, "holdout",
                       f"buyer in the {p.strategy.holdout_basis_points / 100:g}% control group")
    if p.strategy.mode is Mode.SHADOW:
        return Verdict(Outcome.WOULD_ISSUE, ev, None, f"shadow: would request {p.amount.format()}")
    return Verdict(Outcome.PENDING_BUDGET, ev, None, f"budget requested for {p.amount.format()}")
