"""Workbench pages under /workbench: server-rendered HTML over the same audit operations as the JSON API
(``services.audit_sampler.operations``), so the rules (roles, regions, leases, blind audits) live in one place.

Every page needs a live session; every POST checks the session's CSRF token. A refusal of an operation
(``operations.errors``, mapped by ``problems.py``) or a ``Problem`` of the page itself becomes an HTML error
page with the same status (403 outside the viewer's regions or roles); a 422 is shown next to its form.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from services.audit_sampler.domain.verdicts import ATTRIBUTES, PARTY_TYPES, Share, VerdictInput
from services.audit_sampler.operations import claims, verdicts
from services.audit_sampler.operations import disputes as disputes_ops
from services.audit_sampler.operations import gold as gold_ops
from services.audit_sampler.operations.access import AUDIT_ROLES, LEAD_ROLES, RESOLVE_ROLES, region_scope
from services.audit_sampler.operations.errors import AuditError
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.persistence import workbench as queries
from services.audit_sampler.problems import AuditErrorRoute, as_problem
from services.audit_sampler.web import charts
from services.audit_sampler.web.auth import SignInRequired, Viewer, WorkbenchAuth, check_csrf
from services.audit_sampler.web.forms import GOLD_ROWS, gold_from_form, parse_amount, without_covered
from services.audit_sampler.web.reporting import (
    accuracy_trend,
    load_accuracy,
    load_calibration,
    parse_report_query,
)
from shared.contracts.events import CompensationKind
from shared.http import Problem
from shared.money import Money
from shared.regions import UnknownRegion, catalogue
from shared.web.pages import add_sign_in_routes, page_route, safe_next, secure

STYLESHEET = Path(__file__).with_name("static").joinpath("workbench.css").read_text(encoding="utf-8")
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
PREFIX = "/workbench"
ATTRIBUTE_LABELS = {
    "warranted": "Compensation was warranted",
    "amount_correct": "Amount is correct",
    "kind_correct": "Kind (voucher, refund, ...) is correct",
    "liable_party_correct": "Liable party is correct",
    "evidence_sufficient": "Evidence is sufficient",
    "policy_compliant": "Complies with the region's policy",
    "not_duplicate": "Not a duplicate",
}
DASHBOARD_ROLES = ("lead", "senior_auditor", "ops_admin")
DISPUTE_ROLES = ("lead", "senior_auditor", "ops_admin")


def money(minor: Any, currency: Any) -> str:
    try:
        return Money(int(minor), str(currency)).format()
    except (TypeError, ValueError):
        return f"{minor} {currency} (minor units)"


def pct(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"


def safe_link(uri: Any) -> str | None:
    """Evidence links come from upstream systems: only http(s) become links (no javascript: URLs)."""
    text = str(uri or "")
    return text if text.lower().startswith(("https://", "http://")) else None


TEMPLATES.env.filters["money"] = lambda amount: money(amount.get("amount_minor"), amount.get("currency")) \
    if isinstance(amount, Mapping) else "-"
TEMPLATES.env.globals.update(money=money, pct=pct, safe_link=safe_link, ATTRIBUTE_LABELS=ATTRIBUTE_LABELS,
                             PREFIX=PREFIX)


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    response = TEMPLATES.TemplateResponse(request, template, {"viewer": viewer, **context}, status_code=status)
    secure(response)  # pages show audit data: never cached, never framed, no foreign assets
    return response


def error_page(request: Request, status: int, title: str, detail: str | None,
               errors: list[dict[str, Any]] | None = None) -> HTMLResponse:
    return render(request, "error.html", status=status, title=title, detail=detail, errors=errors or [])


def _redirect(path: str, **params: Any) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return RedirectResponse(f"{PREFIX}{path}" + (f"?{query}" if query else ""), status_code=303)


def _safe_next(target: str | None) -> str:
    return safe_next(target, PREFIX, f"{PREFIX}/queues")


def workbench_router(auth: WorkbenchAuth) -> APIRouter:
    """A router of workbench pages: signed-out visitors go to the sign-in page, errors render as pages."""
    # The page route renders a Problem as the error page; the audit mix-in below it turns an operation's
    # refusal into that Problem first.
    route = type("WorkbenchRoute", (page_route(auth, PREFIX, error_page), AuditErrorRoute), {})
    return APIRouter(prefix=PREFIX, route_class=route, include_in_schema=False)


def page_access(auth: WorkbenchAuth) -> tuple[Callable[[Request], Awaitable[Viewer]],
                                               Callable[[Request], Awaitable[tuple[Viewer, FormData]]]]:
    """(viewer_of, posted): the signed-in viewer of a page, and of a posted form with its CSRF token checked."""

    async def viewer_of(request: Request) -> Viewer:
        viewer = await auth.viewer(request)
        if viewer is None:
            raise SignInRequired
        request.state.viewer = viewer
        return viewer

    async def posted(request: Request) -> tuple[Viewer, FormData]:
        viewer = await viewer_of(request)
        form = await request.form()
        check_csrf(viewer, _text(form, "csrf_token"))
        # Text with a NUL cannot be stored or published (ADR 0006, "Bounds"): refused here, naming the field,
        # before any workflow sees it, as intake and the JSON APIs refuse it.
        errors = [{"field": name, "message": "must not contain a NUL character (U+0000)"}
                  for name, value in form.multi_items() if isinstance(value, str) and "\x00" in value]
        if errors:
            raise Problem(422, "Invalid form", errors[0]["message"], errors=errors)
        return viewer, form

    return viewer_of, posted


def build_pages(auth: WorkbenchAuth, runtime: Runtime) -> APIRouter:
    router = workbench_router(auth)
    engine = auth.engine
    viewer_of, posted = page_access(auth)

    @router.get("/static/workbench.css")
    async def stylesheet() -> Response:
        return Response(STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    # -------------------------------------------------------------- sign-in (shared.web.pages)

    add_sign_in_routes(router, auth, render, prefix=PREFIX, home=f"{PREFIX}/queues")

    # -------------------------------------------------------------- auditors

    @router.get("")
    @router.get("/")
    async def home(request: Request) -> Response:
        viewer = await viewer_of(request)
        return _redirect("/accuracy" if viewer.has_role(*LEAD_ROLES) and not viewer.has_role("auditor")
                         else "/queues")

    @router.get("/queues")
    async def queues(request: Request, region: str | None = None, message: str | None = None) -> Response:
        viewer = await viewer_of(request)
        region = region.upper() if region else None
        rows = await claims.queue_overview(engine, viewer.principal, region, runtime=runtime)
        regions = viewer.principal.allowed_regions(catalogue().codes())
        return render(request, "queues.html", rows=rows, regions=regions, selected=region, message=message,
                      can_claim=viewer.has_role(*AUDIT_ROLES))

    @router.post("/claim")
    async def claim(request: Request) -> Response:
        viewer, form = await posted(request)
        region = (_text(form, "region") or "").upper()
        queue = _text(form, "queue") or None
        if not region:
            raise Problem(422, "Invalid request", "choose a region", errors=[{"field": "region",
                                                                             "message": "required"}])
        item = await claims.claim_next(engine, viewer.principal, region, queue, runtime=runtime)
        if item is None:
            return _redirect("/queues", region=region, message=f"Nothing waiting in {queue or 'any queue'} "
                                                                f"for {region}.")
        return _redirect(f"/items/{item['id']}")

    @router.get("/items/{item_id}")
    async def item_page(request: Request, item_id: int) -> Response:
        viewer = await viewer_of(request)
        return await _item_view(request, viewer, item_id)

    async def _item_view(request: Request, viewer: Viewer, item_id: int, *, status: int = 200,
                         errors: list[dict[str, Any]] | None = None, form: Mapping[str, Any] | None = None
                         ) -> Response:
        item = await claims.get_item(engine, viewer.principal, item_id)
        policy = runtime.policies.for_region(item["region"])
        now = datetime.now(UTC)
        mine = item["status"] == "claimed" and item["claimed_by"] == viewer.username and (
            item["lease_expires_at"] is None or item["lease_expires_at"] > now)
        shown = errors or []

        def errs(path: str) -> list[str]:
            """Messages about a field of the verdict form (or inside it: ``corrected_liability.0.party_id``)."""
            return [e["message"] for e in shown if e["field"] == path or e["field"].startswith(path + ".")]

        return render(request, "item.html", status=status, item=item, comp=item["compensation"], errs=errs,
                      mine=mine, attributes=ATTRIBUTES, categories=dict(sorted(policy.error_categories.items())),
                      party_types=PARTY_TYPES, errors=errors or [], form=form or {},
                      lease_left=claims.lease_remaining(item, now),
                      can_reassign=viewer.has_role(*LEAD_ROLES),
                      can_dispute=viewer.has_role("lead"))

    @router.post("/items/{item_id}/verdict")
    async def submit(request: Request, item_id: int) -> Response:
        viewer, form = await posted(request)
        try:
            verdict = _verdict_from_form(form)
            saved = await verdicts.submit_verdict(engine, viewer.principal, item_id, verdict, runtime=runtime)
        except (Problem, AuditError) as caught:
            exc = as_problem(caught)
            if exc.status != 422:
                raise
            return await _item_view(request, viewer, item_id, status=422, errors=exc.errors or [
                {"field": "verdict", "message": exc.detail or exc.title}], form=dict(form))
        outcome = "passed" if saved["passed"] else "failed"
        note = f" Correction {saved['correction_id']} sent to the ledger." if saved.get("correction_id") else ""
        return _redirect("/queues", region=saved["region"],
                         message=f"Verdict recorded: item {item_id} {outcome}.{note}")

    @router.post("/items/{item_id}/release")
    async def release(request: Request, item_id: int) -> Response:
        viewer, _ = await posted(request)
        item = await claims.release_item(engine, viewer.principal, item_id)
        return _redirect("/queues", region=item["region"], message=f"Item {item_id} is back in its queue.")

    @router.post("/items/{item_id}/reassign")
    async def reassign(request: Request, item_id: int) -> Response:
        viewer, form = await posted(request)
        auditor = (_text(form, "auditor_id") or "").strip().lower()
        await claims.reassign_item(engine, viewer.principal, item_id, auditor, runtime=runtime)
        return _redirect(f"/items/{item_id}")

    @router.get("/me")
    async def my_stats(request: Request) -> Response:
        viewer = await viewer_of(request)
        now = datetime.now(UTC)
        regions = region_scope(viewer.principal)
        # "Today" and "this week" of the viewer's first region; across regions a UTC cut would be no fairer.
        tz = catalogue().get(regions[0]).tz if regions else UTC
        local = now.astimezone(tz)
        day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        week_start = day_start - timedelta(days=local.weekday())
        async with engine.connect() as conn:
            stats = await queries.auditor_stats(conn, viewer.username, regions, day_start, week_start)
        return render(request, "me.html", stats=stats)

    # -------------------------------------------------------------- leads

    @router.get("/disputes")
    async def disputes(request: Request, region: str | None = None, status: str = "open",
                       message: str | None = None) -> Response:
        viewer = await viewer_of(request)
        viewer.principal.require_role(*DISPUTE_ROLES)
        if status not in ("open", "upheld", "overturned", "all"):
            raise Problem(422, "Invalid request", "status must be open, upheld, overturned or all",
                          errors=[{"field": "status", "message": "open, upheld, overturned or all"}])
        rows = await disputes_ops.list_disputes(engine, viewer.principal, region.upper() if region else None,
                                            None if status == "all" else status)
        for row in rows:
            # Separation of duties: the buttons only for someone who neither raised it nor gave the verdict.
            row["may_resolve"] = disputes_ops.may_resolve(viewer.principal, row)
            row["conflict"] = disputes_ops.resolution_conflict(viewer.principal, row, row["auditor_id"])
        return render(request, "disputes.html", rows=rows, shown=status, message=message,
                      can_resolve=viewer.has_role(*RESOLVE_ROLES))

    @router.post("/verdicts/{verdict_id}/dispute")
    async def raise_dispute(request: Request, verdict_id: int) -> Response:
        viewer, form = await posted(request)
        created = await disputes_ops.dispute_verdict(engine, viewer.principal, verdict_id, _text(form, "reason") or "")
        return _redirect("/disputes", message=f"Dispute {created['id']} opened.")

    @router.post("/disputes/{dispute_id}/resolve")
    async def resolve(request: Request, dispute_id: int) -> Response:
        viewer, form = await posted(request)
        resolved = await disputes_ops.resolve_dispute(engine, viewer.principal, dispute_id,
                                                  _text(form, "outcome") or "", _text(form, "note") or None,
                                                  runtime=runtime)
        reversal = resolved.get("reverse_correction_id")
        people = (f" Raised by {resolved['raised_by']}, verdict by {resolved['auditor_id']}, resolved by "
                  f"{resolved['resolved_by']}.")
        note = f" Reversal {reversal} sent to the ledger." if reversal else ""
        return _redirect("/disputes", status="all",
                         message=f"Dispute {dispute_id} {resolved['status']}.{people}{note}")

    @router.get("/items")
    async def items(request: Request, region: str | None = None) -> Response:
        """Supervisors' way to an item: open ones (to reassign) and failed verdicts (to dispute)."""
        viewer = await viewer_of(request)
        viewer.principal.require_role(*DASHBOARD_ROLES)
        allowed = viewer.principal.allowed_regions(catalogue().codes())
        region = region.upper() if region else None
        shown = region_scope(viewer.principal, region, check_code=True)
        async with engine.connect() as conn:
            open_rows = await queries.open_items(conn, shown)
            failed = await queries.failed_verdicts(conn, shown)
        return render(request, "items.html", open_rows=open_rows, failed=failed, regions=allowed, selected=region,
                      now=datetime.now(UTC), can_dispute=viewer.has_role("lead"))

    @router.get("/calibration")
    async def calibration(request: Request, region: str | None = None, period: str | None = None,
                          date: str | None = None) -> Response:
        viewer = await viewer_of(request)
        viewer.principal.require_role(*DASHBOARD_ROLES)
        q = parse_report_query(region or _first_region(viewer), period, date)
        viewer.principal.require_region(q.region.code)
        report = await load_calibration(engine, q)
        everyone = [g for g in report.gold if g.auditor_id == "*"]
        gold_chart = charts.trend_chart(
            [charts.Point(g.period, g.accuracy, g.ci_low if g.items else None, g.ci_high if g.items else None,
                          f" - {g.items} gold items") for g in everyone],
            title="Accuracy on gold items", floor=0.0)
        kappa_chart = charts.bar_chart(
            [charts.Point(r.key, max(r.kappa, 0.0), note=f" - kappa {r.kappa:.2f}, {r.pairs} pairs")
             for r in report.by_attribute if r.kappa is not None], title="Cohen's kappa by attribute",
            scale_max=1.0)
        return render(request, "calibration.html", q=q, report=report, gold_chart=gold_chart,
                      kappa_chart=kappa_chart, regions=viewer.principal.allowed_regions(catalogue().codes()))

    @router.get("/accuracy")
    async def accuracy(request: Request, region: str | None = None, period: str | None = None,
                       date: str | None = None) -> Response:
        viewer = await viewer_of(request)
        viewer.principal.require_role(*DASHBOARD_ROLES)
        q = parse_report_query(region or _first_region(viewer), period, date)
        viewer.principal.require_region(q.region.code)
        report = await load_accuracy(engine, q)
        trend = await accuracy_trend(engine, q)
        trend_chart = charts.trend_chart(
            [charts.Point(p.label, None if e.sample_size == 0 else e.value,
                          None if e.sample_size == 0 else e.interval.low,
                          None if e.sample_size == 0 else e.interval.high, f" - {e.sample_size} audits")
             for p, e in trend], title="Estimated compensation accuracy")
        attribute_chart = charts.bar_chart(
            [charts.Point(r.key, r.rate, r.ci_low, r.ci_high, f" - {r.errors} of {r.audited}")
             for r in report.rates["attribute"]], title="Error rate by attribute")
        cause_total = max([c.count for c in report.causes] + [1])
        cause_chart = charts.bar_chart(
            [charts.Point(c.category, c.count / cause_total, note=f" - {c.count} errors, trend {c.trend}")
             for c in report.causes], title="Top error categories (share of the largest)", scale_max=1.0)
        return render(request, "accuracy.html", q=q, report=report, doc=report.as_json(), trend_chart=trend_chart,
                      attribute_chart=attribute_chart, cause_chart=cause_chart,
                      regions=viewer.principal.allowed_regions(catalogue().codes()))

    # -------------------------------------------------------------- gold (known-answer) items

    async def _gold_view(request: Request, viewer: Viewer, *, status: int = 200, message: str | None = None,
                         errors: list[dict[str, Any]] | None = None, form: Mapping[str, Any] | None = None
                         ) -> Response:
        codes = viewer.principal.allowed_regions(catalogue().codes())
        policies = runtime.policies
        regions = [{"code": c, "currency": catalogue().get(c).currency,
                    "queues": [r.name for r in policies.for_region(c).queues]} for c in codes]
        async with engine.connect() as conn:
            recent = await queries.gold_items(conn, region_scope(viewer.principal))
        errors = errors or []

        def errs(path: str, exact: bool = False) -> list[str]:
            return [e["message"] for e in errors
                    if e["field"] == path or (not exact and e["field"].startswith(path + "."))]

        return render(request, "gold.html", status=status, regions=regions, recent=recent, message=message,
                      errors=errors, errs=errs, form=form or {}, kinds=[k.value for k in CompensationKind],
                      party_types=PARTY_TYPES, attributes=ATTRIBUTES, rows=range(GOLD_ROWS))

    @router.get("/gold")
    async def gold_page(request: Request, region: str | None = None, message: str | None = None) -> Response:
        viewer = await viewer_of(request)
        viewer.principal.require_role(*LEAD_ROLES)
        return await _gold_view(request, viewer, message=message, form={"region": (region or "").upper()})

    @router.post("/gold")
    async def seed_gold(request: Request) -> Response:
        viewer, form = await posted(request)
        viewer.principal.require_role(*LEAD_ROLES)
        code = (_text(form, "region") or "").strip().upper()
        try:
            region = catalogue().get(code)
        except UnknownRegion:
            return await _gold_view(request, viewer, status=422, form=dict(form), errors=[
                {"field": "region", "message": "choose one of your regions"}])
        # Before anything about the item is said: a region outside the lead's grants is simply refused.
        viewer.principal.require_region(region.code)
        parsed = gold_from_form(form, region)
        # Unreadable fields and the workflow's own verdict on the rest, together: nothing is written
        # while either has something to say, and the lead sees every mistake at once.
        errors = parsed.errors + without_covered(gold_ops.gold_item_errors(parsed.gold, runtime=runtime), parsed.errors)
        if not errors:
            try:
                item = await gold_ops.seed_gold_item(engine, viewer.principal, parsed.gold, runtime=runtime)
            except AuditError as caught:
                exc = as_problem(caught)
                if exc.status != 422:
                    raise
                errors = exc.errors or [{"field": "gold", "message": exc.detail or exc.title}]
        if errors:
            return await _gold_view(request, viewer, status=422, errors=parsed.on_rows(errors), form=dict(form))
        return _redirect("/gold", region=region.code, message=f"Gold item {item['id']} seeded into "
                                                              f"{item['region']} / {item['queue']}.")

    return router


def _first_region(viewer: Viewer) -> str:
    allowed = viewer.principal.allowed_regions(catalogue().codes())
    if not allowed:
        raise Problem(403, "Forbidden", "no region granted")
    return allowed[0]


def _text(form: FormData | Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _verdict_from_form(form: FormData) -> VerdictInput:
    """Form fields -> VerdictInput. Amounts are typed in major units ("12.50") and parsed exactly."""
    errors: list[dict[str, str]] = []
    attributes: dict[str, bool] = {}
    for name in ATTRIBUTES:
        value = _text(form, f"attr_{name}")
        if value not in ("yes", "no"):
            errors.append({"field": f"attributes.{name}", "message": "answer yes or no"})
        else:
            attributes[name] = value == "yes"
    currency = _text(form, "currency") or ""

    def amount(raw: str, field: str) -> int | None:
        return parse_amount(raw, currency, field, errors)

    raw_amount = (_text(form, "corrected_amount") or "").strip()
    corrected = amount(raw_amount, "corrected_amount_minor") if raw_amount else None
    shares: list[Share] = []
    for i in range(3):
        party = (_text(form, f"share_{i}_type") or "").strip()
        party_id = (_text(form, f"share_{i}_id") or "").strip() or None
        raw_share = (_text(form, f"share_{i}_amount") or "").strip()
        if not party and not raw_share:
            continue
        share_minor = amount(raw_share, f"corrected_liability.{i}.amount_minor")
        if share_minor is not None:
            shares.append(Share(party, party_id, share_minor))
    if errors:
        raise Problem(422, "Invalid verdict", "; ".join(e["message"] for e in errors), errors=errors)
    passed = all(attributes.values())
    # A category chosen with every answer yes is sent as it is: the workflow refuses the contradiction
    # (the auditor may have forgotten to answer no), where dropping it would pass the compensation quietly.
    category = (_text(form, "error_category") or "").strip() or None
    note = (_text(form, "note") or "").strip() or None
    return VerdictInput(attributes=attributes, passed=passed, error_category=category,
                        note=note[:2000] if note else None, corrected_amount_minor=corrected,
                        corrected_liability=tuple(shares) if shares else None)
