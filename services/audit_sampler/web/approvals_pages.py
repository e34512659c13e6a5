"""Workbench pages of the approval stage (issue 14): the approval queue of a lead's or senior auditor's
regions, one request with its case and trail, and the approve / reject / escalate forms (a reason on every
decision). The rules (roles, region grants, separation from the requesting agent, escalated requests for
senior auditors only) live in ``services.audit_sampler.approvals``; these pages only render and parse.

Sign-in, sessions and CSRF are the workbench's own (``web.auth``); every POST checks the session's token.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from services.audit_sampler.operations import approvals
from services.audit_sampler.operations.errors import AuditError
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.problems import as_problem
from services.audit_sampler.web.auth import Viewer, WorkbenchAuth
from services.audit_sampler.web.forms import parse_amount
from services.audit_sampler.web.pages import TEMPLATES, _redirect, page_access, render, workbench_router
from shared.http import Problem
from shared.regions import catalogue

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@\-]{1,128}$")


def when(value: Any) -> str:
    """An instant from an event (RFC 3339 text) or a row (datetime), as the workbench shows times: UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "-"


TEMPLATES.env.filters["when"] = when


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _checked_id(request_id: str) -> str:
    if not _REQUEST_ID.match(request_id):
        raise Problem(404, "Not Found", "no such request")
    return request_id


def build_approval_pages(auth: WorkbenchAuth, runtime: Runtime) -> APIRouter:
    router = workbench_router(auth)
    engine = auth.engine
    viewer_of, posted = page_access(auth)

    @router.get("/approvals")
    async def queue(request: Request, region: str | None = None, message: str | None = None) -> Response:
        viewer = await viewer_of(request)
        rows = await approvals.list_waiting(engine, viewer.principal, region)
        decided = await approvals.recent_decisions(engine, viewer.principal, region)
        now = datetime.now(UTC)
        for row in rows:
            row["overdue"] = row["due_at"] is not None and row["due_at"] <= now
            row["may_decide"] = approvals.may_decide(viewer.principal, row)
        return render(request, "approvals.html", rows=rows, decided=decided, message=message,
                      regions=viewer.principal.allowed_regions(catalogue().codes()),
                      selected=region.upper() if region else None)

    async def _request_view(request: Request, viewer: Viewer, request_id: str, *, status: int = 200,
                            errors: list[dict[str, Any]] | None = None) -> Response:
        row = await approvals.get_request(engine, viewer.principal, _checked_id(request_id))
        return render(request, "approval.html", status=status, r=row, case=row["request"].get("case") or {},
                      body=row["request"], errors=errors or [], may_decide=approvals.may_decide(viewer.principal, row),
                      may_escalate=row["status"] == "awaiting_approval" and approvals.may_decide(viewer.principal, row))

    @router.get("/approvals/{request_id}")
    async def one(request: Request, request_id: str) -> Response:
        viewer = await viewer_of(request)
        return await _request_view(request, viewer, request_id)

    @router.post("/approvals/{request_id}/decide")
    async def decide(request: Request, request_id: str) -> Response:
        viewer, form = await posted(request)
        decision = _text(form, "decision")
        if decision not in ("approve", "reject"):
            raise Problem(422, "Invalid request", "decision must be approve or reject",
                          errors=[{"field": "decision", "message": "approve or reject"}])
        row = await approvals.get_request(engine, viewer.principal, _checked_id(request_id))
        errors: list[dict[str, Any]] = []
        raw = (_text(form, "amount") or "").strip()
        amount = parse_amount(raw, row["currency"], "amount", errors) if raw and decision == "approve" else None
        try:
            if errors:
                raise Problem(422, "Invalid request", errors[0]["message"], errors=errors)
            saved = await approvals.decide(engine, viewer.principal, request_id, approve=decision == "approve",
                                           reason=_text(form, "reason"), amount_minor=amount, now=datetime.now(UTC))
        except (Problem, AuditError) as caught:
            exc = as_problem(caught)
            if exc.status != 422:
                raise
            return await _request_view(request, viewer, request_id, status=422,
                                       errors=exc.errors or [{"field": "reason", "message": exc.detail or ""}])
        return _redirect("/approvals", message=f"Request {request_id} {saved['status']}.")

    @router.post("/approvals/{request_id}/escalate")
    async def escalate(request: Request, request_id: str) -> Response:
        viewer, form = await posted(request)
        try:
            await approvals.escalate(engine, viewer.principal, _checked_id(request_id),
                                     reason=_text(form, "reason"), runtime=runtime, now=datetime.now(UTC))
        except (Problem, AuditError) as caught:
            exc = as_problem(caught)
            if exc.status != 422:
                raise
            return await _request_view(request, viewer, request_id, status=422, errors=exc.errors or [])
        return _redirect("/approvals", message=f"Request {request_id} escalated to the senior auditors.")

    return router
