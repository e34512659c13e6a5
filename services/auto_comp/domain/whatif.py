"""What-if before a change: the same historical tickets decided by the strategies in force and by a proposed
set, side by side, per ticket and per liable party (who pays, how many tickets, how much), not only per
tier. Each set is replayed on its own exactly as the service decides (``backtest.replay``): its own abuse
guard history and one-per-order record, so a proposal that compensates more also caps more. A compensation
that would be requested counts as granted (the budget is not simulated, as in the backtest). Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from services.auto_comp.domain.backtest import HistoricalTicket, Replayed, replay
from services.auto_comp.domain.engine import Outcome, split_liability
from services.auto_comp.domain.model import StrategySet
from shared.money import Money

# What a ticket's decision became, in the order a reader scans for it.
NEWLY_COMPENSATED = "newly_compensated"
NO_LONGER_COMPENSATED = "no_longer_compensated"
AMOUNT_CHANGED = "amount_changed"
PAYER_CHANGED = "payer_changed"
STRATEGY_CHANGED = "strategy_changed"
REASON_CHANGED = "reason_changed"  # still not compensated, for another reason (e.g. holdout -> not eligible)
CHANGES = (NEWLY_COMPENSATED, NO_LONGER_COMPENSATED, AMOUNT_CHANGED, PAYER_CHANGED, STRATEGY_CHANGED,
           REASON_CHANGED)


@dataclass(frozen=True, slots=True)
class Payer:
    """A liable party: its type (platform, seller, carrier) and, for a seller or carrier, which one."""

    party: str
    party_id: str | None

    @property
    def label(self) -> str:
        return self.party if self.party_id is None else f"{self.party}:{self.party_id}"


@dataclass(frozen=True, slots=True)
class Decided:
    """One set's decision on one ticket."""

    outcome: str  # "compensated" (would be requested), or the final outcome: not_eligible, capped..., holdout
    failed_rule: str | None
    strategy_id: str | None
    tier: str | None
    amount_minor: int  # 0 when not compensated
    liability_rule: str | None
    parts: tuple[tuple[Payer, int], ...]  # who pays what, summing exactly to amount_minor
    shares: frozenset[tuple[Payer, int]] = frozenset()  # who pays which percent (the liability rule's split)

    @property
    def compensated(self) -> bool:
        return self.outcome == "compensated"

    def as_dict(self, currency: str) -> dict[str, Any]:
        return {"outcome": self.outcome, "failed_rule": self.failed_rule, "strategy_id": self.strategy_id,
                "tier": self.tier, "amount_minor": self.amount_minor,
                "amount": Money(self.amount_minor, currency).format() if self.compensated else None,
                "liability_rule": self.liability_rule,
                "paid_by": [{"party": p.party, "party_id": p.party_id, "amount_minor": m} for p, m in self.parts]}


def decided(r: Replayed) -> Decided:
    v = r.verdict
    p = r.result.live.proposal
    if v.outcome is Outcome.PENDING_BUDGET and p is not None:
        parts = tuple((Payer(share.party.value, share.party_id), part.minor)
                      for share, part in split_liability(p.amount, p.shares) if part.minor > 0)
        shares = frozenset((Payer(share.party.value, share.party_id), share.percent) for share in p.shares)
        return Decided("compensated", None, p.strategy.id, p.tier, p.amount.minor, p.liability_rule.value, parts,
                       shares)
    s = v.evaluation.strategy
    return Decided(v.outcome.value, v.failed_rule, s.id if s else None, p.tier if p else None, 0, None, ())


@dataclass(frozen=True, slots=True)
class TicketChange:
    ticket: HistoricalTicket
    region: str
    local_day: date
    current: Decided
    proposed: Decided
    changes: tuple[str, ...]

    @property
    def currency(self) -> str:
        return self.ticket.ticket.order_amount.currency

    @property
    def delta_minor(self) -> int:
        return self.proposed.amount_minor - self.current.amount_minor

    def as_dict(self) -> dict[str, Any]:
        t = self.ticket.ticket
        return {"ticket_id": t.ticket_id, "region": self.region, "currency": self.currency,
                "occurred_at": self.ticket.occurred_at.isoformat(), "local_day": self.local_day.isoformat(),
                "order_id": t.order_id, "buyer_id": t.buyer_id, "seller_id": t.seller_id, "carrier_id": t.carrier_id,
                "reason": t.reason.value, "changed": bool(self.changes), "changes": list(self.changes),
                "current": self.current.as_dict(self.currency), "proposed": self.proposed.as_dict(self.currency),
                "delta_minor": self.delta_minor}


def changes_between(current: Decided, proposed: Decided) -> tuple[str, ...]:
    if current.compensated != proposed.compensated:
        return (NEWLY_COMPENSATED,) if proposed.compensated else (NO_LONGER_COMPENSATED,)
    if not current.compensated:
        same = (current.outcome, current.failed_rule) == (proposed.outcome, proposed.failed_rule)
        return () if same else (REASON_CHANGED,)
    out = []
    if current.amount_minor != proposed.amount_minor:
        out.append(AMOUNT_CHANGED)
    if current.shares != proposed.shares:
        # other parties or another split; a new amount alone moves every part in proportion and is not named
        out.append(PAYER_CHANGED)
    if (current.strategy_id, current.tier) != (proposed.strategy_id, proposed.tier):
        out.append(STRATEGY_CHANGED)
    return tuple(out)


@dataclass
class PartyTotals:
    tickets_current: int = 0
    minor_current: int = 0
    tickets_proposed: int = 0
    minor_proposed: int = 0

    @property
    def delta_minor(self) -> int:
        return self.minor_proposed - self.minor_current


@dataclass
class RegionWhatIf:
    region: str
    currency: str
    tickets: int = 0
    compensations_current: int = 0
    compensations_proposed: int = 0
    cost_current_minor: int = 0
    cost_proposed_minor: int = 0
    changed: Counter[str] = field(default_factory=Counter)
    changed_tickets: int = 0
    by_party: dict[Payer, PartyTotals] = field(default_factory=lambda: defaultdict(PartyTotals))
    by_tier_current: Counter[str] = field(default_factory=Counter)
    by_tier_proposed: Counter[str] = field(default_factory=Counter)

    def add(self, change: TicketChange) -> None:
        self.tickets += 1
        for d, current in ((change.current, True), (change.proposed, False)):
            if not d.compensated:
                continue
            tier = f"{d.strategy_id}/{d.tier or 'single'}"
            if current:
                self.compensations_current += 1
                self.cost_current_minor += d.amount_minor
                self.by_tier_current[tier] += d.amount_minor
            else:
                self.compensations_proposed += 1
                self.cost_proposed_minor += d.amount_minor
                self.by_tier_proposed[tier] += d.amount_minor
            for payer, minor in d.parts:
                totals = self.by_party[payer]
                if current:
                    totals.tickets_current += 1
                    totals.minor_current += minor
                else:
                    totals.tickets_proposed += 1
                    totals.minor_proposed += minor
        if change.changes:
            self.changed_tickets += 1
            self.changed.update(change.changes)

    def parties(self) -> list[tuple[Payer, PartyTotals]]:
        """Largest change first, then by what they pay now."""
        return sorted(self.by_party.items(), key=lambda kv: (-abs(kv[1].delta_minor), -kv[1].minor_current,
                                                             kv[0].label))

    def as_dict(self) -> dict[str, Any]:
        def fmt(minor: int) -> str:
            return Money(minor, self.currency).format()

        tiers = sorted(set(self.by_tier_current) | set(self.by_tier_proposed))
        return {
            "region": self.region, "currency": self.currency, "tickets": self.tickets,
            "compensations": {"current": self.compensations_current, "proposed": self.compensations_proposed},
            "cost_minor": {"current": self.cost_current_minor, "proposed": self.cost_proposed_minor,
                           "delta": self.cost_proposed_minor - self.cost_current_minor},
            "cost": {"current": fmt(self.cost_current_minor), "proposed": fmt(self.cost_proposed_minor),
                     "delta": fmt(self.cost_proposed_minor - self.cost_current_minor)},
            "changed_tickets": self.changed_tickets,
            "changes": {k: self.changed[k] for k in CHANGES if self.changed[k]},
            "by_liable_party": [
                {"party": p.party, "party_id": p.party_id,
                 "tickets": {"current": t.tickets_current, "proposed": t.tickets_proposed},
                 "cost_minor": {"current": t.minor_current, "proposed": t.minor_proposed, "delta": t.delta_minor}}
                for p, t in self.parties()],
            "by_tier_minor": {k: {"current": self.by_tier_current[k], "proposed": self.by_tier_proposed[k]}
                              for k in tiers},
        }


@dataclass(frozen=True)
class WhatIf:
    current_version: str
    proposed_version: str
    regions: list[RegionWhatIf]
    tickets: list[TicketChange]

    def as_dict(self, *, changed_only: bool = False) -> dict[str, Any]:
        return {"current_version": self.current_version, "proposed_version": self.proposed_version,
                "regions": [r.as_dict() for r in self.regions],
                "tickets": [t.as_dict() for t in self.tickets if t.changes or not changed_only]}


def in_window(h: HistoricalTicket, regions: Sequence[str] | None, first: date | None, last: date | None) -> bool:
    """The stored window: the ticket's region among ``regions`` and its local day (region's time zone) in
    ``first..last`` (inclusive; either end open)."""
    from shared.regions import region as region_of

    reg = region_of(h.region)
    if regions and reg.code not in regions:
        return False
    day = reg.local(h.occurred_at).date()
    return (first is None or day >= first) and (last is None or day <= last)


def run_what_if(current: StrategySet, proposed: StrategySet, tickets: Iterable[HistoricalTicket]) -> WhatIf:
    window = list(tickets)
    now = {r.ticket.ticket.ticket_id: r for r in replay(current, window)}
    regions: dict[tuple[str, str], RegionWhatIf] = {}
    rows: list[TicketChange] = []
    for r in replay(proposed, window):
        before = now[r.ticket.ticket.ticket_id]
        cur, new = decided(before), decided(r)
        change = TicketChange(r.ticket, r.region.code, r.region.local(r.ticket.occurred_at).date(), cur, new,
                              changes_between(cur, new))
        key = (r.region.code, change.currency)
        regions.setdefault(key, RegionWhatIf(*key)).add(change)
        rows.append(change)
    return WhatIf(current.version, proposed.version, [regions[k] for k in sorted(regions)], rows)


TICKET_CSV_COLUMNS = (
    "region", "currency", "ticket_id", "occurred_at", "local_day", "order_id", "buyer_id", "seller_id", "carrier_id",
    "reason", "changed", "changes", "current_outcome", "current_failed_rule", "current_strategy", "current_tier",
    "current_amount_minor", "current_paid_by", "proposed_outcome", "proposed_failed_rule", "proposed_strategy",
    "proposed_tier", "proposed_amount_minor", "proposed_paid_by", "delta_minor")
PARTY_CSV_COLUMNS = ("region", "currency", "party", "party_id", "tickets_current", "tickets_proposed",
                     "cost_current_minor", "cost_proposed_minor", "delta_minor")


def ticket_rows(w: WhatIf, *, changed_only: bool = False) -> list[list[Any]]:
    out: list[list[Any]] = []
    for t in w.tickets:
        if changed_only and not t.changes:
            continue
        d = t.as_dict()

        def side(x: Decided) -> list[Any]:
            paid = "; ".join(f"{p.label}={m}" for p, m in x.parts)
            return [x.outcome, x.failed_rule or "", x.strategy_id or "", x.tier or "", x.amount_minor, paid]

        out.append([d["region"], d["currency"], d["ticket_id"], d["occurred_at"], d["local_day"], d["order_id"],
                     d["buyer_id"], d["seller_id"], d["carrier_id"] or "", d["reason"], str(d["changed"]).lower(),
                     " ".join(d["changes"]), *side(t.current), *side(t.proposed), t.delta_minor])
    return out


def party_rows(w: WhatIf) -> list[list[Any]]:
    return [[r.region, r.currency, p.party, p.party_id or "", t.tickets_current, t.tickets_proposed, t.minor_current,
             t.minor_proposed, t.delta_minor] for r in w.regions for p, t in r.parties()]


def _brief(x: Decided, currency: str) -> str:
    if not x.compensated:
        return f"{x.outcome}{f' ({x.failed_rule})' if x.failed_rule else ''}"
    paid = ", ".join(f"{p.label} {Money(m, currency).format()}" for p, m in x.parts)
    return f"{Money(x.amount_minor, currency).format()} by {x.strategy_id}/{x.tier or 'single'} [{paid}]"


def format_text(w: WhatIf, *, limit: int = 50) -> str:
    lines = [f"strategies in force {w.current_version} -> proposed {w.proposed_version}", ""]
    for r in w.regions:
        d = r.as_dict()
        lines += [f"== {r.region} ({r.currency}): {r.tickets} tickets, {r.changed_tickets} change outcome",
                  f"compensations: {r.compensations_current} -> {r.compensations_proposed}",
                  f"cost: {d['cost']['current']} -> {d['cost']['proposed']} ({d['cost']['delta']})"]
        if d["changes"]:
            lines.append("changes: " + ", ".join(f"{k} {v}" for k, v in d["changes"].items()))
        lines.append("who pays (tickets, cost now -> proposed, change):")
        for p, t in r.parties():
            lines.append(f"  {p.label}: {t.tickets_current} -> {t.tickets_proposed} tickets, "
                         f"{Money(t.minor_current, r.currency).format()} -> "
                         f"{Money(t.minor_proposed, r.currency).format()} "
                         f"({Money(t.delta_minor, r.currency).format()})")
        if not r.by_party:
            lines.append("  (nobody: nothing compensated under either)")
        changed = [t for t in w.tickets if t.changes and t.region == r.region and t.currency == r.currency]
        if changed:
            lines.append(f"tickets that change ({len(changed)}{f', first {limit}' if len(changed) > limit else ''}):")
            for c in changed[:limit]:
                lines.append(f"  {c.ticket.ticket.ticket_id} ({c.local_day}): {_brief(c.current, r.currency)} -> "
                             f"{_brief(c.proposed, r.currency)}  [{' '.join(c.changes)}]")
        lines.append("")
    return "\n".join(lines) if w.regions else "no tickets in the window\n"
