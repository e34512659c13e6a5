"""The ops dashboard served by insights (/dashboard): sign-in with the workbench's mechanism (``shared.web``)
on insights' own tables, and the overview, root-cause, budget and strategy (review queue, scorecard) pages
over the service's report code."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from services.insights.config import Settings
from services.insights.domain.scorecard import Thresholds
from services.insights.web.auth import DashboardAuth, purge_expired_sessions
from services.insights.web.pages import build_pages
from shared.periodic import PeriodicTask
from shared.service import ServiceContext


def mount_dashboard(app: FastAPI, ctx: ServiceContext, settings: Settings,
                    thresholds: Mapping[str, Thresholds] | None = None) -> DashboardAuth:
    """Serve the pages on the app and purge expired sessions periodically (a ServiceContext component);
    ``thresholds`` (per region) feed the strategy scorecard pages."""
    auth = DashboardAuth(ctx.engine, ctx.tokens, settings)
    app.include_router(build_pages(auth, settings, thresholds))
    ctx.components.append(PeriodicTask("dashboard-session-purge", settings.session_purge_seconds,
                                       lambda: purge_expired_sessions(ctx.engine, settings)))
    return auth


__all__ = ["DashboardAuth", "mount_dashboard"]
