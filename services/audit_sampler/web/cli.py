"""``python -m services.audit_sampler users create|list|disable``: manage the people who sign in to the
workbench. Passwords are read from standard input (``--password-stdin``) or prompted for, never taken
from the command line where they would land in shell history and the process list."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from typing import Any

from services.audit_sampler.web import queries
from services.audit_sampler.web.security import (
    WORKBENCH_ROLES,
    UserError,
    check_password,
    hash_password,
    validate_user,
)
from services.audit_sampler.web.throttle import account_key
from shared.db import make_engine

SCHEMA = "audit_sampler"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    users = subparsers.add_parser("users", help="manage workbench users (auditors, leads, ...)")
    actions = users.add_subparsers(dest="users_command", required=True)

    create = actions.add_parser("create", help="create a user, or replace an existing user's roles, regions "
                                               "and (when given) password")
    create.add_argument("--username", required=True)
    create.add_argument("--role", action="append", required=True, dest="roles",
                        help=f"repeat or comma-separate: {', '.join(WORKBENCH_ROLES)}")
    create.add_argument("--regions", required=True, help="comma-separated region codes, or * for all")
    how = create.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    how.add_argument("--no-password", action="store_true",
                     help="no password: the user signs in through the identity proxy (trusted-header mode)")
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="list users with roles, regions and state")
    listing.set_defaults(handler=_list)

    unlock = actions.add_parser("unlock", help="lift the sign-in pauses of an account (after repeated failed "
                                                "sign-ins from anywhere)")
    unlock.add_argument("--username", required=True)
    unlock.set_defaults(handler=_unlock)

    disable = actions.add_parser("disable", help="disable a user and end their sessions")
    disable.add_argument("--username", required=True)
    disable.set_defaults(handler=_disable)


def _database_url() -> str:
    from services.audit_sampler.config import Settings

    return Settings().database_url


def _read_password(args: argparse.Namespace) -> str | None:
    if args.no_password:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UserError([("password", "no terminal to prompt on: use --password-stdin or --no-password")])
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise UserError([("password", "the two entries differ")])
    return first


def _split(values: list[str]) -> list[str]:
    return [part for value in values for part in value.split(",")]


async def _create(args: argparse.Namespace) -> int:
    try:
        user = validate_user(args.username.strip().lower(), _split(args.roles), args.regions.split(","))
        password = _read_password(args)
        if password is not None:
            check_password(password)
    except UserError as exc:
        return _fail(exc)
    hashed = None if password is None else hash_password(password)
    engine = make_engine(_database_url(), SCHEMA, pool_size=1)
    try:
        async with engine.begin() as conn:
            created = await queries.upsert_user(conn, user.username, hashed, user.roles, user.regions)
    finally:
        await engine.dispose()
    print(f"{'created' if created else 'updated'} {user.username}: roles {','.join(user.roles)}; "
          f"regions {','.join(user.regions)}")
    return 0


async def _list(args: argparse.Namespace) -> int:
    engine = make_engine(_database_url(), SCHEMA, pool_size=1)
    try:
        async with engine.connect() as conn:
            users = await queries.list_users(conn)
            locked = await queries.locked_accounts(conn, datetime.now(UTC))
    finally:
        await engine.dispose()
    rows: list[Any] = [("USERNAME", "ROLES", "REGIONS", "STATE")]
    for u in users:
        state = "disabled" if u.disabled else (
            "paused for unknown devices" if account_key(u.username) in locked else "active")
        rows.append((u.username, ",".join(u.roles), ",".join(u.regions),
                     state + ("" if u.password_hash else " (proxy sign-in)")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


async def _disable(args: argparse.Namespace) -> int:
    engine = make_engine(_database_url(), SCHEMA, pool_size=1)
    try:
        async with engine.begin() as conn:
            found = await queries.disable_user(conn, args.username.strip().lower(), datetime.now(UTC))
    finally:
        await engine.dispose()
    if not found:
        print(f"no user {args.username}", file=sys.stderr)
        return 1
    print(f"disabled {args.username}; their sessions are ended")
    return 0


async def _unlock(args: argparse.Namespace) -> int:
    username = args.username.strip().lower()
    engine = make_engine(_database_url(), SCHEMA, pool_size=1)
    try:
        async with engine.begin() as conn:
            cleared = await queries.clear_account_throttle(conn, account_key(username))
    finally:
        await engine.dispose()
    print(f"{username}: {cleared} sign-in counters cleared")
    return 0


def _fail(exc: UserError) -> int:
    for field, message in exc.errors:
        print(f"{field}: {message}", file=sys.stderr)
    return 2
