"""``python -m services.auto_comp serve | migrate | backtest | what-if | validate-strategies``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.auto_comp.app import build_app
from services.auto_comp.config import Settings
from shared.runtime import freeze_startup_heap
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


def what_if(args: argparse.Namespace) -> int:
    """The same window of tickets under the strategies in force and under a proposal: per ticket and per
    liable party, which tickets change outcome. Writes JSON, CSV or text; publishes and stores nothing."""
    import csv
    import io
    from datetime import date

    from services.auto_comp.backtest import BacktestInputError, read_tickets
    from services.auto_comp.domain import whatif
    from services.auto_comp.domain.loader import StrategyLoadError, load_strategies, load_with_proposal
    from shared.regions import UnknownRegion, region

    try:
        first = date.fromisoformat(args.start) if args.start else None
        last = date.fromisoformat(args.end) if args.end else None
    except ValueError as exc:
        print(f"invalid window: --from/--to: {exc} (YYYY-MM-DD, local days of each ticket's region)", file=sys.stderr)
        return 2
    if first and last and last < first:
        print("invalid window: --to is before --from", file=sys.stderr)
        return 2
    try:
        regions = [region(code).code for code in args.region] if args.region else None
    except UnknownRegion as exc:
        print(f"invalid window: --region: {exc}", file=sys.stderr)
        return 2
    try:
        current = load_strategies(args.strategies)
        proposed = load_with_proposal(args.strategies, args.proposed)
        tickets = [t for t in read_tickets(args.events) if whatif.in_window(t, regions, first, last)]
    except StrategyLoadError as exc:
        for e in exc.errors:
            print(f"invalid strategy: {e}", file=sys.stderr)
        return 2
    except BacktestInputError as exc:
        print(f"invalid events: {exc}", file=sys.stderr)
        return 2
    result = whatif.run_what_if(current, proposed, tickets)
    outputs: list[tuple[str | None, str]] = []
    if args.format == "json":
        outputs.append((args.output, json.dumps(result.as_dict(changed_only=args.changed_only), indent=2) + "\n"))
    elif args.format == "csv":
        def table(columns: tuple[str, ...], rows: list[list[object]]) -> str:
            out = io.StringIO()
            w = csv.writer(out, lineterminator="\n")
            w.writerow(columns)
            w.writerows(rows)
            return out.getvalue()

        tickets_csv = table(whatif.TICKET_CSV_COLUMNS, whatif.ticket_rows(result, changed_only=args.changed_only))
        parties_csv = table(whatif.PARTY_CSV_COLUMNS, whatif.party_rows(result))
        if args.output in (None, "-"):
            outputs.append((None, tickets_csv + "\n" + parties_csv))
        else:
            stem = Path(args.output)
            outputs += [(str(stem.with_name(stem.stem + "-tickets.csv")), tickets_csv),
                        (str(stem.with_name(stem.stem + "-parties.csv")), parties_csv)]
    else:
        outputs.append((args.output, whatif.format_text(result, limit=args.limit)))
    for path, body in outputs:
        if path in (None, "-"):
            sys.stdout.write(body)
        else:
            Path(path).write_text(body, encoding="utf-8")
            print(f"what-if: wrote {path}", file=sys.stderr)
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
    wi = sub.add_parser("what-if", help="a proposed strategy file against the strategies in force over the same "
                                        "tickets: per ticket and per liable party; publishes and writes nothing")
    wi.add_argument("--strategies", default=str(Path(__file__).with_name("strategies")),
                    help="the strategy files in force (file or directory; default: the shipped ones)")
    wi.add_argument("--proposed", required=True,
                    help="proposed strategy file or directory: replaces the file of the same name, else is added")
    wi.add_argument("--events", required=True,
                    help="the stored window of tickets: .jsonl (tickets.v1 envelopes) or .csv, as for backtest")
    wi.add_argument("--region", action="append", default=None, help="only these regions (repeatable)")
    wi.add_argument("--from", dest="start", default=None, help="first local day of the window, YYYY-MM-DD")
    wi.add_argument("--to", dest="end", default=None, help="last local day of the window (inclusive)")
    wi.add_argument("--changed-only", action="store_true", help="list only the tickets whose decision changes")
    wi.add_argument("--format", choices=("text", "json", "csv"), default="text")
    wi.add_argument("--limit", type=int, default=50, help="text: changed tickets listed per region")
    wi.add_argument("--output", "-o", default=None,
                    help="file to write ('-' or none: stdout); csv writes <stem>-tickets.csv and <stem>-parties.csv")
    wi.set_defaults(handler=what_if)
    vs = sub.add_parser("validate-strategies", help="check strategy files; exit 1 with every error")
    vs.add_argument("path", help="strategy file or directory")
    vs.set_defaults(handler=validate)


def main(argv: list[str] | None = None) -> int:
    # What is imported by now (FastAPI, SQLAlchemy, pydantic contract schemas) lives as long as the process:
    # kept out of the cyclic collector's reach, so the collections a batch's allocations trigger do not walk
    # it again and again.
    freeze_startup_heap()
    return run_cli(name="auto_comp", settings_factory=Settings, app_factory=build_app, migrations_dir=MIGRATIONS,
                   schema="auto_comp", extra=_extra, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
