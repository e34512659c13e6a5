"""Workbench pages of corrective actions (issue 14): the open and overdue list of the viewer's regions, the
form a lead opens one with (prefilled from an item's finding), and one action with its status, owner, due
date and measured effect (error rate before vs after, with its interval). Rules live in
``services.audit_sampler.actions``; these pages only render and parse. Every POST checks the session's CSRF
token (``web.auth``)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from services.audit_sampler.domain import actions as domain
from services.audit_sampler.operations import corrective_actions as actions
from services.audit_sampler.operations.errors import AuditError
from services.audit_sampler.problems import as_problem
from services.audit_sampler.web.auth import Viewer, WorkbenchAuth
from services.audit_sampler.web.pages import _redirect, page_access, render, workbench_router
from shared.http import Problem
from shared.regions import catalogue


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else None


def _date(raw: str | None, errors: list[dict[str, str]]) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        errors.append({"field": "due_on", "message": "a date like 2026-12-31"})
        return None


def build_action_pages(auth: WorkbenchAuth) -> APIRouter:
    router = workbench_router(auth)
    engine = auth.engine
    viewer_of, posted = page_access(auth)

    async def _list_view(request: Request, viewer: Viewer, *, status: int = 200, message: str | None = None,
                         form: dict[str, Any] | None = None, errors: list[dict[str, Any]] | None = None) -> Response:
        rows = await actions.list_actions(engine, viewer.principal, None, now=datetime.now(UTC))
        return render(request, "actions.html", status=status, rows=rows, message=message, form=form or {},
                      errors=errors or [], regions=viewer.principal.allowed_regions(catalogue().codes()),
                      sources=domain.SOURCES, target_types=domain.TARGET_TYPES, kinds=domain.KINDS,
                      can_open=viewer.has_role(*actions.LEAD_ROLES))

    @router.get("/actions")
    async def listing(request: Request, message: str | None = None, region: str | None = None,
                      source: str | None = None, source_ref: str | None = None, target_type: str | None = None,
                      target_id: str | None = None) -> Response:
        viewer = await viewer_of(request)
        prefill = {"region": region, "source": source, "source_ref": source_ref, "target_type": target_type,
                   "target_id": target_id, "owner": viewer.username}
        return await _list_view(request, viewer, message=message,
                                form={k: v for k, v in prefill.items() if v})

    @router.post("/actions")
    async def open_(request: Request) -> Response:
        viewer, form = await posted(request)
        errors: list[dict[str, str]] = []
        due_on = _date(_text(form, "due_on"), errors)
        raw_window = _text(form, "window_days") or "28"
        window = int(raw_window) if raw_window.isdigit() else 0
        action = domain.ActionInput(
            region=(_text(form, "region") or "").upper(), source=_text(form, "source") or "",
            source_ref=_text(form, "source_ref") or None, target_type=_text(form, "target_type") or "",
            target_id=_text(form, "target_id") or "", kind=_text(form, "kind") or "", owner=_text(form, "owner") or "",
            due_on=due_on, window_days=window, note=_text(form, "note") or None)
        try:
            if errors:
                raise Problem(422, "Invalid corrective action", errors[0]["message"], errors=errors)
            row = await actions.open_action(engine, viewer.principal, action, opened_by=viewer.username,
                                            now=datetime.now(UTC))
        except (Problem, AuditError) as caught:
            exc = as_problem(caught)
            if exc.status != 422:
                raise
            return await _list_view(request, viewer, status=422, form=dict(form), errors=exc.errors or [])
        return _redirect(f"/actions/{row['id']}", message=f"Corrective action {row['id']} opened.")

    async def _detail(request: Request, viewer: Viewer, action_id: int, *, status: int = 200,
                      message: str | None = None, errors: list[dict[str, Any]] | None = None) -> Response:
        now = datetime.now(UTC)
        row, effect = await actions.get_action(engine, viewer.principal, action_id, now=now)
        window = domain.windows(opened_at=row["opened_at"], done_at=row["done_at"], window_days=row["window_days"],
                                now=now)
        return render(request, "action.html", status=status, a=row, effect=effect, w=window, message=message,
                      errors=errors or [], statuses=sorted(domain.TRANSITIONS[row["status"]]),
                      can_edit=viewer.has_role(*actions.LEAD_ROLES) and row["status"] in ("open", "in_progress"))

    @router.get("/actions/{action_id}")
    async def detail(request: Request, action_id: int, message: str | None = None) -> Response:
        viewer = await viewer_of(request)
        return await _detail(request, viewer, action_id, message=message)

    @router.post("/actions/{action_id}")
    async def update(request: Request, action_id: int) -> Response:
        viewer, form = await posted(request)
        errors: list[dict[str, str]] = []
        due_on = _date(_text(form, "due_on"), errors)
        try:
            if errors:
                raise Problem(422, "Invalid change", errors[0]["message"], errors=errors)
            await actions.update_action(engine, viewer.principal, action_id, status=_text(form, "status") or None,
                                        owner=_text(form, "owner") or None, due_on=due_on,
                                        note=_text(form, "note") or None, now=datetime.now(UTC))
        except (Problem, AuditError) as caught:
            exc = as_problem(caught)
            if exc.status != 422:
                raise
            return await _detail(request, viewer, action_id, status=422, errors=exc.errors or [])
        return _redirect(f"/actions/{action_id}", message="Saved.")

    return router
