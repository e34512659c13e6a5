"""``insights budget-plan`` and ``insights market-report`` (issue 15): the API's answers, written to a file.

Bad arguments and bad reference files exit 2 with a message naming what is wrong; nothing is written then.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from services.insights.config import Settings
from shared.db import make_engine


def _fail(message: str) -> int:
    print(f"insights: {message}", file=sys.stderr)
    return 2


async def write_answer(args: argparse.Namespace, stem: str, result: dict[str, Any], to_csv: Any) -> int:
    """Every insights command's output: JSON or CSV (``--format``, else from the file name), to
    ``--output``, ``-`` for stdout, or ``<stem>.<format>``."""
    fmt = args.format or ("csv" if args.output and args.output.endswith(".csv") else "json")
    body = to_csv(result).encode() if fmt == "csv" else orjson.dumps(
        result, option=orjson.OPT_INDENT_2, default=str) + b"\n"
    output = args.output or f"{stem}.{fmt}"
    if output == "-":
        sys.stdout.buffer.write(body)
    else:
        await asyncio.to_thread(Path(output).write_bytes, body)
        print(f"insights: wrote {output}", file=sys.stderr)
    return 0


def _region_and_month(args: argparse.Namespace) -> Any:
    from services.insights.domain.periods import PeriodError, parse_period
    from shared.regions import UnknownRegion, region

    try:
        r = region(args.region)
        p = parse_period(args.period) if args.period else None
    except UnknownRegion as exc:
        return _fail(str(exc))
    except PeriodError as exc:
        return _fail(f"{exc.field}: {exc}")
    if p is not None and p.kind != "month":
        return _fail("period: a calendar month (YYYY-MM)")
    return r, p


async def _budget_plan(args: argparse.Namespace) -> int:
    from services.insights import plans

    picked = _region_and_month(args)
    if isinstance(picked, int):
        return picked
    r, p = picked
    today = r.local(datetime.now(UTC)).date()
    try:
        plans.check_period(p, today)
    except plans.PlanError as exc:
        return _fail(f"{exc.field}: {exc}")
    engine = make_engine(Settings().database_url, "insights", pool_size=1)
    try:
        result = await plans.budget_plan(engine, r, p, today)
    finally:
        await engine.dispose()
    return await write_answer(args, f"insights-budget-plan-{r.code}-{p.label}", result, plans.budget_plan_csv)


async def _market_report(args: argparse.Namespace) -> int:
    from services.insights import market_report as market
    from services.insights.domain.market import MarketFileError
    from services.insights.domain.periods import month

    picked = _region_and_month(args)
    if isinstance(picked, int):
        return picked
    r, p = picked
    settings = Settings()
    today = r.local(datetime.now(UTC)).date()
    p = p or month(today.year, today.month)
    path = Path(args.references) if args.references else market.reference_path(settings.market_dir, r.code)
    try:
        refs = market.read_references(path, r, today)
    except market.NoReferences as exc:
        return _fail(str(exc))
    except MarketFileError as exc:
        return _fail(f"{path}: {exc}")
    if args.check:
        print(f"insights: {path}: {len(refs.references)} references, valid", file=sys.stderr)
        return 0
    engine = make_engine(settings.database_url, "insights", pool_size=1)
    try:
        result = await market.market_report(engine, r, p, refs)
    finally:
        await engine.dispose()
    return await write_answer(args, f"insights-market-{r.code}-{p.label}", result, market.market_csv)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bp = sub.add_parser("budget-plan", help="write a region's budget plan of a coming month (spend forecast with "
                                            "its 80%% band and 12-month backtest)")
    bp.add_argument("--region", required=True)
    bp.add_argument("--period", required=True, help="YYYY-MM: this month or a later one (local to the region)")
    bp.add_argument("--format", choices=("json", "csv"), default=None, help="default: from the file name, else json")
    bp.add_argument("--output", "-o", default=None, help="file to write ('-' for stdout)")
    bp.set_defaults(handler=_budget_plan)
    mr = sub.add_parser("market-report", help="place each active strategy against the market reference range")
    mr.add_argument("--region", required=True)
    mr.add_argument("--period", default=None, help="YYYY-MM (default: this month)")
    mr.add_argument("--references", default=None, help="a reference file to use instead of the region's "
                                                      "(INSIGHTS_MARKET_DIR or the shipped sample)")
    mr.add_argument("--check", action="store_true", help="only validate the reference file")
    mr.add_argument("--format", choices=("json", "csv"), default=None, help="default: from the file name, else json")
    mr.add_argument("--output", "-o", default=None, help="file to write ('-' for stdout)")
    mr.set_defaults(handler=_market_report)
