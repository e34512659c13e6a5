"""Workbench sign-in: the shared mechanism (``shared.web.auth``: sessions in signed cookies, CSRF tokens,
throttling with known devices, trusted-header mode) bound to the workbench's roles, tables, cookies and
metrics. The insights dashboard binds the same mechanism to its own."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from services.audit_sampler.persistence import workbench as queries
from services.audit_sampler.web.metrics import CSRF_REJECTED, SESSIONS_PURGED, SIGN_IN_LOCKS, SIGN_INS
from services.audit_sampler.web.security import WORKBENCH_ROLES
from services.audit_sampler.web.settings import WorkbenchSettings
from shared.auth import TokenService
from shared.web import auth as shared_auth
from shared.web.auth import PendingCookie, SessionAuth, SignInFailed, SignInMetrics, SignInRequired, Site, Viewer

SESSION_COOKIE = "audit_workbench_session"
SIGNIN_CSRF_COOKIE = "audit_workbench_signin"
DEVICE_COOKIE = "audit_workbench_device"  # this browser signed in to the account before (known device)

WORKBENCH = Site(
    name="workbench", roles=WORKBENCH_ROLES, store=queries.STORE,
    metrics=SignInMetrics(sign_ins=SIGN_INS, locks=SIGN_IN_LOCKS, sessions_purged=SESSIONS_PURGED,
                          csrf_rejected=CSRF_REJECTED),
    session_cookie=SESSION_COOKIE, signin_csrf_cookie=SIGNIN_CSRF_COOKIE, device_cookie=DEVICE_COOKIE,
    audience="workbench-session:", device_audience="workbench-device:")

__all__ = ["DEVICE_COOKIE", "SESSION_COOKIE", "SIGNIN_CSRF_COOKIE", "WORKBENCH", "PendingCookie", "SignInFailed",
           "SignInRequired", "Viewer", "WorkbenchAuth", "check_csrf", "purge_expired_sessions"]


class WorkbenchAuth(SessionAuth):
    def __init__(self, engine: AsyncEngine, tokens: TokenService, settings: WorkbenchSettings) -> None:
        super().__init__(engine, tokens, settings, WORKBENCH)


async def purge_expired_sessions(engine: AsyncEngine, now: datetime | None = None,
                                 throttle_window: timedelta | None = None) -> int:
    """Delete expired workbench sessions and spent sign-in counters; returns how many sessions."""
    window = throttle_window or timedelta(seconds=WorkbenchSettings().signin_lockout_seconds)
    return await shared_auth.purge_expired_sessions(engine, WORKBENCH, window, now)


def check_csrf(viewer: Viewer, submitted: str | None) -> None:
    shared_auth.check_csrf(viewer, submitted, CSRF_REJECTED)
