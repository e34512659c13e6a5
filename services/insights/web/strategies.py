"""The strategy pages of the dashboard: the review queue (strategies whose verdict is review or retire, with
their reasons and 95% intervals) and one strategy's scorecard. The numbers are the scorecard API's
(``services.insights.scorecard``: the same code as ``GET /v1/scorecard/{region}`` and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import scorecard
from services.insights.domain.periods import Period
from services.insights.domain.scorecard import RETIRE, REVIEW, Thresholds
from services.insights.web import format as fmt
from shared.regions import Region

QUEUE = (RETIRE, REVIEW)


def _interval(pair: list[float] | None, point: float | None, *, percent: bool) -> str:
    """``+1.2% (-0.8% .. +3.1%)`` or ``1.85 (0.92 .. 2.71)``; a dash when there is nothing to compare."""
    if point is None and pair is None:
        return fmt.DASH

    def one(x: float) -> str:
        return f"{x * 100:+.1f}%" if percent else f"{x:.2f}"

    head = one(point) if point is not None else fmt.DASH
    return head if pair is None else f"{head} ({one(pair[0])} .. {one(pair[1])})"


@dataclass(frozen=True)
class StrategyLine:
    """One strategy as a person reads it on the queue and on its own page."""

    strategy_id: str
    verdict: str
    reasons: list[str]
    compensations: str
    cost: str
    return_on_cost: str
    uplift: str
    sample: str
    judged: str
    redemption: str
    time_to_compensate: str
    csat: str
    audit: str
    raw: dict[str, Any]


def line(s: dict[str, Any], t: Thresholds) -> StrategyLine:
    plan = t.planned_buyers_per_group
    hours = s["mean_hours_to_compensate"]
    csat = s["csat_after_compensation"]
    return StrategyLine(
        strategy_id=s["strategy_id"], verdict=s["verdict"], reasons=s["reasons"],
        compensations=fmt.count(s["compensations"]), cost=fmt.money(s["cost_minor"], s["currency"]),
        return_on_cost=_interval(s["return_on_cost_ci95"], s["return_on_cost"], percent=False),
        uplift=_interval(s["repeat_rate_uplift_ci95"], s["repeat_rate_uplift"], percent=True),
        sample=f"{s['treated_buyers']:,} / {s['holdout_buyers']:,} of {plan:,}"
               + (f" ({s['maturing_buyers']:,} maturing)" if s["maturing_buyers"] else ""),
        judged=(f"first {s['judged_buyers_per_group']:,} buyers per group" if s["judged_buyers_per_group"]
                else "at the planned sample" if s["at_planned_sample"] else "not yet: planned sample not reached"),
        redemption=fmt.pct(s["redemption_rate"]) + (f" of {s['vouchers']:,} vouchers" if s["vouchers"] else ""),
        time_to_compensate=fmt.DASH if hours is None else fmt.duration(hours * 3600),
        csat=fmt.DASH if csat is None else f"{csat:.2f} ({s['csat_responses']:,} answers)",
        audit=f"{s['audit_findings']:,} findings in {s['audited']:,} audited" if s["audited"] else "none audited",
        raw=s)


async def review_queue(engine: AsyncEngine, region: Region, period: Period, t: Thresholds, *, window_days: int,
                       margin_days: int, everything: bool) -> dict[str, Any]:
    result = await scorecard.scorecard(engine, region, period, t, window_days=window_days, margin_days=margin_days)
    rows = [line(s, t) for s in result["strategies"] if everything or s["verdict"] in QUEUE]
    counts = {v: sum(s["verdict"] == v for s in result["strategies"]) for v in ("retire", "review", "keep")}
    return {"rows": rows, "counts": counts, "thresholds": result["thresholds"], "window_days": window_days}


async def one_strategy(engine: AsyncEngine, region: Region, period: Period, t: Thresholds, strategy_id: str, *,
                       window_days: int, margin_days: int) -> dict[str, Any]:
    result = await scorecard.scorecard(engine, region, period, t, window_days=window_days, margin_days=margin_days)
    found = [line(s, t) for s in result["strategies"] if s["strategy_id"] == strategy_id]
    return {"row": found[0] if found else None, "thresholds": result["thresholds"], "window_days": window_days}
