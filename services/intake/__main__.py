"""``python -m services.intake serve|migrate|keys ...``"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from services.intake import persistence
from services.intake.app import build_app
from services.intake.config import Settings
from services.intake.contracts import ACCEPTED_EVENT_TYPES
from services.intake.domain.keys import ANY, ScopeError, parse_regions, parse_scope
from shared.auth import generate_api_key, key_matches, parse_api_key
from shared.db import make_engine
from shared.regions import catalogue
from shared.service import run_cli

MIGRATIONS = Path(__file__).with_name("migrations")
SYSTEM_NAME_MAX = 64


async def _create(settings: Settings, system: str, regions: list[str], event_types: list[str],
                  rate: int) -> tuple[str, str]:
    key_id, full_key, key_hash = generate_api_key()
    engine = make_engine(settings.database_url, "intake", pool_size=1)
    try:
        async with engine.begin() as conn:
            await persistence.insert_api_key(conn, key_id=key_id, system_name=system, key_hash=key_hash,
                                             regions=regions, event_types=event_types,
                                             rate_limit_per_second=rate)
    finally:
        await engine.dispose()
    return key_id, full_key


def _keys_create(args: argparse.Namespace) -> int:
    try:
        regions = parse_regions(args.regions, catalogue())
        event_types = parse_scope(args.event_types, ACCEPTED_EVENT_TYPES, "event types")
    except ScopeError as exc:
        print(f"intake keys create: {exc}", file=sys.stderr)
        return 2
    system = args.system.strip()
    if not system or len(system) > SYSTEM_NAME_MAX:
        print(f"intake keys create: --system must be 1..{SYSTEM_NAME_MAX} characters", file=sys.stderr)
        return 2
    if args.rate < 1:
        print("intake keys create: --rate must be at least 1", file=sys.stderr)
        return 2
    key_id, full_key = asyncio.run(_create(Settings(), system, regions, event_types, args.rate))
    print(f"# key id {key_id} for {system}; regions {','.join(regions)}; event types "
          f"{','.join(event_types)}; {args.rate} requests/s. Shown once: store it now.", file=sys.stderr)
    print(full_key)
    return 0


async def _revoke(settings: Settings, key_id: str) -> bool:
    engine = make_engine(settings.database_url, "intake", pool_size=1)
    try:
        async with engine.begin() as conn:
            return await persistence.revoke_api_key(conn, key_id, datetime.now(UTC))
    finally:
        await engine.dispose()


def _keys_revoke(args: argparse.Namespace) -> int:
    if asyncio.run(_revoke(Settings(), args.key_id)):
        print(f"key {args.key_id} revoked (running replicas refuse it within INTAKE_API_KEY_CACHE_SECONDS)")
        return 0
    print(f"intake keys revoke: no active key {args.key_id}", file=sys.stderr)
    return 1


async def _list(settings: Settings) -> list[persistence.ApiKey]:
    engine = make_engine(settings.database_url, "intake", pool_size=1)
    try:
        async with engine.connect() as conn:
            return await persistence.list_api_keys(conn)
    finally:
        await engine.dispose()


def _keys_list(_: argparse.Namespace) -> int:
    print("key_id\tsystem\tregions\tevent_types\trate_per_s\tcreated_at\trevoked_at")
    for k in asyncio.run(_list(Settings())):
        print("\t".join([k.key_id, k.system_name, ",".join(sorted(k.regions)), ",".join(sorted(k.event_types)),
                         str(k.rate_limit_per_second), k.created_at.isoformat(),
                         k.revoked_at.isoformat() if k.revoked_at else "-"]))
    return 0


async def _still_valid(settings: Settings, existing: str) -> bool:
    key_id = parse_api_key(existing)
    if key_id is None:
        return False
    engine = make_engine(settings.database_url, "intake", pool_size=1)
    try:
        async with engine.connect() as conn:
            record = await persistence.get_api_key(conn, key_id)
    finally:
        await engine.dispose()
    return record is not None and record.active and key_matches(existing, record.key_hash)


def _keys_ensure_dev(args: argparse.Namespace) -> int:
    """Reuse the key in the file while it is still valid; otherwise create one and write it there."""
    settings, path = Settings(), Path(args.file)
    if path.exists() and asyncio.run(_still_valid(settings, path.read_text().strip())):
        print(f"dev API key in {path} is valid")
        return 0
    key_id, full_key = asyncio.run(_create(settings, "dev", [ANY], [ANY], args.rate))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(full_key + "\n")
    print(f"dev API key {key_id} (all regions, all event types) written to {path}")
    return 0


def _commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="manage upstream systems' API keys").add_subparsers(
        dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--system", required=True, help="upstream system name, e.g. order-system")
    create.add_argument("--regions", required=True, help="comma-separated region codes, or '*' for all")
    create.add_argument("--event-types", required=True,
                        help=f"comma-separated, or '*' for all of: {', '.join(ACCEPTED_EVENT_TYPES)}")
    create.add_argument("--rate", type=int, default=1000, help="requests per second per replica (default 1000)")
    create.set_defaults(handler=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys_revoke)
    keys.add_parser("list", help="list keys (never the keys themselves)").set_defaults(handler=_keys_list)
    dev = keys.add_parser("ensure-dev", help="create once an all-scopes dev key and write it to a file")
    dev.add_argument("--file", default=".local/dev-api-key")
    dev.add_argument("--rate", type=int, default=100_000)
    dev.set_defaults(handler=_keys_ensure_dev)


def main(argv: list[str] | None = None) -> int:
    return run_cli(name="intake", settings_factory=Settings, app_factory=build_app, migrations_dir=MIGRATIONS,
                   schema="intake", extra=_commands, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
