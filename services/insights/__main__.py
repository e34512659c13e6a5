"""``python -m services.insights serve | migrate | dead-letters ... | report ... | root-causes ... |
scorecard ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.insights.app import build_app
from services.insights.config import Settings
from services.insights.plan_cli import write_answer
from shared.db import make_engine
from shared.runtime import freeze_startup_heap
from shared.service import run_cli

MIGRATIONS = Path(__file__).with_name("migrations")


async def _write_for_period(args: argparse.Namespace, stem: str, compute: Any, to_csv: Any) -> int:
    """The file commands' common path: region and period from the arguments (exit 2 naming what is wrong),
    ``compute(engine, region, period)`` over the rollups, written as JSON or CSV to a file or stdout (by
    default ``{stem}-{period}.{format}``, ``{region}`` in the stem replaced by the region's code)."""
    from services.insights.domain.periods import PeriodError, parse_period
    from shared.regions import UnknownRegion, region

    settings = Settings()
    try:
        r = region(args.region)
        period = parse_period(args.period, args.start, args.end)
    except UnknownRegion as exc:
        print(f"insights: {exc}", file=sys.stderr)
        return 2
    except PeriodError as exc:
        print(f"insights: {exc.field}: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url, "insights", pool_size=1)
    try:
        result = await compute(engine, r, period)
    finally:
        await engine.dispose()
    return await write_answer(args, f"{stem.format(region=r.code)}-{period.label.replace('..', '_')}", result, to_csv)


async def _report(args: argparse.Namespace) -> int:
    """Write a region's report for a period to a file (JSON or CSV), read from the rollups."""
    from services.insights import reports

    return await _write_for_period(args, "insights-{region}", reports.report, reports.report_csv)


async def _root_causes(args: argparse.Namespace) -> int:
    """Write a region's root causes for a period (top movers, mix/rate split) to a file (JSON or CSV)."""
    from services.insights import reports
    from services.insights.domain.movers import Measure

    async def compute(engine: Any, r: Any, period: Any) -> Any:
        return await reports.root_causes(engine, r, args.dimension, period, top=args.top,
                                         measure=Measure(args.measure))

    return await _write_for_period(args, "insights-root-causes-{region}-" + args.dimension, compute,
                                   reports.root_causes_csv)


async def _scorecard(args: argparse.Namespace) -> int:
    """Write a region's strategy scorecard (verdicts with reasons) for a period to a file (JSON or CSV)."""
    from services.insights import scorecard
    from services.insights.domain.scorecard import ThresholdsLoadError, load_thresholds
    from shared.regions import UnknownRegion, region

    settings = Settings()
    try:
        code = region(args.region).code
        thresholds = load_thresholds(settings.scorecard_thresholds_file)
    except UnknownRegion as exc:
        print(f"insights: {exc}", file=sys.stderr)
        return 2
    except ThresholdsLoadError as exc:
        for e in exc.errors:
            print(f"insights: thresholds: {e}", file=sys.stderr)
        return 2
    if code not in thresholds:
        print(f"insights: no scorecard thresholds for {args.region} in {settings.scorecard_thresholds_file}",
              file=sys.stderr)
        return 2

    async def compute(engine: Any, r: Any, period: Any) -> Any:
        return await scorecard.scorecard(engine, r, period, thresholds[r.code],
                                         window_days=settings.return_window_days,
                                         margin_days=settings.return_retention_margin_days)

    return await _write_for_period(args, "insights-scorecard-{region}", compute, scorecard.scorecard_csv)


def _extra(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    card = sub.add_parser("scorecard", help="a region's strategy scorecard: keep / review / retire with reasons")
    card.add_argument("--region", required=True)
    card.add_argument("--period", default=None, help="YYYY-MM-DD, YYYY-Www or YYYY-MM (local to the region)")
    card.add_argument("--from", dest="start", default=None, help="custom range: first local day")
    card.add_argument("--to", dest="end", default=None, help="custom range: last local day (inclusive)")
    card.add_argument("--format", choices=("json", "csv"), default=None, help="default: from the file name, else json")
    card.add_argument("--output", "-o", default=None, help="file to write ('-' for stdout)")
    card.set_defaults(handler=_scorecard)
    rep = sub.add_parser("report", help="write a region's report for a day, ISO week, month or range to a file")
    rep.add_argument("--region", required=True)
    rep.add_argument("--period", default=None, help="YYYY-MM-DD, YYYY-Www or YYYY-MM (local to the region)")
    rep.add_argument("--from", dest="start", default=None, help="custom range: first local day")
    rep.add_argument("--to", dest="end", default=None, help="custom range: last local day (inclusive)")
    rep.add_argument("--format", choices=("json", "csv"), default=None, help="default: from the file name, else json")
    rep.add_argument("--output", "-o", default=None, help="file to write ('-' for stdout)")
    rep.set_defaults(handler=_report)
    rc = sub.add_parser("root-causes", help="write a region's top movers and mix/rate split for a period to a file")
    rc.add_argument("--region", required=True)
    rc.add_argument("--dimension", required=True, choices=("reason", "carrier", "seller", "strategy"))
    rc.add_argument("--period", default=None, help="YYYY-MM-DD, YYYY-Www or YYYY-MM (local to the region)")
    rc.add_argument("--from", dest="start", default=None, help="custom range: first local day")
    rc.add_argument("--to", dest="end", default=None, help="custom range: last local day (inclusive)")
    rc.add_argument("--top", type=int, default=5, choices=range(1, 101), metavar="1..100", help="movers listed")
    rc.add_argument("--measure", choices=("count", "amount"), default="count", help="rank movers by tickets or amount")
    rc.add_argument("--format", choices=("json", "csv"), default=None, help="default: from the file name, else json")
    rc.add_argument("--output", "-o", default=None, help="file to write ('-' for stdout)")
    rc.set_defaults(handler=_root_causes)

    from services.insights import plan_cli
    from services.insights.web import cli as users_cli

    plan_cli.register(sub)  # budget-plan, market-report (issue 15)

    users_cli.register(sub)  # users create|list|unlock|disable: who signs in to /dashboard


def main(argv: list[str] | None = None) -> int:
    freeze_startup_heap()
    return run_cli(name="insights", settings_factory=Settings, app_factory=build_app,  # type: ignore[arg-type]
                   migrations_dir=MIGRATIONS, schema="insights", extra=_extra, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
