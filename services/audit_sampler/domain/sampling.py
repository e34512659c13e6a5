"""Which manual compensations get audited, with what inclusion probability, and why.

Reproducibility: the uniform draw of a compensation is HMAC-SHA256(seed, compensation_id) mapped to
[0, 1), so a replay of the same events with the same policy selects exactly the same sample, whatever the
order or batching of delivery.

Inclusion probabilities are conditional on what the sampler knew when the compensation arrived (the
agent's audit history, the buyer's earlier compensations, the week's samples so far). Each draw is
independent given that history, so Horvitz-Thompson weights 1/p stay unbiased (a sequential Poisson
design); every probability is stored with the item.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from services.audit_sampler.domain.policy import Policy, SamplingMode, SamplingState, SwitchingRules

_TWO_53 = float(1 << 53)


def uniform_draw(seed: str, compensation_id: str) -> float:
    """A deterministic uniform number in [0, 1) for (seed, compensation_id); 53 bits, exact as a float."""
    digest = hmac.new(seed.encode(), compensation_id.encode(), hashlib.sha256).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / _TWO_53


@dataclass(frozen=True)
class ManualCompensation:
    """The facts of a manual compensation the sampler uses (amounts in integer minor units)."""

    compensation_id: str
    region: str
    buyer_id: str
    agent_id: str
    team: str
    reason_code: str
    kind: str
    amount_minor: int
    currency: str
    order_amount_minor: int | None
    occurred_at: datetime


@dataclass(frozen=True)
class AgentProfile:
    """What the sampler knows about the agent just before this compensation."""

    first_seen_at: datetime | None = None
    compensations_before: int = 0
    recent_results: tuple[bool, ...] = ()  # audit outcomes, oldest first; True = passed
    state: SamplingState = SamplingState.NORMAL
    sampled_this_week: int = 0


@dataclass(frozen=True)
class SamplingDecision:
    compensation_id: str
    probability: float
    draw: float
    sampled: bool
    mandatory: bool  # probability 1 by rule (amount threshold or weekly minimum); never dropped
    risk: float  # product of the risk multipliers that applied (1.0 = no risk signal)
    reasons: tuple[str, ...]
    queue: str
    state: SamplingState


def error_rate(results: Sequence[bool]) -> float:
    return 0.0 if not results else sum(1 for ok in results if not ok) / len(results)


def risk_factors(policy: Policy, comp: ManualCompensation, agent: AgentProfile,
                 buyer_last_compensated_at: datetime | None) -> list[tuple[str, float]]:
    """The risk boosts that apply, as (reason, multiplier)."""
    b = policy.boosts
    out: list[tuple[str, float]] = []
    if b.agent_error_rate is not None:
        window = agent.recent_results[-b.agent_error_rate.last_audits:]
        if len(window) >= b.agent_error_rate.min_audits and error_rate(window) > b.agent_error_rate.threshold:
            out.append(("agent_error_rate", b.agent_error_rate.multiplier))
    if b.new_agent is not None:
        young = (agent.first_seen_at is None
                 or comp.occurred_at - agent.first_seen_at < timedelta(days=b.new_agent.first_days))
        if young or agent.compensations_before < b.new_agent.first_compensations:
            out.append(("new_agent", b.new_agent.multiplier))
    if b.amount_to_order is not None and comp.order_amount_minor:
        # Integer comparison: amount / order > percent / 100 without division.
        if comp.amount_minor * 100 > b.amount_to_order.percent_above * comp.order_amount_minor:
            out.append(("amount_to_order", b.amount_to_order.multiplier))
    if b.error_prone_reasons is not None and comp.reason_code in b.error_prone_reasons.codes:
        out.append(("error_prone_reason", b.error_prone_reasons.multiplier))
    if b.repeat_buyer is not None and buyer_last_compensated_at is not None:
        gap = comp.occurred_at - buyer_last_compensated_at
        if timedelta(0) <= gap <= timedelta(days=b.repeat_buyer.within_days):
            out.append(("repeat_buyer", b.repeat_buyer.multiplier))
    if b.unusual_for_reason is not None and (usual := b.unusual_for_reason.reasons.get(comp.reason_code)):
        unusual_kind = bool(usual.kinds) and comp.kind not in usual.kinds
        cap = usual.max_amount_minor.get(comp.currency)
        unusual_amount = cap is not None and comp.amount_minor > cap
        if unusual_kind or unusual_amount:
            label = "unusual_kind" if unusual_kind and not unusual_amount else (
                "unusual_amount" if not unusual_kind else "unusual_kind_and_amount")
            out.append((label, b.unusual_for_reason.multiplier))
    return out


def decide(policy: Policy, comp: ManualCompensation, agent: AgentProfile,
           buyer_last_compensated_at: datetime | None = None) -> SamplingDecision:
    """The inclusion probability, the reproducible draw and the reasons for one compensation."""
    draw = uniform_draw(policy.seed, comp.compensation_id)
    factors = risk_factors(policy, comp, agent, buyer_last_compensated_at)
    risk = 1.0
    for _, multiplier in factors:
        risk *= multiplier
    reasons = [name for name, _ in factors]
    threshold = policy.always_audit_above_minor.get(comp.currency)
    mandatory = False
    if threshold is not None and comp.amount_minor >= threshold:
        probability, mandatory = 1.0, True
        reasons.insert(0, "amount_threshold")
    elif policy.agent_weekly_minimum and agent.sampled_this_week < policy.agent_weekly_minimum:
        probability, mandatory = 1.0, True
        reasons.insert(0, "agent_weekly_minimum")
    else:
        interval = policy.monetary_interval_minor.get(comp.currency)
        if policy.mode is SamplingMode.MONETARY_UNIT and interval:
            base = comp.amount_minor / interval
            reasons.insert(0, "monetary_unit")
        else:
            base = policy.baseline_rate
            reasons.insert(0, "baseline")
        state_multiplier = 1.0
        if agent.state is SamplingState.TIGHTENED:
            state_multiplier = policy.switching.tightened_multiplier
            reasons.append("agent_tightened")
        elif agent.state is SamplingState.REDUCED:
            state_multiplier = policy.switching.reduced_multiplier
            reasons.append("agent_reduced")
        probability = min(policy.max_rate, base * risk * state_multiplier)
    return SamplingDecision(
        compensation_id=comp.compensation_id, probability=probability, draw=draw,
        sampled=draw < probability, mandatory=mandatory, risk=risk, reasons=tuple(reasons),
        queue=policy.queue_for(risk, mandatory).name, state=agent.state)


def next_state(state: SamplingState, results: Sequence[bool], rules: SwitchingRules) -> SamplingState:
    """The agent's inspection level after its latest audit.

    ``results`` are the audits made *at the current level*, oldest first, the latest last: every rule
    reads only the run at the level it switches from, as ISO 2859-1 does. Normal -> reduced needs a run of
    passes *under normal inspection* (passes made while tightened bought the way back to normal and count
    for nothing more); normal -> tightened counts failures among the audits since normal began;
    tightened -> normal needs a run of passes under tightened; reduced -> normal a failure under reduced.
    """
    def trailing_passes() -> int:
        count = 0
        for ok in reversed(results):
            if not ok:
                break
            count += 1
        return count

    if state is SamplingState.NORMAL:
        window = results[-rules.to_tightened_window:]
        if sum(1 for ok in window if not ok) >= rules.to_tightened_failures:
            return SamplingState.TIGHTENED
        if trailing_passes() >= rules.to_reduced_passes:
            return SamplingState.REDUCED
        return state
    if state is SamplingState.TIGHTENED:
        return SamplingState.NORMAL if trailing_passes() >= rules.tightened_to_normal_passes else state
    failures = sum(1 for ok in results[-rules.to_tightened_window:] if not ok)
    return SamplingState.NORMAL if failures >= rules.reduced_to_normal_failures else state


@dataclass(frozen=True)
class InspectionLevel:
    """An agent's inspection level and how many audits were recorded since the agent entered it."""

    state: SamplingState = SamplingState.NORMAL
    audits_at_level: int = 0


def record_audit(level: InspectionLevel, results: Sequence[bool], rules: SwitchingRules) -> InspectionLevel:
    """The level after one more audit. ``results`` is the agent's remembered history, oldest first, with
    the new audit last; only its last ``audits_at_level + 1`` entries were made at the current level (a
    history shorter than that is all there is). A switch starts the new level's run at zero audits."""
    at_level = level.audits_at_level + 1
    run = results[-at_level:] if at_level <= len(results) else results
    state = next_state(level.state, run, rules)
    return InspectionLevel(state, at_level if state is level.state else 0)


def replay_levels(results: Sequence[bool], rules: SwitchingRules) -> InspectionLevel:
    """The level a history of audits (oldest first) leads to from normal inspection, as for a new agent."""
    level = InspectionLevel()
    for i in range(1, len(results) + 1):
        level = record_audit(level, results[:i], rules)
    return level


def week_start(day: date) -> date:
    """Monday of the ISO week containing ``day`` (weeks are cut in the region's time zone by the caller)."""
    return day - timedelta(days=day.weekday())
