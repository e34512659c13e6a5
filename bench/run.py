"""``make bench``: every benchmark, medians of repeated runs, with the raw ceilings of the same run.

Infrastructure: BENCH_DATABASE_URL / BENCH_KAFKA_BOOTSTRAP_SERVERS when set, else a private embedded
PostgreSQL and Tansu broker started for the run (and stopped after it). Results are printed as a
Markdown table and written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import raw, toolkit
from bench.common import Result, table
from shared.config import CommonSettings

RESULTS = Path(__file__).with_name("results")
# Settings refuse to load without a token secret; a benchmark run signs with a throwaway one.
os.environ.setdefault("AUTH_TOKEN_SECRET", secrets.token_urlsafe(32))


async def _infra(stack: list) -> tuple[str, str]:
    url = os.environ.get("BENCH_DATABASE_URL")
    bootstrap = os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS")
    from shared import embedded

    if not url:
        folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        url = embedded.start_postgres(folder)
        stack.append(lambda: (embedded.stop_postgres(folder), shutil.rmtree(folder, ignore_errors=True)))
    if not bootstrap:
        port = embedded.free_port()
        log = Path(tempfile.mkdtemp(prefix="bench-broker-")) / "broker.log"
        proc = embedded.start_broker(port, log)
        stack.append(lambda: (proc.terminate(), proc.wait(10), shutil.rmtree(log.parent, ignore_errors=True)))
        bootstrap = f"127.0.0.1:{port}"
        embedded.wait_for_port("127.0.0.1", port, 30)
    return url, bootstrap


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def main(args: argparse.Namespace) -> list[Result]:
    stack: list = []
    try:
        url, bootstrap = await _infra(stack)
        from shared import embedded
        from shared.contracts.topics import ALL_TOPICS

        stamp = str(int(time.time()))
        raw_topic, runner_topic = f"bench-raw-{stamp}", f"bench-runner-{stamp}"
        await embedded.create_topics(bootstrap, [*ALL_TOPICS, raw_topic, runner_topic], args.partitions)
        settings = CommonSettings(database_url=url, kafka_bootstrap_servers=bootstrap,
                                  consumer_session_timeout_ms=6000)
        results: list[Result] = []
        if not args.no_ceilings:
            say("raw ceilings")
            results += await raw.ceilings(bootstrap, raw_topic, _dsn(url), args.count, args.repeats)
        if not args.only:
            say("toolkit: outbox relay, consumer runner")
            results.append(await toolkit.outbox_relay(settings, args.count, args.repeats))
            results.append(await toolkit.consumer_runner(settings, runner_topic, args.count, args.repeats))
        for name in args.only or _service_benches():
            say(name)
            started = time.monotonic()
            module = __import__(f"bench.{name}", fromlist=["run"])
            results.extend(await module.run(settings, url, bootstrap, args))
            say(f"{name} done in {time.monotonic() - started:.0f} s (load average {_load()})")
        return results
    finally:
        for undo in reversed(stack):
            try:
                undo()
            except Exception as exc:
                print(f"cleanup failed: {exc}")


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _service_benches() -> list[str]:
    """Every service benchmark present; ``memory`` (about 10 minutes) only with BENCH_MEMORY=1."""
    names = ["intake", "auto_comp", "ledger", "e2e"]
    if os.environ.get("BENCH_MEMORY") == "1":
        names.append("memory")
    return [n for n in names if Path(__file__).with_name(f"{n}.py").exists()]


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--count", type=int, default=int(os.environ.get("BENCH_COUNT", "20000")))
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", "3")))
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--only", nargs="*", help="service benchmarks to run (default: intake auto_comp ledger "
                        "e2e, plus memory with BENCH_MEMORY=1); skips the toolkit benchmarks")
    parser.add_argument("--no-ceilings", action="store_true", help="skip the raw ceilings (quick checks only)")
    parser.add_argument("--output", default="latest", help="results file stem in bench/results (default latest)")
    args = parser.parse_args()
    load_before, started = _load(), time.monotonic()
    results = asyncio.run(main(args))
    say(f"all done in {(time.monotonic() - started) / 60:.1f} min (load average {_load()})")
    text = table(results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps({
        "at": datetime.now(UTC).isoformat(), "minutes": round((time.monotonic() - started) / 60, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": _load()},
        "count": args.count, "repeats": args.repeats,
        "results": [{"name": r.name, "unit": r.unit, "median": r.median, "runs": r.runs, "ceiling": r.ceiling,
                     "note": r.note, "bar": r.bar, "lower_is_better": r.lower_is_better, "verdict": r.verdict}
                    for r in results]}, indent=2))
    (RESULTS / f"{args.output}.md").write_text(text + "\n")


if __name__ == "__main__":
    cli()
