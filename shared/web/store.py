"""The signed-in pages' own tables: users (roles, region grants, scrypt hashes), sessions and sign-in
throttle counters. Each service keeps these in its own schema under its own table names (``Tables``);
the SQL is written once here. Values are always bound parameters; table names come from code, never from
a request, and are checked to be plain identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.web.throttle import Counter, Key, Scope

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Tables:
    users: str
    sessions: str
    throttle: str

    def __post_init__(self) -> None:
        for name in (self.users, self.sessions, self.throttle):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"{name!r} is not a plain table name")


@dataclass(frozen=True)
class User:
    username: str
    password_hash: str | None
    roles: tuple[str, ...]
    regions: tuple[str, ...]
    disabled: bool


@dataclass(frozen=True)
class Session:
    id: str
    csrf_token: str
    expires_at: datetime
    user: User


_USER_COLUMNS = "username, password_hash, roles, regions, disabled"


def _user(row: Any) -> User:
    return User(row.username, row.password_hash, tuple(row.roles), tuple(row.regions), bool(row.disabled))


class SignInStore:
    """Users, sessions and throttle counters of one service's pages (its ``Tables``)."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        users, sessions, throttle = tables.users, tables.sessions, tables.throttle
        self._get_user = f"SELECT {_USER_COLUMNS} FROM {users} WHERE username = :u"
        self._list_users = f"SELECT {_USER_COLUMNS} FROM {users} ORDER BY username"
        self._upsert_user = (
            f"INSERT INTO {users} (username, password_hash, roles, regions) "
            "VALUES (:u, :h, CAST(:roles AS text[]), CAST(:regions AS text[])) "
            f"ON CONFLICT (username) DO UPDATE SET password_hash = coalesce(EXCLUDED.password_hash, "
            f"{users}.password_hash), roles = EXCLUDED.roles, regions = EXCLUDED.regions, disabled = false, "
            "updated_at = now() RETURNING (xmax = 0) AS created")
        self._disable_user = f"UPDATE {users} SET disabled = true, updated_at = :now WHERE username = :u " \
                             "RETURNING username"
        self._end_user_sessions = f"UPDATE {sessions} SET ended_at = :now WHERE username = :u AND ended_at IS NULL"
        self._lock_throttle = (
            f"INSERT INTO {throttle} AS t (scope, key, window_started_at) "
            "SELECT s, k, :now FROM unnest(CAST(:scopes AS text[]), CAST(:keys AS text[])) AS u(s, k) "
            "ORDER BY s, k ON CONFLICT (scope, key) DO UPDATE SET scope = t.scope "
            "RETURNING scope, key, failures, window_started_at, locked_until")
        self._save_throttle = (
            f"UPDATE {throttle} t SET failures = u.f, window_started_at = u.w, locked_until = u.l "
            "FROM unnest(CAST(:s AS text[]), CAST(:k AS text[]), CAST(:f AS int[]), CAST(:w AS timestamptz[]), "
            "CAST(:l AS timestamptz[])) AS u(s, k, f, w, l) WHERE t.scope = u.s AND t.key = u.k")
        self._clear_account = (f"DELETE FROM {throttle} WHERE (scope = 'account' AND key = :a) "
                               "OR (scope = 'account_client' AND key LIKE :prefix)")
        self._locked_accounts = f"SELECT key FROM {throttle} WHERE scope = 'account' AND locked_until > :now"
        self._purge_throttle = (f"DELETE FROM {throttle} WHERE window_started_at < :before "
                                "AND (locked_until IS NULL OR locked_until <= :now)")
        self._signed_in = f"UPDATE {users} SET last_sign_in_at = :now WHERE username = :u"
        self._create_session = (f"INSERT INTO {sessions} (id, username, csrf_token, created_at, expires_at) "
                                "VALUES (:id, :u, :csrf, :now, :exp)")
        self._live_session = (
            f"SELECT s.id, s.csrf_token, s.expires_at, {', '.join('u.' + c for c in _USER_COLUMNS.split(', '))} "
            f"FROM {sessions} s JOIN {users} u ON u.username = s.username "
            "WHERE s.id = :id AND s.ended_at IS NULL AND s.expires_at > :now AND NOT u.disabled")
        self._end_session = f"UPDATE {sessions} SET ended_at = :now WHERE id = :id AND ended_at IS NULL"
        self._purge_sessions = f"DELETE FROM {sessions} WHERE expires_at < :t"

    # -------------------------------------------------------------- users

    async def get_user(self, conn: AsyncConnection, username: str) -> User | None:
        row = (await conn.execute(text(self._get_user), {"u": username})).first()
        return None if row is None else _user(row)

    async def list_users(self, conn: AsyncConnection) -> list[User]:
        return [_user(r) for r in await conn.execute(text(self._list_users))]

    async def upsert_user(self, conn: AsyncConnection, username: str, password_hash: str | None,
                          roles: Sequence[str], regions: Sequence[str]) -> bool:
        """Create the user or replace its roles, regions and (when given) password; True if created."""
        row = (await conn.execute(text(self._upsert_user), {
            "u": username, "h": password_hash, "roles": list(roles), "regions": list(regions)})).one()
        return bool(row.created)

    async def disable_user(self, conn: AsyncConnection, username: str, now: datetime) -> bool:
        updated = (await conn.execute(text(self._disable_user), {"u": username, "now": now})).first()
        await conn.execute(text(self._end_user_sessions), {"u": username, "now": now})
        return updated is not None

    async def signed_in(self, conn: AsyncConnection, username: str, now: datetime) -> None:
        await conn.execute(text(self._signed_in), {"u": username, "now": now})

    # -------------------------------------------------------------- throttle

    async def lock_throttle(self, conn: AsyncConnection, keys: Sequence[Key], now: datetime) -> dict[Key, Counter]:
        """The sign-in counters of an attempt, created when missing and locked until the transaction ends, in
        one statement (rows in sorted order, so concurrent attempts queue instead of deadlocking)."""
        rows = await conn.execute(text(self._lock_throttle), {
            "now": now, "scopes": [k[0].value for k in keys], "keys": [k[1] for k in keys]})
        return {(Scope(r.scope), r.key): Counter(int(r.failures), r.window_started_at, r.locked_until)
                for r in rows}

    async def save_throttle(self, conn: AsyncConnection, counters: Mapping[Key, Counter]) -> None:
        if not counters:
            return
        items = sorted(counters.items())
        await conn.execute(text(self._save_throttle), {
            "s": [k[0].value for k, _ in items], "k": [k[1] for k, _ in items],
            "f": [c.failures for _, c in items], "w": [c.window_started_at for _, c in items],
            "l": [c.locked_until for _, c in items]})

    async def clear_account_throttle(self, conn: AsyncConnection, account: str) -> int:
        """Lift every lock on an account (its own and each of its pairs with a client): ``users unlock``."""
        result = await conn.execute(text(self._clear_account), {"a": account, "prefix": f"{account}|%"})
        return int(getattr(result, "rowcount", 0) or 0)

    async def locked_accounts(self, conn: AsyncConnection, now: datetime) -> set[str]:
        """Account keys locked for unknown devices right now (many addresses guessed their password)."""
        return {r[0] for r in await conn.execute(text(self._locked_accounts), {"now": now})}

    async def purge_throttle(self, conn: AsyncConnection, now: datetime, window: timedelta) -> int:
        """Forget counters whose window and lock are both over (they count nothing any more)."""
        result = await conn.execute(text(self._purge_throttle), {"before": now - window, "now": now})
        return int(getattr(result, "rowcount", 0) or 0)

    # -------------------------------------------------------------- sessions

    async def create_session(self, conn: AsyncConnection, session_id: str, username: str, csrf_token: str,
                             now: datetime, expires_at: datetime) -> None:
        await conn.execute(text(self._create_session), {
            "id": session_id, "u": username, "csrf": csrf_token, "now": now, "exp": expires_at})

    async def live_session(self, conn: AsyncConnection, session_id: str, now: datetime) -> Session | None:
        """The session if it has not ended or expired and its user is still enabled."""
        row = (await conn.execute(text(self._live_session), {"id": session_id, "now": now})).first()
        return None if row is None else Session(row.id, row.csrf_token, row.expires_at, _user(row))

    async def end_session(self, conn: AsyncConnection, session_id: str, now: datetime) -> None:
        await conn.execute(text(self._end_session), {"id": session_id, "now": now})

    async def purge_sessions(self, conn: AsyncConnection, before: datetime) -> int:
        """Delete sessions that expired before ``before`` (signed-out ones too, once past their expiry)."""
        result = await conn.execute(text(self._purge_sessions), {"t": before})
        return int(getattr(result, "rowcount", 0) or 0)
