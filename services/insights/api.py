"""HTTP API of insights: reports, root-cause breakdowns, count series, budget burn-down, a ticket's record.

Every route is authenticated (bearer tokens) and region-scoped (403 for a region the caller was not
granted); bad periods, dimensions and formats answer RFC 9457 problem details naming the parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import reports
from services.insights.domain.movers import Measure
from services.insights.domain.periods import Period, PeriodError, parse_period
from shared.auth import Authenticator, Principal
from shared.http import Problem, csv_or_json, problems
from shared.regions import Region, UnknownRegion, catalogue

READERS = ("ops_admin", "strategy_manager", "finance", "auditor", "senior_auditor", "lead", "service")
MAX_SERIES_DAYS_HOURLY = 62

PeriodQuery = Annotated[str | None, Query(description="A local day (YYYY-MM-DD), ISO week (YYYY-Www) or month "
                                                      "(YYYY-MM) in the region's time zone.")]
FromQuery = Annotated[str | None, Query(alias="from", description="Custom range: first local day (YYYY-MM-DD).")]
ToQuery = Annotated[str | None, Query(alias="to", description="Custom range: last local day, inclusive.")]


def _bad(field: str, message: str, status: int = 422) -> Problem:
    return Problem(status, "Invalid request", message, errors=[{"field": field, "message": message}])


def region_for(principal: Principal, code: str) -> Region:
    principal.require_role(*READERS)
    try:
        region = catalogue().get(code)
    except UnknownRegion:
        raise Problem(404, "Not Found", f"unknown region {code!r}",
                      errors=[{"field": "region", "message": f"{code!r} is not in the region catalogue"}]) from None
    principal.require_region(region.code)
    return region


def period_for(period: str | None, start: str | None, end: str | None) -> Period:
    try:
        return parse_period(period, start, end)
    except PeriodError as exc:
        raise _bad(exc.field, str(exc)) from None


def build_router(engine: AsyncEngine, auth: Authenticator) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["insights"])

    @api.get("/reports/{region}", summary="Periodic report of a region (JSON or CSV)")
    async def get_report(region: Annotated[str, Path()], period: PeriodQuery = None,
                         start: FromQuery = None, end: ToQuery = None,
                         format: Annotated[str, Query(description="json or csv")] = "json",
            principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        p = period_for(period, start, end)
        if format not in ("json", "csv"):
            raise _bad("format", f"format must be json or csv, not {format!r}")
        result = await reports.report(engine, r, p)
        if format == "csv":
            return Response(reports.report_csv(result), media_type="text/csv; charset=utf-8", headers={
                "Content-Disposition": f'attachment; filename="insights-{r.code}-{p.label}.csv"'})
        return _json(result)

    @api.get("/breakdown/{region}", summary="Root-cause breakdown by a dimension, this period and the previous")
    async def get_breakdown(region: Annotated[str, Path()],
                            dimension: Annotated[str, Query(description="reason, carrier, seller or strategy")],
                            period: PeriodQuery = None, start: FromQuery = None, end: ToQuery = None,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 50,
            principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        if dimension not in reports.DIMENSIONS:
            raise _bad("dimension", f"unknown dimension {dimension!r}; one of {', '.join(reports.DIMENSIONS)}")
        p = period_for(period, start, end)
        return _json(await reports.breakdown(engine, r, dimension, p, limit))

    @api.get("/root-causes/{region}", summary="Top movers against the previous period and the rate change split "
                                              "into mix and rate effects (JSON or CSV)",
             responses={**csv_or_json("Movers and mix/rate decompositions"), **problems(404)})
    async def get_root_causes(region: Annotated[str, Path()],
                              dimension: Annotated[str, Query(description="reason, carrier, seller or strategy")],
                              period: PeriodQuery = None, start: FromQuery = None, end: ToQuery = None,
                              top: Annotated[int, Query(ge=1, le=100, description="Movers listed")] = 5,
                              measure: Annotated[str, Query(description="Movers ranked by tickets (count) or "
                                                                        "compensated amount (amount)")] = "count",
                              format: Annotated[str, Query(description="json or csv")] = "json",
            principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        if dimension not in reports.DIMENSIONS:
            raise _bad("dimension", f"unknown dimension {dimension!r}; one of {', '.join(reports.DIMENSIONS)}")
        if measure not in ("count", "amount"):
            raise _bad("measure", f"measure must be count or amount, not {measure!r}")
        if format not in ("json", "csv"):
            raise _bad("format", f"format must be json or csv, not {format!r}")
        p = period_for(period, start, end)
        result = await reports.root_causes(engine, r, dimension, p, top=top, measure=Measure(measure))
        if format == "csv":
            name = f"insights-root-causes-{r.code}-{dimension}-{p.label.replace('..', '_')}.csv"
            return Response(reports.root_causes_csv(result), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
        return _json(result)

    @api.get("/spikes/{region}", summary="Spike alerts of a region merged into episodes, with expected value, "
                                         "band and top contributors",
             responses={**csv_or_json("Episodes and their alerts"), **problems(404)})
    async def get_spikes(region: Annotated[str, Path()],
                         status: Annotated[Literal["open", "recent"], Query(
                             description="open: episodes whose last alert is on the last complete local day; "
                                         "recent: every episode with an alert in the last `days` days")] = "recent",
                         days: Annotated[int, Query(ge=1, le=400, description="Local days looked back")] = 28,
                         dimension: Annotated[str | None, Query(description="reason, carrier or seller")] = None,
                         key: Annotated[str | None, Query(max_length=128)] = None,
                         format: Annotated[str, Query(description="json or csv")] = "json",
            principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        if dimension is not None and dimension not in reports.SERIES_DIMENSIONS:
            raise _bad("dimension", f"unknown dimension {dimension!r}; one of "
                                    f"{', '.join(reports.SERIES_DIMENSIONS)}")
        if format not in ("json", "csv"):
            raise _bad("format", f"format must be json or csv, not {format!r}")
        result = await reports.spikes(engine, r, datetime.now(UTC), days=days, dimension=dimension, key=key,
                                      open_only=status == "open")
        if format == "csv":
            return Response(reports.spikes_csv(result), media_type="text/csv; charset=utf-8", headers={
                "Content-Disposition": f'attachment; filename="insights-spikes-{r.code}.csv"'})
        return _json(result)

    @api.get("/series/{region}", summary="Count series per dimension key (daily or hourly): spike detection input")
    async def get_series(region: Annotated[str, Path()],
                         dimension: Annotated[str, Query(description="reason, carrier or seller")],
                         granularity: Annotated[Literal["day", "hour"], Query()] = "day",
                         period: PeriodQuery = None, start: FromQuery = None, end: ToQuery = None,
                         key: Annotated[str | None, Query(max_length=128)] = None,
            principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        if dimension not in reports.SERIES_DIMENSIONS:
            raise _bad("dimension", f"unknown dimension {dimension!r}; one of "
                                    f"{', '.join(reports.SERIES_DIMENSIONS)}")
        if dimension == "seller" and granularity == "hour":
            raise _bad("granularity", "seller series are kept per day")
        p = period_for(period, start, end)
        if granularity == "hour" and p.days > MAX_SERIES_DAYS_HOURLY:
            raise _bad("granularity", f"hourly series span at most {MAX_SERIES_DAYS_HOURLY} days")
        return _json(await reports.series(engine, r, dimension, granularity, p, key))

    @api.get("/budgets/{region}/{period}/burndown", summary="Budget burn-down: usage by day, limit and pace line")
    async def get_burndown(region: Annotated[str, Path()],
                           period: Annotated[str, Path(description="YYYY-MM")],
            principal: Principal = Depends(auth)) -> Response:
        r = region_for(principal, region)
        p = period_for(period, None, None)
        if p.kind != "month":
            raise _bad("period", "budget periods are calendar months (YYYY-MM)")
        today = r.local(datetime.now(UTC)).date()
        return _json(await reports.budget_burndown(engine, r, p, today))

    @api.get("/tickets/{ticket_id}", summary="insights' record of a ticket and its compensations")
    async def get_ticket(ticket_id: Annotated[str, Path(max_length=128)],
            principal: Principal = Depends(auth)) -> Response:
        principal.require_role(*READERS)
        async with engine.connect() as conn:
            ticket = (await conn.execute(text(
                "SELECT ticket_id, region, known, occurred_at, reason, seller_id, carrier_id, raised_by, breach_at, "
                "feedback FROM tickets WHERE ticket_id = :t"), {"t": ticket_id})).mappings().first()
            comps = (await conn.execute(text(
                "SELECT compensation_id, source, kind, strategy_id, amount_minor, seller_minor, carrier_minor, "
                "platform_minor, issued_at, redeemed_minor, redeemed_at, expired_at, revoked_at FROM compensations "
                "WHERE ticket_id = :t ORDER BY issued_at NULLS LAST, compensation_id"), {"t": ticket_id})).mappings()
            comp_rows = [dict(c) for c in comps]
        if ticket is None or not principal.can_access(ticket["region"]):
            # Not found and not yours answer alike, so ticket ids of other regions cannot be probed.
            raise Problem(404, "Not Found", f"no ticket {ticket_id!r}",
                          errors=[{"field": "ticket_id", "message": "not known to insights"}])
        return _json({**dict(ticket), "compensations": comp_rows})

    return api


def _json(body: Any) -> Response:
    import orjson

    return Response(orjson.dumps(body, default=str), media_type="application/json")
