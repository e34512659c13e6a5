"""The audit workbench (server-rendered pages under /workbench) and the reports API (/v1/reports).

``build_web_router(ctx, runtime)`` and ``build_reports_router(ctx)`` are mounted by the service app. Sessions
live in the database, so the routers need no shared state beyond the service context and the audit runtime."""

from __future__ import annotations

from fastapi import APIRouter

from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.web.actions_pages import build_action_pages
from services.audit_sampler.web.approvals_pages import build_approval_pages
from services.audit_sampler.web.auth import WorkbenchAuth, purge_expired_sessions
from services.audit_sampler.web.pages import build_pages
from services.audit_sampler.web.reports_api import build_reports_api
from services.audit_sampler.web.settings import WorkbenchSettings
from shared.periodic import PeriodicTask
from shared.service import ServiceContext


def workbench_auth(ctx: ServiceContext, settings: WorkbenchSettings | None = None) -> WorkbenchAuth:
    return WorkbenchAuth(ctx.engine, ctx.tokens, settings or WorkbenchSettings())


def build_web_router(ctx: ServiceContext, runtime: Runtime, settings: WorkbenchSettings | None = None
                     ) -> APIRouter:
    auth = workbench_auth(ctx, settings)
    router = APIRouter()
    router.include_router(build_pages(auth, runtime))
    router.include_router(build_approval_pages(auth, runtime))
    router.include_router(build_action_pages(auth))
    return router


def build_reports_router(ctx: ServiceContext, settings: WorkbenchSettings | None = None) -> APIRouter:
    return build_reports_api(ctx, workbench_auth(ctx, settings))


def session_purge_task(ctx: ServiceContext, interval: float) -> PeriodicTask:
    """The periodic job that deletes expired workbench sessions (a ServiceContext component)."""
    return PeriodicTask("workbench-session-purge", interval, lambda: purge_expired_sessions(ctx.engine))


__all__ = ["build_reports_router", "build_web_router", "session_purge_task", "workbench_auth"]
