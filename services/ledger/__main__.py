"""``python -m services.ledger serve | migrate | budgets set ... | check-invariants | parked``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from services.ledger.app import build_app
from services.ledger.config import Settings
from shared.db import make_engine
from shared.runtime import freeze_startup_heap
from shared.service import run_cli

MIGRATIONS = Path(__file__).with_name("migrations")


async def _budgets_set(args: argparse.Namespace) -> int:
    from services.ledger import queries
    from shared.money import MAX_BUDGET_MINOR
    from shared.periods import InvalidPeriod, validate_period
    from shared.regions import UnknownRegion, region

    settings = Settings()
    try:
        r = region(args.region)
        validate_period(args.period, settings.budget_period)
    except (UnknownRegion, InvalidPeriod) as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.limit_minor <= MAX_BUDGET_MINOR:
        print(f"ledger: --limit-minor must be between 0 and {MAX_BUDGET_MINOR} (integer minor units)",
              file=sys.stderr)
        return 2
    if not 3 <= len(args.reason) <= 500:
        print("ledger: --reason must be 3 to 500 characters (as through the API)", file=sys.stderr)
        return 2
    if args.currency and args.currency != r.currency:
        print(f"ledger: region {r.code} budgets are in {r.currency}, not {args.currency}", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url, "ledger", pool_size=1)
    try:
        async with engine.begin() as conn:
            budget = await queries.set_budget(conn, region=r.code, period=args.period, currency=r.currency,
                                              limit=args.limit_minor, actor=args.actor, via="cli",
                                              reason=args.reason)
    except queries.LimitBelowCommitted as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(json.dumps({"region": budget.region, "period": budget.period, "currency": budget.currency,
                      "limit_minor": budget.limit, "used_minor": budget.used}))
    return 0


async def _check_invariants(_: argparse.Namespace) -> int:
    from services.ledger import invariants

    settings = Settings()
    engine = make_engine(settings.database_url, "ledger", pool_size=1)
    try:
        async with engine.connect() as conn:
            found = await invariants.check(conn, datetime.now(UTC), settings.voucher_grace_seconds)
    finally:
        await engine.dispose()
    total = sum(found.values())
    print(json.dumps({"violations": total, "checks": found}))
    return 1 if total else 0


async def _parked(args: argparse.Namespace) -> int:
    from services.ledger import queries
    from shared.regions import UnknownRegion, region

    settings = Settings()
    regions = None
    if args.region:
        try:
            regions = [region(args.region).code]
        except UnknownRegion as exc:
            print(f"ledger: {exc}", file=sys.stderr)
            return 2
    engine = make_engine(settings.database_url, "ledger", pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await queries.parked_events(conn, regions, settings.park_seconds, limit=args.limit)
    finally:
        await engine.dispose()
    for row in rows:
        print(json.dumps(row, default=str))
    return 0


def _extra(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    budgets = sub.add_parser("budgets", help="budget administration")
    bsub = budgets.add_subparsers(dest="budgets_command", required=True)
    setp = bsub.add_parser("set", help="set a region's budget for a period (recorded in the audit trail)")
    setp.add_argument("--region", required=True)
    setp.add_argument("--period", required=True, help="YYYY-MM (or YYYY-MM-DD with LEDGER_BUDGET_PERIOD=day)")
    setp.add_argument("--limit-minor", required=True, type=int, help="integer minor units")
    setp.add_argument("--actor", required=True, help="who is changing it")
    setp.add_argument("--reason", default="set from the command line")
    setp.add_argument("--currency", default=None, help="optional check: must be the region's currency")
    setp.set_defaults(handler=_budgets_set)
    inv = sub.add_parser("check-invariants", help="verify the books; exit 1 on any violation")
    inv.set_defaults(handler=_check_invariants)
    parked = sub.add_parser("parked", help="list events waiting for their compensation, oldest first (one JSON "
                                           "line each, with when they will be dead-lettered)")
    parked.add_argument("--region", default=None, help="only this region")
    parked.add_argument("--limit", type=int, default=100)
    parked.set_defaults(handler=_parked)


def main(argv: list[str] | None = None) -> int:
    # Everything imported so far (FastAPI, SQLAlchemy, pydantic contract schemas) lives as long as the
    # process: move it out of the cyclic collector's reach, so the collections that batch allocations
    # trigger do not traverse it again and again (ADR 0005).
    freeze_startup_heap()
    return run_cli(name="ledger", settings_factory=Settings, app_factory=build_app,  # type: ignore[arg-type]
                   migrations_dir=MIGRATIONS, schema="ledger", extra=_extra, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
