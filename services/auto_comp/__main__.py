"""``python -m services.auto_comp serve | migrate | backtest | validate-strategies``."""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from services.auto_comp.app import build_app
from services.auto_comp.config import Settings
from shared.service import run_cli

MIGRATIONS = Path(__file__).with_name("migrations")


def backtest(args: argparse.Namespace) -> int:
    from services.auto_comp.backtest import BacktestInputError, read_tickets
    from services.auto_comp.domain.backtest import format_text, run_backtest
    from services.auto_comp.domain.loader import StrategyLoadError, load_strategies

    try:
        strategies = load_strategies(args.strategies)
        tickets = read_tickets(args.events)
    except StrategyLoadError as exc:
        for e in exc.errors:
            print(f"invalid strategy: {e}", file=sys.stderr)
        return 2
    except BacktestInputError as exc:
        print(f"invalid events: {exc}", file=sys.stderr)
        return 2
    reports = run_backtest(strategies, tickets)
    if args.format == "json":
        print(json.dumps({"config_version": strategies.version, "regions": [r.as_dict() for r in reports]},
                         indent=2))
    else:
        print(f"strategy set {strategies.version}: {len(strategies.strategies)} strategies, "
              f"{len(tickets)} ticket events\n")
        print(format_text(reports))
    return 0


def validate(args: argparse.Namespace) -> int:
    from services.auto_comp.domain.loader import StrategyLoadError, load_strategies

    try:
        loaded = load_strategies(args.path)
    except StrategyLoadError as exc:
        for e in exc.errors:
            print(str(e), file=sys.stderr)
        print(f"{len(exc.errors)} error(s); nothing would be applied", file=sys.stderr)
        return 1
    print(f"ok: {len(loaded.strategies)} strategies in {len(loaded.files)} file(s), version {loaded.version}")
    return 0


def _extra(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bt = sub.add_parser("backtest", help="run strategies over historical tickets; publishes and writes nothing")
    bt.add_argument("--strategies", required=True, help="strategy file or directory")
    bt.add_argument("--events", required=True, help="ticket events: .jsonl (envelopes) or .csv")
    bt.add_argument("--format", choices=("text", "json"), default="text")
    bt.set_defaults(handler=backtest)
    vs = sub.add_parser("validate-strategies", help="check strategy files; exit 1 with every error")
    vs.add_argument("path", help="strategy file or directory")
    vs.set_defaults(handler=validate)


def main(argv: list[str] | None = None) -> int:
    # What is imported by now (FastAPI, SQLAlchemy, pydantic contract schemas) lives as long as the process:
    # kept out of the cyclic collector's reach, so the collections a batch's allocations trigger do not walk
    # it again and again.
    gc.collect()
    gc.freeze()
    return run_cli(name="auto_comp", settings_factory=Settings, app_factory=build_app, migrations_dir=MIGRATIONS,
                   schema="auto_comp", extra=_extra, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
