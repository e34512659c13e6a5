"""``python -m services.<service> users create|list|unlock|disable``: manage the people who sign in to a
service's pages (the audit workbench, the insights dashboard). Passwords are read from standard input
(``--password-stdin``) or prompted for, never taken from the command line where they would land in shell
history and the process list."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.db import make_engine
from shared.web.security import UserError, check_password, hash_password, validate_user
from shared.web.store import SignInStore
from shared.web.throttle import account_key


@dataclass(frozen=True)
class UsersCli:
    """What the ``users`` commands of one service work on."""

    pages: str  # "workbench", "dashboard"
    roles: tuple[str, ...]
    store: SignInStore
    schema: str
    database_url: Callable[[], str]  # read when a command runs, so --help needs no configuration
    who: str  # the help text's example people: "auditors, leads, ..."


def register(subparsers: argparse._SubParsersAction, cli: UsersCli) -> None:  # type: ignore[type-arg]
    users = subparsers.add_parser("users", help=f"manage {cli.pages} users ({cli.who})")
    actions = users.add_subparsers(dest="users_command", required=True)

    create = actions.add_parser("create", aliases=["add"],
                                help="create a user, or replace an existing user's roles, regions and (when "
                                     "given) password")
    create.add_argument("--username", required=True)
    create.add_argument("--role", action="append", required=True, dest="roles",
                        help=f"repeat or comma-separate: {', '.join(cli.roles)}")
    create.add_argument("--regions", required=True, help="comma-separated region codes, or * for all")
    how = create.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    how.add_argument("--no-password", action="store_true",
                     help="no password: the user signs in through the identity proxy (trusted-header mode)")
    create.set_defaults(handler=lambda args: _create(cli, args))

    listing = actions.add_parser("list", help="list users with roles, regions and state")
    listing.set_defaults(handler=lambda args: _list(cli, args))

    unlock = actions.add_parser("unlock", help="lift the sign-in pauses of an account (after repeated failed "
                                                "sign-ins from anywhere)")
    unlock.add_argument("--username", required=True)
    unlock.set_defaults(handler=lambda args: _unlock(cli, args))

    disable = actions.add_parser("disable", help="disable a user and end their sessions")
    disable.add_argument("--username", required=True)
    disable.set_defaults(handler=lambda args: _disable(cli, args))


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


async def _create(cli: UsersCli, args: argparse.Namespace) -> int:
    try:
        user = validate_user(args.username.strip().lower(), _split(args.roles), args.regions.split(","),
                             allowed_roles=cli.roles, pages=cli.pages)
        password = _read_password(args)
        if password is not None:
            check_password(password)
    except UserError as exc:
        return _fail(exc)
    hashed = None if password is None else hash_password(password)
    engine = make_engine(cli.database_url(), cli.schema, pool_size=1)
    try:
        async with engine.begin() as conn:
            created = await cli.store.upsert_user(conn, user.username, hashed, user.roles, user.regions)
    finally:
        await engine.dispose()
    print(f"{'created' if created else 'updated'} {user.username}: roles {','.join(user.roles)}; "
          f"regions {','.join(user.regions)}")
    return 0


async def _list(cli: UsersCli, args: argparse.Namespace) -> int:
    engine = make_engine(cli.database_url(), cli.schema, pool_size=1)
    try:
        async with engine.connect() as conn:
            users = await cli.store.list_users(conn)
            locked = await cli.store.locked_accounts(conn, datetime.now(UTC))
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


async def _disable(cli: UsersCli, args: argparse.Namespace) -> int:
    engine = make_engine(cli.database_url(), cli.schema, pool_size=1)
    try:
        async with engine.begin() as conn:
            found = await cli.store.disable_user(conn, args.username.strip().lower(), datetime.now(UTC))
    finally:
        await engine.dispose()
    if not found:
        print(f"no user {args.username}", file=sys.stderr)
        return 1
    print(f"disabled {args.username}; their sessions are ended")
    return 0


async def _unlock(cli: UsersCli, args: argparse.Namespace) -> int:
    username = args.username.strip().lower()
    engine = make_engine(cli.database_url(), cli.schema, pool_size=1)
    try:
        async with engine.begin() as conn:
            cleared = await cli.store.clear_account_throttle(conn, account_key(username))
    finally:
        await engine.dispose()
    print(f"{username}: {cleared} sign-in counters cleared")
    return 0


def _fail(exc: UserError) -> int:
    for field, message in exc.errors:
        print(f"{field}: {message}", file=sys.stderr)
    return 2
