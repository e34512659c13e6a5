"""The periodic report: every metric of docs/metrics.md computed from summed rollup cells.

Inputs are plain sums read from the rollups (``Sums``) plus the few small per-item sets that estimators
need (audited items for the accuracy estimate). Money stays integer minor units; a mean of money is rounded
half up to a whole minor unit; shares and rates are ratios (floats) shown next to their integer numerator
and denominator, so every cell can be checked against a recomputation from the raw events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from services.insights.domain.periods import Period
from services.insights.domain.rollups import COMP_DAILY, TICKET_DAILY, TTC_BINS, TTC_EDGES
from shared.stats import Z95, proportion_estimate, wilson_interval

P50, P90 = Fraction(1, 2), Fraction(9, 10)


# ------------------------------------------------------------------ arithmetic


def ratio(numerator: int, denominator: int) -> float | None:
    """A share or rate; None when the denominator is 0 (nothing to divide: shown as null, never as 0)."""
    return None if denominator == 0 else numerator / denominator


def mean_minor(total_minor: int, count: int) -> int | None:
    """Mean of money in whole minor units, rounded half up (away from zero for negatives)."""
    if count == 0:
        return None
    sign = -1 if total_minor < 0 else 1
    return sign * ((2 * abs(total_minor) + count) // (2 * count))


def rank_of(p: Fraction, n: int) -> int:
    """ceil(p * n) in integers: the 1-based rank of the p-quantile (nearest-rank definition)."""
    return max(1, -(-p.numerator * n // p.denominator))


def histogram_percentile(counts: Sequence[int], p: Fraction) -> int | None:
    """The p-quantile of time to compensate: the upper edge (seconds) of the bin holding the ceil(p*n)-th
    smallest duration. None when there is no duration, or when it lies in the open bin above the last edge
    (more than 30 days: ``open_bin_from_seconds``)."""
    n = sum(counts)
    if n == 0:
        return None
    rank, seen = rank_of(p, n), 0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank:
            return TTC_EDGES[i] if i < len(TTC_EDGES) else None
    raise AssertionError("unreachable: ranks stop at n")


def exact_percentile(values: Iterable[tuple[int, int]], p: Fraction) -> int | None:
    """Nearest-rank p-quantile of a multiset given as (value, count) pairs: the smallest value whose
    cumulative count reaches ceil(p*n). Used for amounts, which rollups keep exactly per value."""
    pairs = sorted((v, c) for v, c in values if c)
    n = sum(c for _, c in pairs)
    if n == 0:
        return None
    rank, seen = rank_of(p, n), 0
    for value, count in pairs:
        seen += count
        if seen >= rank:
            return value
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ inputs


@dataclass
class Sums:
    """Rollup cells summed over a period (and optionally filtered)."""

    tickets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TICKET_DAILY.measures, 0))
    comps: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> COMP_DAILY measure -> sum
    amounts: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # source -> (amount, count)
    orders: int = 0
    gmv_minor: int = 0
    volume_days: int = 0
    # (reason, kind, cohort, responses, score sum, sum of squared scores)
    feedback: list[tuple[str, str, str, int, int, int]] = field(default_factory=list)
    decisions: list[tuple[str, bool, int, int]] = field(default_factory=list)  # outcome, shadow, count, amount


@dataclass(frozen=True, slots=True)
class AuditedItem:
    compensation_id: str
    probability: float
    passed: bool
    misstated_minor: int


@dataclass(frozen=True)
class AuditWork:
    """The verdicts given in the period (by local audit day), for the audit team's own efficiency."""

    per_auditor: Mapping[str, int] = field(default_factory=dict)  # auditor -> verdicts
    within_sla: int = 0
    auditor_days: int = 0  # (auditor, local day) pairs with at least one verdict

    @property
    def audits(self) -> int:
        return sum(self.per_auditor.values())


@dataclass
class AuditInputs:
    sampled: int = 0  # sample draws of the period's manual compensations (mandatory included)
    evicted: int = 0
    audited: list[AuditedItem] = field(default_factory=list)
    unaudited_probabilities: list[float] = field(default_factory=list)  # drawn, not evicted, no verdict yet
    work: AuditWork = field(default_factory=AuditWork)


APPROVAL_COUNTS = ("requests", "queued", "escalated", "approved_automatically", "approved_by_approver",
                   "rejected_automatically", "rejected_by_approver", "awaiting", "requested_minor",
                   "approved_minor", "approved_requested_minor")
ACTION_STATES = ("open", "in_progress", "done", "cancelled")
ACTION_COUNTS = ("opened", *ACTION_STATES, "open_due_by_period_end", "measured", "improved")


@dataclass
class ApprovalInputs:
    """The approval stage over the requests raised in the period (local day of requested_at): the counts of
    ``APPROVAL_COUNTS``, the approvers' decision times counted in the bins of time to compensate, and the
    flagged manual compensations issued in the period: how many, their amount, and how many named each
    mismatch."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(APPROVAL_COUNTS, 0))
    decision_bins: list[int] = field(default_factory=lambda: [0] * TTC_BINS)
    flagged: int = 0
    flagged_minor: int = 0
    mismatches: dict[str, int] = field(default_factory=dict)


def approvals_section(a: ApprovalInputs) -> dict[str, Any]:
    c = a.counts
    approved = c["approved_automatically"] + c["approved_by_approver"]
    rejected = c["rejected_automatically"] + c["rejected_by_approver"]
    by_approver = c["approved_by_approver"] + c["rejected_by_approver"]
    return {
        "requests": c["requests"], "within_authority": c["requests"] - c["queued"], "queued": c["queued"],
        "escalated": c["escalated"], "approved": approved, "approved_automatically": c["approved_automatically"],
        "approved_by_approver": c["approved_by_approver"], "rejected": rejected,
        "rejected_automatically": c["rejected_automatically"], "rejected_by_approver": c["rejected_by_approver"],
        "awaiting": c["awaiting"],
        "approval_rate": ratio(approved, approved + rejected),
        "approver_approval_rate": ratio(c["approved_by_approver"], by_approver),
        "escalation_share": ratio(c["escalated"], c["queued"]),
        "requested_minor": c["requested_minor"], "approved_minor": c["approved_minor"],
        "approved_share_of_requested_amount": ratio(c["approved_minor"], c["approved_requested_minor"]),
        "approval_time_seconds": {"decided_by_approver": by_approver,
                                  "p50": histogram_percentile(a.decision_bins, P50),
                                  "p90": histogram_percentile(a.decision_bins, P90),
                                  "open_bin_from_seconds": TTC_EDGES[-1]},
        "issues_flagged": {"count": a.flagged, "issued_minor": a.flagged_minor,
                           "by_mismatch": dict(sorted(a.mismatches.items()))},
    }


def actions_section(rows: Iterable[tuple[str, Mapping[str, int]]]) -> dict[str, Any]:
    """Corrective actions opened in the period (local day of opened_at), per kind: ``ACTION_COUNTS``."""
    counted = sorted((kind, {k: int(v[k]) for k in ACTION_COUNTS}) for kind, v in rows)
    total = {k: sum(v[k] for _, v in counted) for k in ACTION_COUNTS}
    by_kind = [{"kind": kind, **v} for kind, v in counted]
    return {**total, "done_share": ratio(total["done"], total["opened"] - total["cancelled"]),
            "improved_share_of_measured": ratio(total["improved"], total["measured"]), "by_kind": by_kind}


def comp_totals(sums: Sums, source: str | None = None) -> dict[str, int]:
    """COMP_DAILY sums for one source (auto, manual) or all."""
    out = dict.fromkeys(COMP_DAILY.measures, 0)
    for src, values in sums.comps.items():
        if source is None or src == source:
            for k, v in values.items():
                out[k] += v
    return out


# ------------------------------------------------------------------ sections


def _ttc(totals: Mapping[str, int]) -> dict[str, Any]:
    bins = [totals[f"ttc_{i:02d}"] for i in range(TTC_BINS)]
    n = totals["timed"]
    return {"count": n, "p50_seconds": histogram_percentile(bins, P50),
            "p90_seconds": histogram_percentile(bins, P90),
            "mean_seconds": None if n == 0 else round(totals["ttc_seconds"] / n, 1),
            "open_bin_from_seconds": TTC_EDGES[-1]}


def csat_comparison(rows: Sequence[tuple[str, str, str, int, int, int]], kind: str, compensated_tickets: int,
                    uncompensated_tickets: int) -> dict[str, Any]:
    """Mean score after compensation vs uncompensated tickets of the same reasons (direct standardisation
    on the compensated responses' reason mix), with a 95% normal interval; response rates with Wilson
    intervals."""
    cells: dict[tuple[str, str], tuple[int, int, int]] = {}
    for reason, k, group, n, total, squares in rows:
        if k != kind:
            continue
        old = cells.get((reason, group), (0, 0, 0))
        cells[(reason, group)] = (old[0] + n, old[1] + total, old[2] + squares)

    def cohort(name: str) -> dict[str, Any]:
        n = sum(v[0] for (_, c), v in cells.items() if c == name)
        total = sum(v[1] for (_, c), v in cells.items() if c == name)
        return {"responses": n, "mean_score": None if n == 0 else round(total / n, 4)}

    after, uncomp, before = cohort("after_comp"), cohort("uncompensated"), cohort("before_comp")
    for part, tickets in ((after, compensated_tickets), (uncomp, uncompensated_tickets)):
        part["tickets"] = tickets
        part["response_rate"] = ratio(part["responses"], tickets)
        if tickets:
            interval = wilson_interval(min(part["responses"], tickets), tickets)
            part["response_rate_ci95"] = [round(interval.low, 6), round(interval.high, 6)]
        else:
            part["response_rate_ci95"] = None
    reasons = sorted({r for r, _ in cells})
    matched = [r for r in reasons if cells.get((r, "after_comp"), (0,))[0] >= 2
               and cells.get((r, "uncompensated"), (0,))[0] >= 2]
    weight_total = sum(cells[(r, "after_comp")][0] for r in matched)
    difference: dict[str, Any] = {"value": None, "ci95": None, "reasons_compared": matched}
    if weight_total:
        value, variance = 0.0, 0.0
        for r in matched:
            w = cells[(r, "after_comp")][0] / weight_total
            (na, sa, qa), (nu, su, qu) = cells[(r, "after_comp")], cells[(r, "uncompensated")]
            value += w * (sa / na - su / nu)
            var_a = max(0.0, (qa - sa * sa / na) / (na - 1))
            var_u = max(0.0, (qu - su * su / nu) / (nu - 1))
            variance += w * w * (var_a / na + var_u / nu)
        half = Z95 * math.sqrt(variance)
        difference = {"value": round(value, 4), "ci95": [round(value - half, 4), round(value + half, 4)],
                      "reasons_compared": matched}
    return {"kind": kind, "after_compensation": after, "uncompensated": uncomp,
            "answered_before_compensation": before, "difference_after_minus_uncompensated": difference}


def accuracy_section(audit: AuditInputs, manual_compensations: int) -> dict[str, Any]:
    """The sampler's own estimator (shared.stats.proportion_estimate, ADR 0010) on the period's audited
    items: items drawn but not audited yet are its non-response, the period's manual compensations its
    population (a census only when every one of them was audited). One implementation for both services."""
    items = audit.audited
    out: dict[str, Any] = {"sampled": audit.sampled, "evicted": audit.evicted, "audited": len(items),
                           "not_yet_audited": max(0, audit.sampled - audit.evicted - len(items)),
                           "estimate": None, "ci95": None, "method": "no_sample",
                           "misstated_minor_in_sample": sum(i.misstated_minor for i in items)}
    if items:
        est = proportion_estimate([i.passed for i in items], [i.probability for i in items],
                                  unaudited_probs=audit.unaudited_probabilities,
                                  population_size=manual_compensations)
        out.update(estimate=None if math.isnan(est.value) else round(est.value, 6),
                   ci95=[round(est.interval.low, 6), round(est.interval.high, 6)], method=est.method,
                   effective_sample_size=round(est.effective_sample_size, 2))
        nonresponse = est.nonresponse
        if nonresponse is not None and nonresponse.unaudited and nonresponse.bounds is not None:
            out["if_unaudited_all_failed_or_passed"] = [round(nonresponse.bounds.low, 6),
                                                       round(nonresponse.bounds.high, 6)]
    return out


def audit_team_section(work: AuditWork) -> dict[str, Any]:
    audits = work.audits
    return {"audits": audits, "auditors": len(work.per_auditor), "auditor_days": work.auditor_days,
            "audits_per_auditor_day": None if not work.auditor_days else round(audits / work.auditor_days, 4),
            "within_sla": work.within_sla, "share_within_sla": ratio(work.within_sla, audits),
            "by_auditor": [{"auditor_id": a, "audits": n} for a, n in sorted(work.per_auditor.items())]}


def build_report(*, region: str, currency: str, exponent: int, timezone: str, period: Period, sums: Sums,
                 audit: AuditInputs, approvals: ApprovalInputs | None = None,
                 actions: Iterable[tuple[str, Mapping[str, int]]] = ()) -> dict[str, Any]:
    t = sums.tickets
    all_c, auto_c, manual_c = comp_totals(sums), comp_totals(sums, "auto"), comp_totals(sums, "manual")
    all_amounts = [pair for pairs in sums.amounts.values() for pair in pairs]
    complete_volume = sums.volume_days == period.days
    tickets, compensated = t["tickets"], t["compensated"]

    def kind_block(c: Mapping[str, int], amounts: Iterable[tuple[int, int]]) -> dict[str, Any]:
        return {"count": c["comps"], "amount_minor": c["amount_minor"],
                "share_of_count": ratio(c["comps"], all_c["comps"]),
                "share_of_amount": ratio(c["amount_minor"], all_c["amount_minor"]),
                "mean_amount_minor": mean_minor(c["amount_minor"], c["comps"]),
                "median_amount_minor": exact_percentile(amounts, P50),
                "time_to_compensate": _ttc(c)}

    report: dict[str, Any] = {
        "region": region, "currency": currency, "exponent": exponent,
        "period": {"kind": period.kind, "label": period.label, "from": period.first.isoformat(),
                   "to": period.last.isoformat(), "days": period.days, "timezone": timezone},
        "volume": {
            "tickets": tickets, "compensated_tickets": compensated,
            "compensated_auto": t["compensated_auto"], "compensated_manual": t["compensated_manual"],
            "compensation_rate": ratio(compensated, tickets),
            "orders": sums.orders if complete_volume else None,
            "gmv_minor": sums.gmv_minor if complete_volume else None,
            "order_volume_days_reported": sums.volume_days,
            "compensated_per_1000_orders": (None if not complete_volume or sums.orders == 0
                                            else round(1000 * compensated / sums.orders, 4)),
            "claimed_tickets": t["claimed"], "detected_tickets": t["detected"]},
        "compensations": {
            "count": all_c["comps"], "amount_minor": all_c["amount_minor"],
            "mean_amount_minor": mean_minor(all_c["amount_minor"], all_c["comps"]),
            "median_amount_minor": exact_percentile(all_amounts, P50),
            "cost_per_ticket_minor": mean_minor(all_c["amount_minor"], tickets),
            "cost_share_of_gmv": (None if not complete_volume else ratio(all_c["amount_minor"], sums.gmv_minor)),
            "liability_minor": {"seller": all_c["seller_minor"], "carrier": all_c["carrier_minor"],
                                "platform": all_c["platform_minor"]},
            "auto": kind_block(auto_c, sums.amounts.get("auto", [])),
            "manual": kind_block(manual_c, sums.amounts.get("manual", [])),
            "time_to_compensate": _ttc(all_c),
            "with_known_ticket": all_c["timed"],
            "proactive": all_c["proactive"], "proactive_share": ratio(all_c["proactive"], all_c["comps"])},
        "vouchers": {
            "issued": all_c["vouchers"], "face_value_minor": all_c["voucher_minor"],
            "redeemed": all_c["redeemed"], "redeemed_minor": all_c["redeemed_minor"],
            "redemption_rate": ratio(all_c["redeemed"], all_c["vouchers"]),
            "expired": all_c["expired"], "expired_minor": all_c["expired_minor"],
            "breakage": ratio(all_c["expired_minor"], all_c["voucher_minor"]),
            "revoked": all_c["revoked"],
            "open": all_c["vouchers"] - all_c["redeemed"] - all_c["expired"] - all_c["revoked"]},
        "accuracy": accuracy_section(audit, manual_c["comps"]),
        "audit_team": audit_team_section(audit.work),
        "buyer_feedback": [csat_comparison(sums.feedback, kind, compensated, tickets - compensated)
                           for kind in sorted({row[1] for row in sums.feedback})],
        "decisions": _decisions(sums.decisions),
        "approvals": approvals_section(approvals or ApprovalInputs()),
        "corrective_actions": actions_section(actions),
    }
    return report


def _decisions(rows: Sequence[tuple[str, bool, int, int]]) -> dict[str, Any]:
    live: dict[str, int] = {}
    shadow: dict[str, int] = {}
    for outcome, is_shadow, n, _ in rows:
        target = shadow if is_shadow else live
        target[outcome] = target.get(outcome, 0) + n
    return {"live": dict(sorted(live.items())), "shadow": dict(sorted(shadow.items())),
            "live_total": sum(live.values())}


# ------------------------------------------------------------------ CSV


def flatten(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(metric path, value) pairs of a report, in order: the CSV body."""
    out: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                label = v.get("kind") or v.get("auditor_id") or str(i)
                walk(f"{prefix}[{label}]", v)
        elif isinstance(value, list):
            out.append((prefix, ";".join("" if v is None else str(v) for v in value)))
        else:
            out.append((prefix, "" if value is None else str(value)))

    walk("", {k: v for k, v in report.items() if k not in ("region", "currency", "exponent", "period")})
    return out
