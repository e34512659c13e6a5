"""GET /v1/reports/accuracy and /v1/reports/calibration: JSON or CSV, region-scoped.

Callers authenticate with a bearer token, or with a live workbench session (so the dashboard's
"download CSV" links work in the browser; these are read-only GETs, so no CSRF token is needed)."""

# No `from __future__ import annotations`: FastAPI must resolve the Annotated aliases defined inside
# build_reports_api at import time.

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from services.audit_sampler.domain.reports import CALIBRATION_CSV_HEADER, CSV_HEADER
from services.audit_sampler.web.auth import WorkbenchAuth
from services.audit_sampler.web.reporting import (
    ReportQuery,
    load_accuracy,
    load_calibration,
    parse_report_query,
    to_csv,
)
from shared.auth import Authenticator, Principal
from shared.contracts.envelope import DATE_PATTERN
from shared.http import Problem, csv_or_json, problems
from shared.service import ServiceContext

# Bearer tokens, or the workbench's session cookie (the dashboard's download links).
SECURITY: list[dict[str, list[str]]] = [{"Bearer": []}, {"WorkbenchSession": []}]
REPORT_ROLES = ("lead", "senior_auditor", "ops_admin", "finance", "strategy_manager")
CALIBRATION_ROLES = ("lead", "senior_auditor", "ops_admin")


def build_reports_api(ctx: ServiceContext, auth: WorkbenchAuth) -> APIRouter:
    bearer = Authenticator(ctx.tokens)

    async def principal(request: Request) -> Principal:
        found = await bearer.authenticate(request)
        if found is None:
            viewer = await auth.viewer(request)
            found = None if viewer is None else viewer.principal
        if found is None:
            raise Problem(401, "Unauthorized", "missing or invalid credentials",
                          headers={"WWW-Authenticate": 'Bearer realm="compensation-platform"'})
        return found

    router = APIRouter(prefix="/v1/reports", tags=["reports"])
    Caller = Annotated[Principal, Depends(principal)]
    RegionQ = Annotated[str, Query(pattern=r"^[A-Z]{2,3}$", description="Region code, e.g. US")]
    PeriodQ = Annotated[Literal["day", "week", "month"], Query(
        description="day, week (ISO, Monday first) or month")]
    DateQ = Annotated[str | None, Query(alias="date", pattern=DATE_PATTERN, description=(
        "A local date inside the period (YYYY-MM-DD, years 1970 to 2199); default today in the region's "
        "time zone"))]
    FormatQ = Annotated[Literal["json", "csv"], Query(alias="format", description="json or csv")]
    answers = {**csv_or_json("The report: JSON, or CSV with format=csv."),
               **problems(described={422: "Invalid report request; ``errors`` names each bad parameter "
                                          "(unknown region, period, date)."})}

    def scoped(caller: Principal, roles: tuple[str, ...], region: str | None, period: str | None,
               day: str | None) -> ReportQuery:
        caller.require_role(*roles)
        q = parse_report_query(region, period, day)
        caller.require_region(q.region.code)
        return q

    def respond(doc: dict[str, Any], header: list[str], rows: list[list[Any]], fmt: str, name: str) -> Response:
        if fmt == "csv":
            return Response(to_csv(header, rows), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
        return JSONResponse(doc)

    @router.get("/accuracy", summary="Compensation accuracy of a region and period", responses=answers,
                openapi_extra={"security": SECURITY})
    async def accuracy(caller: Caller, region: RegionQ, period: PeriodQ = "month", day: DateQ = None,
                       fmt: FormatQ = "json") -> Response:
        """Hajek (Horvitz-Thompson) accuracy estimate with its 95% interval, money over- and
        under-compensated with bounds, error rates by agent, team, reason code and attribute (Wilson
        intervals), and root causes against the previous period."""
        q = scoped(caller, REPORT_ROLES, region, period, day)
        report = await load_accuracy(ctx.engine, q)
        return respond(report.as_json(), CSV_HEADER, report.csv_rows(), fmt,
                       f"accuracy-{q.region.code}-{q.period.label}")

    @router.get("/calibration", summary="Auditor agreement and gold accuracy of a region and period",
                responses=answers, openapi_extra={"security": SECURITY})
    async def calibration(caller: Caller, region: RegionQ, period: PeriodQ = "month", day: DateQ = None,
                          fmt: FormatQ = "json") -> Response:
        """Cohen's kappa and percent agreement per attribute and per auditor over blind double audits,
        and accuracy on gold (known-answer) items for this and the previous periods."""
        q = scoped(caller, CALIBRATION_ROLES, region, period, day)
        report = await load_calibration(ctx.engine, q)
        return respond(report.as_json(), CALIBRATION_CSV_HEADER, report.csv_rows(), fmt,
                       f"calibration-{q.region.code}-{q.period.label}")

    return router
