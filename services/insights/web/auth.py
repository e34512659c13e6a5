"""Dashboard sign-in: the workbench's mechanism (``shared.web``) bound to insights' own tables, cookies,
roles and metrics. Who may see the pages: ``DASHBOARD_ROLES`` (docs/insights-dashboard.md)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights.config import Settings
from services.insights.web.metrics import CSRF_REJECTED, SESSIONS_PURGED, SIGN_IN_LOCKS, SIGN_INS
from shared.auth import TokenService
from shared.web import auth as shared_auth
from shared.web.auth import SessionAuth, SignInMetrics, Site
from shared.web.store import SignInStore, Tables

# The people who steer compensation: strategy managers, finance, ops admins, and the audit leads and senior
# auditors who answer for accuracy. Auditors score compensations blind and have no use for cost and budget
# pages; a user with another role (or none of these) is refused.
DASHBOARD_ROLES = ("strategy_manager", "finance", "lead", "senior_auditor", "ops_admin")

STORE = SignInStore(Tables(users="dashboard_users", sessions="dashboard_sessions",
                           throttle="dashboard_signin_throttle"))
DASHBOARD = Site(
    name="dashboard", roles=DASHBOARD_ROLES, store=STORE,
    metrics=SignInMetrics(sign_ins=SIGN_INS, locks=SIGN_IN_LOCKS, sessions_purged=SESSIONS_PURGED,
                          csrf_rejected=CSRF_REJECTED),
    # Cookies are not kept apart by port: on one host the workbench's and the dashboard's must differ by name.
    session_cookie="insights_dashboard_session", signin_csrf_cookie="insights_dashboard_signin",
    device_cookie="insights_dashboard_device",
    audience="dashboard-session:", device_audience="dashboard-device:")


class DashboardAuth(SessionAuth):
    def __init__(self, engine: AsyncEngine, tokens: TokenService, settings: Settings) -> None:
        super().__init__(engine, tokens, settings, DASHBOARD)


async def purge_expired_sessions(engine: AsyncEngine, settings: Settings, now: datetime | None = None) -> int:
    return await shared_auth.purge_expired_sessions(
        engine, DASHBOARD, timedelta(seconds=settings.signin_lockout_seconds), now)
