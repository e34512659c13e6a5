"""The ops dashboard under /dashboard: overview, root causes, budget burn-down, the strategy review queue and
each strategy's scorecard. Server-rendered HTML with inline SVG charts (no scripts, nothing from another
origin).

Every page needs a live session of a user with a dashboard role (``DASHBOARD_ROLES``) and a grant for the
region shown: another region answers 403, and the region picker offers only granted ones. The only forms
that change anything (sign-in, sign-out) carry CSRF tokens; the pickers are plain GET forms. Query
parameters are bounded in length and parsed strictly (a bad period is a 422 page naming the field).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.insights import plans, reports
from services.insights.config import Settings
from services.insights.domain.budget_plan import add_months
from services.insights.domain.periods import Period, PeriodError, month, parse_period
from services.insights.domain.scorecard import Thresholds
from services.insights.web import plan_views, strategies, views
from services.insights.web.auth import DASHBOARD_ROLES, DashboardAuth
from shared.http import Problem
from shared.regions import Region, UnknownRegion, catalogue
from shared.web.auth import SignInRequired, Viewer
from shared.web.pages import add_sign_in_routes, page_route, secure

PREFIX = "/dashboard"
HOME = f"{PREFIX}/overview"
STYLESHEET = Path(__file__).with_name("static").joinpath("dashboard.css").read_text(encoding="utf-8")
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
TEMPLATES.env.globals.update(PREFIX=PREFIX)
STRATEGY_ID = r"^[a-z0-9_\-]{1,100}$"  # as strategy files name them
DIMENSION_LABELS = {"reason": "Reason", "carrier": "Carrier", "seller": "Seller", "strategy": "Strategy"}

RegionQuery = Annotated[str | None, Query(max_length=8, pattern=r"^[A-Za-z]{2,8}$")]
PeriodQuery = Annotated[str | None, Query(max_length=10, description="YYYY-MM, YYYY-Www or YYYY-MM-DD")]
FromQuery = Annotated[str | None, Query(alias="from", max_length=10, description="first local day, YYYY-MM-DD")]
ToQuery = Annotated[str | None, Query(alias="to", max_length=10, description="last local day, inclusive")]


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    response = TEMPLATES.TemplateResponse(request, template, {"viewer": viewer, **context}, status_code=status)
    secure(response)
    return response


def error_page(request: Request, status: int, title: str, detail: str | None,
               errors: list[dict[str, Any]] | None = None) -> HTMLResponse:
    return render(request, "error.html", status=status, title=title, detail=detail, errors=errors or [])


def link(path: str, params: Mapping[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v})
    return f"{PREFIX}{path}" + (f"?{query}" if query else "")


TEMPLATES.env.globals["link"] = link


class Selection:
    """The region and period a page shows, and what the pickers need to keep them."""

    def __init__(self, viewer: Viewer, region: Region, period: Period, today: date, path: str) -> None:
        self.region, self.period, self.today, self.path = region, period, today, path
        self.regions = viewer.principal.allowed_regions(catalogue().codes())
        self.extra: dict[str, str] = {}  # the page's own parameters, kept by the pickers (dimension)
        self.month_only = False

    def href(self, **override: str | None) -> str:
        """This page with another region or period, keeping everything else."""
        params = {**self.params(), **self.extra, **override}
        if self.month_only:
            params.pop("from", None)
            params.pop("to", None)
        return link(self.path, params)

    def params(self, **override: str | None) -> dict[str, str | None]:
        p = self.period
        base: dict[str, str | None] = ({"from": p.first.isoformat(), "to": p.last.isoformat()} if p.kind == "custom"
                                       else {"period": p.label})
        return {"region": self.region.code, **base, **override}

    @property
    def month_value(self) -> str:
        return f"{self.period.first:%Y-%m}" if self.period.kind == "month" else f"{self.today:%Y-%m}"

    @property
    def week_value(self) -> str:
        day = self.period.first if self.period.kind == "week" else self.today
        year, week, _ = day.isocalendar()
        return f"{year:04d}-W{week:02d}"


def build_pages(auth: DashboardAuth, settings: Settings,
                thresholds: Mapping[str, Thresholds] | None = None) -> APIRouter:
    per_region = thresholds or {}
    router = APIRouter(prefix=PREFIX, route_class=page_route(auth, PREFIX, error_page), include_in_schema=False)
    engine = auth.engine

    async def viewer_of(request: Request) -> Viewer:
        viewer = await auth.viewer(request)
        if viewer is None:
            raise SignInRequired
        request.state.viewer = viewer
        viewer.principal.require_role(*DASHBOARD_ROLES)
        return viewer

    def region_of(viewer: Viewer, code: str | None) -> Region:
        allowed = viewer.principal.allowed_regions(catalogue().codes())
        if code is None:
            if not allowed:
                raise Problem(403, "Forbidden", "no region granted; ask an ops admin to grant you one")
            code = allowed[0]
        try:
            region = catalogue().get(code.upper())
        except UnknownRegion:
            raise Problem(404, "Not Found", f"unknown region {code!r}",
                          errors=[{"field": "region", "message": "not in the region catalogue"}]) from None
        viewer.principal.require_region(region.code)
        return region

    def selection(viewer: Viewer, path: str, code: str | None, period: str | None, start: str | None,
                  end: str | None) -> Selection:
        region = region_of(viewer, code)
        today = region.local(datetime.now(UTC)).date()
        if period is None and start is None and end is None:
            chosen = month(today.year, today.month)
        else:
            try:
                chosen = parse_period(period, start, end)
            except PeriodError as exc:
                raise Problem(422, "Invalid period", str(exc),
                              errors=[{"field": exc.field, "message": str(exc)}]) from None
        return Selection(viewer, region, chosen, today, path)

    @router.get("/static/dashboard.css")
    async def stylesheet() -> Response:
        return Response(STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    add_sign_in_routes(router, auth, render, prefix=PREFIX, home=HOME)

    @router.get("")
    @router.get("/")
    async def home(request: Request) -> Response:
        await viewer_of(request)
        return RedirectResponse(HOME, status_code=303)

    @router.get("/overview")
    async def overview(request: Request, region: RegionQuery = None, period: PeriodQuery = None,
                       start: FromQuery = None, end: ToQuery = None) -> Response:
        viewer = await viewer_of(request)
        sel = selection(viewer, "/overview", region, period, start, end)
        data = await views.overview(engine, sel.region, sel.period, settings.dashboard_trend_periods, sel.today)
        return render(request, "overview.html", sel=sel, page="overview", **data)

    @router.get("/root-causes")
    async def root_causes(request: Request, region: RegionQuery = None, period: PeriodQuery = None,
                          start: FromQuery = None, end: ToQuery = None,
                          dimension: Annotated[str, Query(max_length=16)] = "reason") -> Response:
        viewer = await viewer_of(request)
        sel = selection(viewer, "/root-causes", region, period, start, end)
        if dimension not in reports.DIMENSIONS:
            raise Problem(422, "Invalid request", f"unknown dimension {dimension!r}", errors=[
                {"field": "dimension", "message": f"one of {', '.join(reports.DIMENSIONS)}"}])
        sel.extra["dimension"] = dimension
        data = await views.root_causes(engine, sel.region, dimension, sel.period)
        return render(request, "root_causes.html", sel=sel, page="root-causes", dimension=dimension,
                      dimensions=DIMENSION_LABELS, **data)

    @router.get("/budget")
    async def budget(request: Request, region: RegionQuery = None, period: PeriodQuery = None) -> Response:
        viewer = await viewer_of(request)
        sel = selection(viewer, "/budget", region, period, None, None)
        sel.month_only = True
        if sel.period.kind != "month":
            raise Problem(422, "Invalid period", "budget periods are calendar months (YYYY-MM)",
                          errors=[{"field": "period", "message": "a month, YYYY-MM"}])
        data = await views.budget(engine, sel.region, sel.period, sel.today)
        return render(request, "budget.html", sel=sel, page="budget", **data)

    def thresholds_of(region: Region) -> Thresholds:
        t = per_region.get(region.code)
        if t is None:
            raise Problem(404, "Not Found", f"no scorecard thresholds for {region.code}; add its block to "
                          f"{settings.scorecard_thresholds_file}",
                          errors=[{"field": "region", "message": "the thresholds file has no block for it"}])
        return t

    @router.get("/strategies")
    async def review_queue(request: Request, region: RegionQuery = None, period: PeriodQuery = None,
                           start: FromQuery = None, end: ToQuery = None,
                           show: Annotated[str, Query(max_length=8)] = "queue") -> Response:
        """Strategies whose verdict is review or retire (``show=all``: every scored strategy)."""
        viewer = await viewer_of(request)
        sel = selection(viewer, "/strategies", region, period, start, end)
        if show not in ("queue", "all"):
            raise Problem(422, "Invalid request", f"unknown view {show!r}",
                          errors=[{"field": "show", "message": "queue or all"}])
        sel.extra["show"] = show
        data = await strategies.review_queue(engine, sel.region, sel.period, thresholds_of(sel.region),
                                             window_days=settings.return_window_days,
                                             margin_days=settings.return_retention_margin_days,
                                             everything=show == "all")
        return render(request, "strategies.html", sel=sel, page="strategies", show=show, **data)

    @router.get("/strategies/{strategy_id}")
    async def strategy(request: Request, strategy_id: Annotated[str, PathParam(pattern=STRATEGY_ID)],
                       region: RegionQuery = None, period: PeriodQuery = None, start: FromQuery = None,
                       end: ToQuery = None) -> Response:
        """One strategy's scorecard for the region and period: facts, intervals, verdict, reasons, thresholds."""
        viewer = await viewer_of(request)
        sel = selection(viewer, f"/strategies/{strategy_id}", region, period, start, end)
        data = await strategies.one_strategy(engine, sel.region, sel.period, thresholds_of(sel.region), strategy_id,
                                             window_days=settings.return_window_days,
                                             margin_days=settings.return_retention_margin_days)
        return render(request, "strategy.html", sel=sel, page="strategies", strategy_id=strategy_id, **data)

    @router.get("/plan")
    async def budget_plan(request: Request, region: RegionQuery = None, period: PeriodQuery = None) -> Response:
        viewer = await viewer_of(request)
        sel = selection(viewer, "/plan", region, period, None, None)
        sel.month_only = True
        if period is None:  # the next month is what gets planned
            nxt = add_months(month(sel.today.year, sel.today.month), 1)
            sel = Selection(viewer, sel.region, nxt, sel.today, "/plan")
            sel.month_only = True
        try:
            data = await plan_views.plan(engine, sel.region, sel.period, sel.today)
        except plans.PlanError as exc:
            raise Problem(422, "Invalid period", str(exc), errors=[{"field": exc.field, "message": str(exc)}]) from None
        return render(request, "plan.html", sel=sel, page="plan", **data)

    return router
