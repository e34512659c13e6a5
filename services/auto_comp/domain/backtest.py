"""Backtest: run strategies over historical tickets exactly as the service would decide them, without the
ledger. Every compensation that would be requested is counted as granted (the budget is not simulated:
the report projects the budget each period would use instead)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any

from services.auto_comp.domain.engine import (
    Granted,
    Outcome,
    TicketEvaluation,
    Verdict,
    evaluate_ticket,
    settle,
    split_liability,
)
from services.auto_comp.domain.model import StrategySet
from shared.contracts.events import TicketOpened
from shared.money import Money, round_fraction
from shared.regions import Region
from shared.regions import region as region_of


@dataclass(frozen=True, slots=True)
class HistoricalTicket:
    region: str
    occurred_at: datetime
    ticket: TicketOpened


@dataclass
class Bucket:
    count: int = 0
    total_minor: int = 0

    def add(self, minor: int) -> None:
        self.count += 1
        self.total_minor += minor


@dataclass
class RegionReport:
    region: str
    currency: str
    tickets: int = 0
    matched: int = 0
    compensations: int = 0
    total_minor: int = 0
    removed_by_abuse_guard: int = 0
    removed_by_holdout: int = 0
    removed_one_per_order: int = 0
    not_eligible: Counter[str] = field(default_factory=Counter)
    by_scenario: dict[str, Bucket] = field(default_factory=lambda: defaultdict(Bucket))
    by_tier: dict[str, Bucket] = field(default_factory=lambda: defaultdict(Bucket))
    by_period: dict[str, Bucket] = field(default_factory=lambda: defaultdict(Bucket))
    # Who would be charged: by the liability rule that applied (its hand-off fallback included, the same
    # engine call as live decisions), and the minor units each party type would carry.
    by_liability_rule: dict[str, Bucket] = field(default_factory=lambda: defaultdict(Bucket))
    by_liable_party: Counter[str] = field(default_factory=Counter)
    shadow: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    shadow_total_minor: Counter[str] = field(default_factory=Counter)

    @property
    def average_minor(self) -> int:
        """Half-up rounded mean of the compensations, in minor units."""
        return round_fraction(Fraction(self.total_minor, self.compensations)) if self.compensations else 0

    def as_dict(self) -> dict[str, Any]:
        def fmt(minor: int) -> str:
            return Money(minor, self.currency).format()

        def buckets(d: dict[str, Bucket]) -> dict[str, Any]:
            return {k: {"count": b.count, "total_minor": b.total_minor, "total": fmt(b.total_minor)}
                    for k, b in sorted(d.items())}

        return {
            "region": self.region, "currency": self.currency, "tickets": self.tickets, "matched": self.matched,
            "compensations": self.compensations, "total_minor": self.total_minor, "total": fmt(self.total_minor),
            "average_minor": self.average_minor, "average": fmt(self.average_minor),
            "removed_by_abuse_guard": self.removed_by_abuse_guard, "removed_by_holdout": self.removed_by_holdout,
            "removed_one_per_order_and_scenario": self.removed_one_per_order,
            "not_eligible_by_rule": dict(sorted(self.not_eligible.items())),
            "by_scenario": buckets(self.by_scenario), "by_tier": buckets(self.by_tier),
            "budget_by_period": buckets(self.by_period),
            "by_liability_rule": buckets(self.by_liability_rule),
            "by_liable_party": {k: {"total_minor": v, "total": fmt(v)}
                                for k, v in sorted(self.by_liable_party.items())},
            "shadow": {sid: {**dict(sorted(c.items())), "would_issue_total_minor": self.shadow_total_minor[sid]}
                       for sid, c in sorted(self.shadow.items())},
        }


@dataclass(frozen=True, slots=True)
class Replayed:
    """One historical ticket decided by the live strategies of a set: ``verdict.outcome`` is
    ``pending_budget`` for a compensation that would be requested (counted as granted: the budget is not
    simulated), else the final outcome."""

    ticket: HistoricalTicket
    region: Region
    result: TicketEvaluation
    verdict: Verdict


def replay(strategies: StrategySet, tickets: Iterable[HistoricalTicket]) -> Iterator[Replayed]:
    """The live decisions exactly as the service takes them: oldest first (the ticket id breaks ties so the
    run is reproducible), a replayed ticket id skipped, each buyer's grants feeding the abuse guard and each
    order's the one-per-order rule. The backtest and the what-if both read it."""
    history: dict[tuple[str, str], list[Granted]] = defaultdict(list)
    orders: set[tuple[str, str, str]] = set()
    seen: set[str] = set()
    for h in sorted(tickets, key=lambda x: (x.occurred_at, x.ticket.ticket_id)):
        if h.ticket.ticket_id in seen:
            continue  # a replayed ticket gets the decision it already has
        seen.add(h.ticket.ticket_id)
        reg = region_of(h.region)
        t = h.ticket
        result = evaluate_ticket(strategies, t, reg, h.occurred_at)
        live = result.live
        taken = live.proposal is not None and (reg.code, t.order_id, live.proposal.scenario) in orders
        verdict = settle(live, buyer_id=t.buyer_id, occurred_at=h.occurred_at, order_taken=taken,
                         history=history[(reg.code, t.buyer_id)])
        if verdict.outcome is Outcome.PENDING_BUDGET:
            p = live.proposal
            assert p is not None
            history[(reg.code, t.buyer_id)].append(Granted(h.occurred_at, p.amount))
            orders.add((reg.code, t.order_id, p.scenario))
        yield Replayed(h, reg, result, verdict)


def run_backtest(strategies: StrategySet, tickets: Iterable[HistoricalTicket]) -> list[RegionReport]:
    reports: dict[tuple[str, str], RegionReport] = {}
    shadow_history: dict[tuple[str, str, str], list[Granted]] = defaultdict(list)
    shadow_orders: set[tuple[str, str, str, str]] = set()
    for r in replay(strategies, tickets):
        h, reg, result, verdict = r.ticket, r.region, r.result, r.verdict
        t = h.ticket
        report = reports.setdefault((reg.code, t.order_amount.currency), RegionReport(reg.code,
                                                                                      t.order_amount.currency))
        report.tickets += 1
        if result.live.proposal is not None:
            report.matched += 1
        if verdict.outcome is Outcome.PENDING_BUDGET:
            p = result.live.proposal
            assert p is not None
            report.compensations += 1
            report.total_minor += p.amount.minor
            report.by_scenario[p.scenario].add(p.amount.minor)
            report.by_tier[f"{p.strategy.id}/{p.tier or 'single'}"].add(p.amount.minor)
            period = reg.local(h.occurred_at).strftime("%Y-%m")
            report.by_period[period].add(p.amount.minor)
            report.by_liability_rule[p.liability_rule.value].add(p.amount.minor)
            for share, part in split_liability(p.amount, p.shares):
                report.by_liable_party[share.party.value] += part.minor
        elif verdict.outcome is Outcome.CAPPED:
            report.removed_by_abuse_guard += 1
        elif verdict.outcome is Outcome.HOLDOUT:
            report.removed_by_holdout += 1
        elif verdict.failed_rule == "one_per_order_and_scenario":
            report.removed_one_per_order += 1
        else:
            report.not_eligible[verdict.failed_rule or "unknown"] += 1
        for shadow in result.shadows:
            assert shadow.strategy is not None
            sid = shadow.strategy.id
            key = (reg.code, t.buyer_id, sid)
            okey = (reg.code, t.order_id, sid, shadow.strategy.scenario)
            sv = settle(shadow, buyer_id=t.buyer_id, occurred_at=h.occurred_at, order_taken=okey in shadow_orders,
                        history=shadow_history[key])
            report.shadow[sid][sv.outcome.value] += 1
            if sv.outcome is Outcome.WOULD_ISSUE and shadow.proposal is not None:
                report.shadow_total_minor[sid] += shadow.proposal.amount.minor
                shadow_history[key].append(Granted(h.occurred_at, shadow.proposal.amount))
                shadow_orders.add(okey)
    return [reports[k] for k in sorted(reports)]


def format_text(reports: list[RegionReport]) -> str:
    lines: list[str] = []
    for r in reports:
        d = r.as_dict()
        lines += [
            f"== {r.region} ({r.currency})",
            f"tickets: {r.tickets}  matched: {r.matched}  compensations: {r.compensations}",
            f"total cost: {d['total']}  average: {d['average']}",
            f"removed by abuse guard: {r.removed_by_abuse_guard}  by holdout: {r.removed_by_holdout}  "
            f"one per order and scenario: {r.removed_one_per_order}",
        ]
        for title, key in (("by scenario", "by_scenario"), ("by tier", "by_tier"),
                           ("projected budget by period", "budget_by_period")):
            lines.append(f"{title}:")
            lines += [f"  {k}: {v['count']} = {v['total']}" for k, v in d[key].items()] or ["  (none)"]
        if d["not_eligible_by_rule"]:
            lines.append("not eligible by rule:")
            lines += [f"  {k}: {v}" for k, v in d["not_eligible_by_rule"].items()]
        if d["shadow"]:
            lines.append("shadow strategies (each on its own):")
            for sid, c in d["shadow"].items():
                total = Money(c.pop("would_issue_total_minor"), r.currency).format()
                lines.append(f"  {sid}: " + ", ".join(f"{k} {v}" for k, v in c.items()) + f"; would issue {total}")
        lines.append("")
    return "\n".join(lines) if lines else "no tickets\n"
