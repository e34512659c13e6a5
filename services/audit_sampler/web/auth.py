"""Workbench sign-in: sessions carried by a signed, expiring cookie, CSRF synchronizer tokens, and the
trusted-header mode for running behind an identity proxy.

The cookie is a token from the service's ``TokenService`` (HS256, expiring): subject = user name,
audience = ``workbench-session:<session id>``. The signature stops forgery, the session row (looked up on
every request) makes sign-out, disabling a user and changed roles or regions take effect at once, and
holds the CSRF token that every POST must echo in its ``csrf_token`` field.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.audit_sampler.web import queries
from services.audit_sampler.web.metrics import CSRF_REJECTED, SESSIONS_PURGED, SIGN_INS
from services.audit_sampler.web.security import (
    WORKBENCH_ROLES,
    dummy_hash,
    new_csrf_token,
    new_session_id,
    same_token,
    verify_password,
)
from services.audit_sampler.web.settings import WorkbenchSettings
from shared.auth import Principal, TokenService
from shared.http import Problem

SESSION_COOKIE = "audit_workbench_session"
SIGNIN_CSRF_COOKIE = "audit_workbench_signin"
_AUDIENCE = "workbench-session:"


@dataclass(frozen=True)
class Viewer:
    """The signed-in person of a page request."""

    principal: Principal
    session_id: str
    csrf_token: str

    @property
    def username(self) -> str:
        return self.principal.subject

    def has_role(self, *roles: str) -> bool:
        return self.principal.has_role(*roles)


class SignInRequired(Exception):
    """No live session: pages answer with a redirect to the sign-in page."""


class SignInFailed(Exception):
    pass


@dataclass(frozen=True)
class PendingCookie:
    value: str
    max_age: int
    secure: bool


class WorkbenchAuth:
    def __init__(self, engine: AsyncEngine, tokens: TokenService, settings: WorkbenchSettings) -> None:
        self.engine, self.tokens, self.settings = engine, tokens, settings

    def _principal(self, user: queries.User) -> Principal:
        return Principal(subject=user.username, kind="session",
                         roles=frozenset(r for r in user.roles if r in WORKBENCH_ROLES),
                         regions=frozenset(user.regions))

    def _session_id(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            _, session_id = self.tokens.verify_audience(cookie, _AUDIENCE)
        except Problem:
            return None
        return session_id

    async def viewer(self, request: Request) -> Viewer | None:
        now = datetime.now(UTC)
        session_id = self._session_id(request.cookies.get(SESSION_COOKIE))
        session = None
        if session_id is not None:
            async with self.engine.connect() as conn:
                session = await queries.live_session(conn, session_id, now)
        if self.settings.trusted_header_auth:
            return await self._trusted(request, session, now)
        if session is None:
            return None
        return Viewer(self._principal(session.user), session.id, session.csrf_token)

    async def _trusted(self, request: Request, session: queries.Session | None, now: datetime) -> Viewer | None:
        username = request.headers.get(self.settings.trusted_user_header, "").strip().lower()
        if not username:
            return None
        if session is not None and session.user.username == username:
            return Viewer(self._principal(session.user), session.id, session.csrf_token)
        async with self.engine.begin() as conn:
            user = await queries.get_user(conn, username)
            if user is None or user.disabled:
                raise Problem(403, "Forbidden", f"{username} is not a workbench user; ask an ops admin to add "
                                                "them with `users create`")
            viewer, cookie = await self._open_session(conn, user, now)
        SIGN_INS.labels("trusted_header").inc()
        request.state.pending_cookie = cookie
        return viewer

    async def _open_session(self, conn: AsyncConnection, user: queries.User, now: datetime
                            ) -> tuple[Viewer, PendingCookie]:
        ttl = self.settings.session_ttl_seconds
        session_id, csrf = new_session_id(), new_csrf_token()
        await queries.create_session(conn, session_id, user.username, csrf, now, now + timedelta(seconds=ttl))
        token = self.tokens.issue(user.username, user.roles, user.regions, ttl_seconds=ttl,
                                  audience=_AUDIENCE + session_id)
        return Viewer(self._principal(user), session_id, csrf), PendingCookie(token, ttl, self.settings.cookie_secure)

    async def sign_in(self, username: str, password: str) -> tuple[Viewer, PendingCookie]:
        """Check the password (scrypt, off the event loop) and open a session, or raise SignInFailed with
        a message that does not reveal whether the user exists."""
        now = datetime.now(UTC)
        username = username.strip().lower()
        lockout = now + timedelta(seconds=self.settings.signin_lockout_seconds)
        async with self.engine.begin() as conn:
            user = await queries.get_user(conn, username)
            usable = user is not None and not user.disabled and user.password_hash is not None
            # The attempt is counted (and the lock checked) before the password is: concurrent guesses
            # cannot all pass a "not locked yet" read, so at most max_failures are ever checked per lockout.
            admitted = usable and await queries.take_sign_in_attempt(
                conn, username, now, self.settings.signin_max_failures, lockout)
        # Checked even when refused, so the answer's timing does not tell whether the user exists.
        ok = await asyncio.to_thread(verify_password, password, user.password_hash if user else dummy_hash())
        if user is None or not usable:
            SIGN_INS.labels("failed").inc()
            raise SignInFailed("unknown user name or wrong password")
        if not admitted:
            SIGN_INS.labels("locked").inc()
            raise SignInFailed("too many failed sign-ins: the account is locked for a while")
        if not ok:
            SIGN_INS.labels("failed").inc()
            raise SignInFailed("unknown user name or wrong password")
        async with self.engine.begin() as conn:
            await queries.sign_in_succeeded(conn, username, now)
            opened = await self._open_session(conn, user, now)
        SIGN_INS.labels("ok").inc()
        return opened

    async def sign_out(self, viewer: Viewer) -> None:
        async with self.engine.begin() as conn:
            await queries.end_session(conn, viewer.session_id, datetime.now(UTC))


async def purge_expired_sessions(engine: AsyncEngine, now: datetime | None = None) -> int:
    """Delete expired session rows; returns how many. An expired session is already refused at every
    request (``live_session``), so this only keeps the table from growing with every sign-in."""
    async with engine.begin() as conn:
        purged = await queries.purge_sessions(conn, now or datetime.now(UTC))
    SESSIONS_PURGED.inc(purged)
    return purged


def check_csrf(viewer: Viewer, submitted: str | None) -> None:
    if not same_token(submitted, viewer.csrf_token):
        CSRF_REJECTED.inc()
        raise Problem(403, "Forbidden", "the form's CSRF token is missing or stale; reload the page and retry",
                      errors=[{"field": "csrf_token", "message": "does not match the session"}])
