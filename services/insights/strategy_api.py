"""HTTP API of insights for strategy managers: a strategy's return (treated buyers against its holdout).

Kept apart from ``api.py`` (reports) so the strategy analytics grow in their own module; mounted by
``app.py``. Every route is authenticated and region-scoped; errors are RFC 9457 problem details.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Depends`` inside the route
closures' annotations, which string annotations would hide.
"""

from datetime import UTC, datetime
from fractions import Fraction
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import returns
from services.insights import scorecard as scorecards
from services.insights.api import period_for, region_for
from services.insights.domain.returns import GroupTally, compare, decimal_string, local_day_bounds
from services.insights.domain.scorecard import Thresholds
from shared.auth import Authenticator, Principal
from shared.contracts.envelope import BoundedDate
from shared.http import Problem
from shared.money import Money, round_fraction

STRATEGY_ID = r"^[a-z0-9_\-]{1,100}$"  # as strategy files name them


def _major(minor: int | None, currency: str) -> str | None:
    return None if minor is None else Money(int(minor), currency).format()


def _minor(value: Fraction | None) -> int | None:
    return None if value is None else round_fraction(value)


def _group(tally: GroupTally, currency: str, maturing: int, beyond: int, *, treated: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "buyers": tally.buyers, "returning_buyers": tally.returning, "repeat_rate": tally.repeat_rate,
        "later_order_value_minor": tally.value_minor, "later_order_value": _major(tally.value_minor, currency),
        "later_order_value_per_buyer_minor": _minor(tally.value_per_buyer),
        "maturing_buyers": maturing, "beyond_retention_buyers": beyond}
    if treated:
        out["compensation_cost_minor"] = tally.cost_minor
        out["compensation_cost"] = _major(tally.cost_minor, currency)
    return out


def build_strategy_router(engine: AsyncEngine, auth: Authenticator, *, return_window_days: int = 30,
                          return_min_group: int = 30, return_retention_margin_days: int = 90,
                          thresholds: dict[str, Thresholds] | None = None) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["strategies"])
    per_region = thresholds or {}

    @api.get("/scorecard/{region}", summary="Strategy scorecard of a region: facts, keep/review/retire verdicts "
                                            "with reasons (JSON or CSV); verdict=review,retire is the review queue")
    async def get_scorecard(
            region: Annotated[str, Path()],
            period: Annotated[str | None, Query(description="YYYY-MM-DD, YYYY-Www or YYYY-MM (region's clock)")] = None,
            start: Annotated[str | None, Query(alias="from", description="custom range: first local day")] = None,
            end: Annotated[str | None, Query(alias="to", description="custom range: last local day")] = None,
            verdict: Annotated[str | None, Query(description="comma-separated subset of keep,review,retire")] = None,
            format: Annotated[str, Query(description="json or csv")] = "json",
            principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        p = period_for(period, start, end)
        if format not in ("json", "csv"):
            raise Problem(422, "Invalid request", f"format must be json or csv, not {format!r}",
                          errors=[{"field": "format", "message": "json or csv"}])
        wanted = None if verdict is None else {v.strip() for v in verdict.split(",")}
        if wanted is not None and (not wanted or not wanted <= {"keep", "review", "retire"}):
            raise Problem(422, "Invalid request", f"unknown verdict in {verdict!r}",
                          errors=[{"field": "verdict", "message": "a comma-separated subset of keep,review,retire"}])
        t = per_region.get(r.code)
        if t is None:
            raise Problem(404, "Not Found", f"no scorecard thresholds for {r.code}",
                          errors=[{"field": "region", "message": "the thresholds file has no block for it"}])
        result = await scorecards.scorecard(engine, r, p, t, window_days=return_window_days,
                                            margin_days=return_retention_margin_days)
        if wanted is not None:
            result["strategies"] = [s for s in result["strategies"] if s["verdict"] in wanted]
        if format == "csv":
            return Response(scorecards.scorecard_csv(result), media_type="text/csv; charset=utf-8", headers={
                "Content-Disposition": f'attachment; filename="scorecard-{r.code}-{p.label}.csv"'})
        return Response(orjson.dumps(result), media_type="application/json")

    @api.get("/strategies/{strategy_id}/return",
             summary="A strategy's return: later orders of treated buyers against its holdout")
    async def strategy_return(
            strategy_id: Annotated[str, Path(pattern=STRATEGY_ID)],
            region: Annotated[str, Query(pattern=r"^[A-Z]{2,3}$")],
            start: Annotated[BoundedDate, Query(alias="from", description="first day (region's time zone)")],
            end: Annotated[BoundedDate, Query(alias="to", description="day after the last (region's time zone)")],
            principal: Principal = Depends(auth)) -> dict[str, Any]:
        where = region_for(principal, region)
        try:
            since, until = local_day_bounds(start, end, where.tz)
        except ValueError as exc:
            raise Problem(422, "Invalid request", str(exc),
                          errors=[{"field": "to", "message": "must be a later date than 'from'"}]) from None
        async with engine.connect() as conn:
            t = await returns.tallies(conn, strategy_id=strategy_id, region=where.code, currency=where.currency,
                                      start=since, end=until, window_days=return_window_days,
                                      margin_days=return_retention_margin_days, now=datetime.now(UTC))
        summary = compare(t.treated, t.control, min_group=return_min_group)
        c = summary.comparison
        comparison = None if c is None else {
            "repeat_rate_difference": c.repeat_rate_difference,
            "confidence_interval": {"level": c.confidence, "low": c.ci_low, "high": c.ci_high, "method": c.method},
            "incremental_value_per_buyer_minor": _minor(c.incremental_value_per_buyer),
            "incremental_value_minor": _minor(c.incremental_value),
            "return_on_cost": None if c.return_on_cost is None else decimal_string(c.return_on_cost, 4),
            "return_on_cost_rational": None if c.return_on_cost is None
            else f"{c.return_on_cost.numerator}/{c.return_on_cost.denominator}"}
        return {
            "strategy_id": strategy_id, "region": where.code, "currency": where.currency,
            "timezone": where.timezone, "from": start.isoformat(), "to": end.isoformat(),
            "window_days": return_window_days, "decision_time": "ticket_occurred_at",
            "min_group": return_min_group,
            "groups": {
                "treated": _group(t.treated, where.currency, t.maturing["treated"], t.beyond_retention["treated"],
                                  treated=True),
                "control": _group(t.control, where.currency, t.maturing["control"], t.beyond_retention["control"],
                                  treated=False)},
            "comparison": comparison, "reason": summary.reason}

    return api
