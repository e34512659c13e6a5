"""HTTP API of issue 15's budget plan and market comparison (same auth and region scoping as ``api.py``).

- ``GET /v1/budget-plans/{region}/{YYYY-MM}``: next period's plan with its 80% band and the 12-month
  backtest (JSON or CSV).
- ``GET /v1/market/{region}?period=YYYY-MM``: each active strategy against the market reference range.
- ``GET /v1/market?period=YYYY-MM``: for every region the caller may read, whether it trails the best
  reference (regions without a reference file are listed as such).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import market_report as market
from services.insights import plans
from services.insights.api import READERS, _bad, _json, period_for, region_for
from services.insights.config import Settings
from services.insights.domain.market import MarketFileError
from services.insights.domain.periods import Period
from shared.auth import Authenticator, Principal
from shared.http import Problem, csv_or_json, problems
from shared.regions import Region, catalogue

Format = Annotated[str, Query(description="json or csv")]


def _format(value: str) -> None:
    if value not in ("json", "csv"):
        raise _bad("format", f"format must be json or csv, not {value!r}")


def _month(value: str | None, today: date) -> Period:
    p = period_for(value or f"{today:%Y-%m}", None, None)
    if p.kind != "month":
        raise _bad("period", "market reports cover calendar months (YYYY-MM)")
    return p


def _csv(body: str, name: str) -> Response:
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _references(settings: Settings, region: Region, today: date) -> Any:
    try:
        return market.read_references(market.reference_path(settings.market_dir, region.code), region, today)
    except market.NoReferences as exc:
        raise Problem(404, "Not Found", str(exc), errors=[{"field": "region", "message": str(exc)}]) from None
    except MarketFileError as exc:
        # The operator's file is wrong, not the request: 500, naming the field so it can be fixed.
        raise Problem(500, "Invalid market reference file", str(exc),
                      errors=[{"field": exc.field, "message": exc.detail}]) from None


def build_plan_router(engine: AsyncEngine, auth: Authenticator, settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["insights"])

    @api.get("/budget-plans/{region}/{period}", summary="Budget plan of a coming period: automatic and manual "
                                                        "spend with an 80% band, and its 12-month backtest",
             responses={**csv_or_json("The plan, its scenarios and the backtest"), **problems(404)})
    async def get_budget_plan(region: Annotated[str, Path()],
                              period: Annotated[str, Path(max_length=10, description="YYYY-MM")],
                              format: Format = "json", principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        principal.require_role(*READERS)
        _format(format)
        p = period_for(period, None, None)
        today = r.local(datetime.now(UTC)).date()
        try:
            result = await plans.budget_plan(engine, r, p, today)
        except plans.PlanError as exc:
            raise _bad(exc.field, str(exc)) from None
        if format == "csv":
            return _csv(plans.budget_plan_csv(result), f"insights-budget-plan-{r.code}-{p.label}.csv")
        return _json(result)

    @api.get("/market/{region}", summary="Market comparison: each active strategy's effective compensation "
                                         "against other marketplaces' reference range",
             responses={**csv_or_json("Strategies placed below / at / above the references"), **problems(404)})
    async def get_market(region: Annotated[str, Path()],
                         period: Annotated[str | None, Query(max_length=10, description="YYYY-MM (default: this "
                                                                                       "month)")] = None,
                         format: Format = "json", principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        _format(format)
        today = r.local(datetime.now(UTC)).date()
        p = _month(period, today)
        result = await market.market_report(engine, r, p, _references(settings, r, today))
        if format == "csv":
            return _csv(market.market_csv(result), f"insights-market-{r.code}-{p.label}.csv")
        return _json(result)

    @api.get("/market", summary="Every readable region: does it trail the best market reference?")
    async def get_market_overview(period: Annotated[str | None, Query(max_length=10)] = None,
                                  principal: Principal = Depends(auth)) -> Response:
        principal.require_role(*READERS)
        rows = []
        for code in principal.allowed_regions(catalogue().codes()):
            r = catalogue().get(code)
            today = r.local(datetime.now(UTC)).date()
            p = _month(period, today)
            try:
                refs = market.read_references(market.reference_path(settings.market_dir, code), r, today)
            except market.NoReferences:
                rows.append({"region": code, "period": p.label, "references": 0, "trails_best_reference": None})
                continue
            except MarketFileError as exc:
                rows.append({"region": code, "period": p.label, "error": str(exc), "trails_best_reference": None})
                continue
            result = await market.market_report(engine, r, p, refs)
            rows.append({"region": code, "period": p.label, "references": len(result["references"]),
                         "trails_best_reference": result["trails_best_reference"],
                         "trailing": result["trailing"], "examples_only": result["examples_only"]})
        return _json({"regions": rows, "trailing": [row["region"] for row in rows if row["trails_best_reference"]]})

    return api
