"""Sign-in for the services' server-rendered pages (the audit workbench, the insights dashboard):
sessions carried by a signed, expiring cookie, CSRF synchronizer tokens, sign-in throttling with the
known-device cookie, and the trusted-header mode for running behind an identity proxy.

The cookie is a token from the service's ``TokenService`` (HS256, expiring): subject = user name,
audience = ``<site>-session:<session id>``. The signature stops forgery, the session row (looked up on
every request) makes sign-out, disabling a user and changed roles or regions take effect at once, and
holds the CSRF token that every POST must echo in its ``csrf_token`` field. Each site (``Site``) has its
own cookie names, audiences, roles, tables and metrics: a workbench cookie opens nothing on the dashboard.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import Request
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.auth import Principal, TokenService
from shared.http import Problem
from shared.web import store as store_module
from shared.web import throttle
from shared.web.security import (
    dummy_hash,
    new_csrf_token,
    new_device_id,
    new_session_id,
    same_token,
    verify_password,
)
from shared.web.settings import SignInSettings
from shared.web.store import SignInStore


@dataclass(frozen=True)
class SignInMetrics:
    sign_ins: Counter  # by outcome: ok, failed, throttled, trusted_header
    locks: Counter  # by scope
    sessions_purged: Counter
    csrf_rejected: Counter


@dataclass(frozen=True)
class Site:
    """One service's signed-in pages: who may sign in, where their rows live, what the cookies are called."""

    name: str  # "workbench", "dashboard": in messages and logs
    roles: tuple[str, ...]  # the roles these pages know; a user's other roles are ignored here
    store: SignInStore
    metrics: SignInMetrics
    session_cookie: str
    signin_csrf_cookie: str
    device_cookie: str  # this browser signed in to the account before (known device)
    audience: str  # "<name>-session:" + session id
    device_audience: str  # "<name>-device:" + device id

log = logging.getLogger(__name__)


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


class SessionAuth:
    def __init__(self, engine: AsyncEngine, tokens: TokenService, settings: SignInSettings, site: Site) -> None:
        self.engine, self.tokens, self.settings, self.site = engine, tokens, settings, site
        self.store = site.store

    def _principal(self, user: store_module.User) -> Principal:
        return Principal(subject=user.username, kind="session",
                         roles=frozenset(r for r in user.roles if r in self.site.roles),
                         regions=frozenset(user.regions))

    def _session_id(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            _, session_id = self.tokens.verify_audience(cookie, self.site.audience)
        except Problem:
            return None
        return session_id

    async def viewer(self, request: Request) -> Viewer | None:
        now = datetime.now(UTC)
        session_id = self._session_id(request.cookies.get(self.site.session_cookie))
        session = None
        if session_id is not None:
            async with self.engine.connect() as conn:
                session = await self.store.live_session(conn, session_id, now)
        if self.settings.trusted_header_auth:
            return await self._trusted(request, session, now)
        if session is None:
            return None
        return Viewer(self._principal(session.user), session.id, session.csrf_token)

    async def _trusted(self, request: Request, session: store_module.Session | None, now: datetime) -> Viewer | None:
        username = request.headers.get(self.settings.trusted_user_header, "").strip().lower()
        if not username:
            return None
        if session is not None and session.user.username == username:
            return Viewer(self._principal(session.user), session.id, session.csrf_token)
        async with self.engine.begin() as conn:
            user = await self.store.get_user(conn, username)
            if user is None or user.disabled:
                raise Problem(403, "Forbidden", f"{username} is not a {self.site.name} user; ask an ops admin to "
                                                "add them with `users create`")
            viewer, cookie = await self._open_session(conn, user, now)
        self.site.metrics.sign_ins.labels("trusted_header").inc()
        request.state.pending_cookie = cookie
        return viewer

    async def _open_session(self, conn: AsyncConnection, user: store_module.User, now: datetime
                            ) -> tuple[Viewer, PendingCookie]:
        ttl = self.settings.session_ttl_seconds
        session_id, csrf = new_session_id(), new_csrf_token()
        await self.store.create_session(conn, session_id, user.username, csrf, now, now + timedelta(seconds=ttl))
        token = self.tokens.issue(user.username, user.roles, user.regions, ttl_seconds=ttl,
                                  audience=self.site.audience + session_id)
        return Viewer(self._principal(user), session_id, csrf), PendingCookie(token, ttl, self.settings.cookie_secure)

    def limits(self) -> throttle.Limits:
        window = timedelta(seconds=self.settings.signin_lockout_seconds)
        return throttle.Limits(pair=self.settings.signin_max_failures,
                               client=self.settings.signin_client_max_failures,
                               account=self.settings.signin_account_max_failures, window=window, lockout=window)

    def known_device(self, cookie: str | None, username: str) -> str | None:
        """The device id of a known-device cookie issued to this account, or None."""
        if not cookie:
            return None
        try:
            principal, device = self.tokens.verify_audience(cookie, self.site.device_audience)
        except Problem:
            return None
        return device if principal.subject == username else None

    async def sign_in(self, username: str, password: str, *, client_host: str | None = None,
                      device_cookie: str | None = None) -> tuple[Viewer, PendingCookie, PendingCookie]:
        """Check the password (scrypt, off the event loop) and open a session, or raise SignInFailed.

        Returns the viewer, the session cookie and the known-device cookie to set. Throttled by account and
        client (``throttle``); a wrong password, an unknown or disabled account and a lock get the same
        answer after the same work (a lookup, the counters, one scrypt), so neither the answer nor its
        timing tells which accounts exist or are locked."""
        now = datetime.now(UTC)
        username = username.strip().lower()
        device = self.known_device(device_cookie, username)
        client = f"device:{device}" if device else throttle.network_client(client_host)
        limits = self.limits()
        keys = throttle.keys(username, client, known_device=device is not None)
        async with self.engine.begin() as conn:
            user = await self.store.get_user(conn, username)
            counters = await self.store.lock_throttle(conn, keys, now)
            admitted = throttle.admitted(counters, now)
            if admitted:
                # Counted before the password is checked: concurrent guesses cannot all pass "not locked".
                counted = {k: throttle.count_failure(k[0], c, now, limits) for k, c in counters.items()}
                await self.store.save_throttle(conn, counted)
                for (scope, _), before in counters.items():
                    if throttle.newly_locked(before, counted[(scope, _)], now):
                        self.site.metrics.locks.labels(scope.value).inc()
                        log.warning(f"{self.site.name} sign-in paused after repeated failures",
                                    extra={"scope": scope.value, "client": client if scope is not
                                           throttle.Scope.ACCOUNT else None,
                                           "account_key": throttle.account_key(username)[:16],
                                           "until": counted[(scope, _)].locked_until})
        usable = user is not None and not user.disabled and user.password_hash is not None
        # Always one scrypt, whatever happened above, so the time taken tells nothing either.
        ok = await asyncio.to_thread(verify_password, password,
                                     user.password_hash if usable and user is not None else dummy_hash())
        if not admitted:
            self.site.metrics.sign_ins.labels("throttled").inc()
            raise SignInFailed(self.failure_message())
        if not (usable and ok) or user is None:
            self.site.metrics.sign_ins.labels("failed").inc()
            raise SignInFailed(self.failure_message())
        async with self.engine.begin() as conn:
            current = await self.store.lock_throttle(conn, keys, now)
            await self.store.save_throttle(conn, {k: throttle.give_back(k[0], c, limits) for k, c in current.items()})
            await self.store.signed_in(conn, username, now)
            viewer, session = await self._open_session(conn, user, now)
        self.site.metrics.sign_ins.labels("ok").inc()
        return viewer, session, self._device_cookie(username, device)

    def failure_message(self) -> str:
        minutes = max(1, self.settings.signin_lockout_seconds // 60)
        # One message for every failure: which accounts exist, or are locked, is nobody's business here.
        return (f"Sign-in failed: unknown user name or wrong password, or too many failed attempts from "
                f"here (sign-in then pauses for up to {minutes} minutes).")

    def _device_cookie(self, username: str, device: str | None) -> PendingCookie:
        """Marks this browser as a known device of the account (the same id again if it was one already)."""
        ttl = self.settings.device_cookie_days * 86_400
        token = self.tokens.issue(username, (), (), ttl_seconds=ttl,
                                  audience=self.site.device_audience + (device or new_device_id()))
        return PendingCookie(token, ttl, self.settings.cookie_secure)

    async def sign_out(self, viewer: Viewer) -> None:
        async with self.engine.begin() as conn:
            await self.store.end_session(conn, viewer.session_id, datetime.now(UTC))


    def check_csrf(self, viewer: Viewer, submitted: str | None) -> None:
        check_csrf(viewer, submitted, self.site.metrics.csrf_rejected)

    def signin_window(self) -> timedelta:
        return timedelta(seconds=self.settings.signin_lockout_seconds)


async def purge_expired_sessions(engine: AsyncEngine, site: Site, throttle_window: timedelta,
                                 now: datetime | None = None) -> int:
    """Delete expired session rows, and sign-in counters whose window and lock are over; returns how many
    sessions. Both are already without effect (``live_session``, ``throttle``): this keeps the tables small."""
    at = now or datetime.now(UTC)
    async with engine.begin() as conn:
        purged = await site.store.purge_sessions(conn, at)
        await site.store.purge_throttle(conn, at, throttle_window)
    site.metrics.sessions_purged.inc(purged)
    return purged


def check_csrf(viewer: Viewer, submitted: str | None, rejected: Counter) -> None:
    if not same_token(submitted, viewer.csrf_token):
        rejected.inc()
        raise Problem(403, "Forbidden", "the form's CSRF token is missing or stale; reload the page and retry",
                      errors=[{"field": "csrf_token", "message": "does not match the session"}])
