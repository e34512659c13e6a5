"""End to end: tickets over HTTP into intake -> tickets.v1 -> auto_comp (decision and voucher in one
transaction, spent from the partition's budget allowance, ADR 0012) -> compensations.issued.v1 -> ledger
(charge posted).

Per run, on a private database and broker: ledger, auto_comp and intake run as ``serve`` subprocesses (the
US budget set far above the run's spend), the pipeline is warmed up with 50 tickets, then single tickets
are POSTed to ``/v1/tickets`` open loop, first at BENCH_E2E_LOW_RATE (100, a reference well below
capacity; 0 skips it), then at BENCH_E2E_RATE (1,000) per second, each for BENCH_E2E_SECONDS (20).
Latency of a ticket: from the moment its 202 reached the client (wall clock) to the ``recorded_at`` of the
ledger's charge transaction for its compensation (the database clock at the start of the ledger's
transaction; same machine, same clock). Holdout tickets (5%) get no charge and are left out. Tickets not
charged BENCH_E2E_WAIT (45) s after the last send count with their age then (a lower bound). Requests
still unanswered 15 s after the last send are abandoned: never accepted, they are not in the latency but
lower the accepted rate, reported next to it.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from bench.auto_comp import BUDGET_MINOR
from bench.common import Result, open_loop, percentile
from bench.events import TicketItems
from bench.http import Client, HttpError
from bench.stack import HOST, Counter, Stack

GRACE = 15.0

_FINAL = "SELECT count(*) FROM auto_comp.decisions WHERE outcome <> 'pending_budget' AND ticket_id LIKE $1"
_ISSUED = "SELECT count(*) FROM auto_comp.decisions WHERE outcome = 'issued' AND ticket_id LIKE $1"
_CHARGED = ("SELECT count(*) FROM auto_comp.decisions d JOIN ledger.journal_transfers t "
            "ON t.compensation_id = d.compensation_id AND t.kind = 'charge' AND t.line_no = 1 "
            "WHERE d.ticket_id LIKE $1")
_TIMES = ("SELECT d.ticket_id, d.outcome, extract(epoch FROM d.decided_at)::float8 AS decided, "
          "extract(epoch FROM d.updated_at)::float8 AS issued, extract(epoch FROM t.recorded_at)::float8 AS charged "
          "FROM auto_comp.decisions d LEFT JOIN ledger.journal_transfers t "
          "ON t.compensation_id = d.compensation_id AND t.kind = 'charge' AND t.line_no = 1 "
          "WHERE d.ticket_id LIKE $1")


async def _settle(db: Counter, pattern: str, accepted: int, wait: float) -> bool:
    """Wait until every accepted ticket is decided and every issued one charged; False on timeout."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        final = await db.value(_FINAL, pattern)
        if final >= accepted and await db.value(_CHARGED, pattern) >= await db.value(_ISSUED, pattern):
            return True
        await _sleep(0.25)
    return False


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def one_run(url: str, external: str | None, partitions: int, rates: list[float], seconds: float,
                  wait: float) -> list[dict[str, Any]]:
    """One stack, warmed up, then one open-loop phase per rate (each settled before the next)."""
    async with Stack(url, external, "e2e", partitions) as stack:
        await stack.start("ledger")
        await stack.set_budget("US", BUDGET_MINOR)
        await stack.start("auto_comp")
        intake = await stack.start("intake")
        token = stack.token()
        async with Client(HOST, intake.port, {"Authorization": f"Bearer {token}"}, max_connections=64) as client, \
                Counter(stack.dsn) as db:
            warm = TicketItems("w" + uuid.uuid4().hex[:7])
            for i in range(50):
                status, body = await client.post("/v1/tickets", warm.item(i))
                if status != 202:
                    raise RuntimeError(f"intake answered {status}: {body[:300]!r}")
            if not await _settle(db, f"T-{warm.run}-%", 50, 120):
                raise RuntimeError("the pipeline did not settle 50 warm-up tickets within 120 s")
            return [await _phase(client, db, rate, seconds, wait) for rate in rates]


async def _phase(client: Client, db: Counter, rate: float, seconds: float, wait: float) -> dict[str, Any]:
    items = TicketItems(uuid.uuid4().hex[:8])
    accepted_at: dict[str, float] = {}
    refused: dict[str, int] = {}

    async def send(i: int, scheduled: float) -> None:
        try:
            status, _ = await client.post("/v1/tickets", items.item(i))
        except (HttpError, OSError) as exc:
            refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
            return
        if status == 202:
            accepted_at[items.ticket_id(i)] = time.time()
        else:
            refused[str(status)] = refused.get(str(status), 0) + 1

    started = time.perf_counter()
    offered, abandoned = await open_loop(rate, seconds, send, drain_timeout=GRACE)
    window = time.perf_counter() - started
    settled = await _settle(db, f"T-{items.run}-%", len(accepted_at), wait)
    cutoff = time.time()
    rows = await db.rows(_TIMES, f"T-{items.run}-%")
    e2e: list[float] = []
    to_decided: list[float] = []
    decided_to_issued: list[float] = []
    issued_to_charged: list[float] = []
    holdout = missing = 0
    seen: set[str] = set()
    for r in rows:
        at = accepted_at.get(r["ticket_id"])
        if at is None:
            continue
        seen.add(r["ticket_id"])
        if r["outcome"] == "holdout":
            holdout += 1
            continue
        to_decided.append((r["decided"] - at) * 1000)
        if r["charged"] is None:
            missing += 1
            e2e.append((cutoff - at) * 1000)
            continue
        e2e.append((r["charged"] - at) * 1000)
        decided_to_issued.append((r["issued"] - r["decided"]) * 1000)
        issued_to_charged.append((r["charged"] - r["issued"]) * 1000)
    undecided = [(cutoff - at) * 1000 for t, at in accepted_at.items() if t not in seen]
    e2e.extend(undecided)
    return {"e2e": e2e, "accepted": len(accepted_at), "achieved": len(accepted_at) / window,
            "offered": offered, "abandoned": abandoned, "refused": refused, "holdout": holdout,
            "missing": missing + len(undecided), "settled": settled,
            "stages": {"accepted->decided": to_decided, "decided->issued": decided_to_issued,
                       "issued->charged": issued_to_charged}}


def _note(last: dict[str, Any], seconds: float, wait: float) -> str:
    stages = "; ".join(f"{name} p50 {percentile(v, 50):,.0f} / p99 {percentile(v, 99):,.0f} ms"
                       for name, v in last["stages"].items())
    return (f"open loop {seconds:.0f} s per run; last run: {last['accepted']:,} accepted, {last['holdout']:,} "
            f"holdout (no charge), {last['missing']:,} not charged within {wait:.0f} s (counted with their age "
            f"then, a lower bound), {last['abandoned']:,} requests still unanswered {GRACE:.0f} s after the last "
            f"send (not accepted, so not in the latency); stages {stages}"
            + (f"; non-202 answers {last['refused']}" if last["refused"] else ""))


async def run(settings: Any, url: str, bootstrap: str, args: Any) -> list[Result]:
    rate = float(os.environ.get("BENCH_E2E_RATE", "1000"))
    low = float(os.environ.get("BENCH_E2E_LOW_RATE", "100"))
    seconds = float(os.environ.get("BENCH_E2E_SECONDS", "20"))
    wait = float(os.environ.get("BENCH_E2E_WAIT", "45"))
    repeats = int(os.environ.get("BENCH_E2E_REPEATS", str(args.repeats)))
    rates = [low, rate] if low else [rate]
    results: dict[float, tuple[Result, Result, Result]] = {}
    for r in rates:
        label = f"@{r:,.0f} tickets/s offered"
        results[r] = (
            Result(f"e2e: accepted -> charge posted p50 {label}", "ms",
                   ceiling="raw aiokafka produce->consume p50 @1000/s", lower_is_better=True),
            Result(f"e2e: accepted -> charge posted p99 {label}", "ms",
                   ceiling="raw aiokafka produce->consume p99 @1000/s", bar=250, lower_is_better=True),
            Result(f"e2e: tickets accepted by intake {label}", "tickets/s", ceiling="raw aiokafka produce",
                   bar=0.99 * r))
    external = os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS")
    last: list[dict[str, Any]] = []
    for _ in range(repeats):
        last = await one_run(url, external, args.partitions, rates, seconds, wait)
        for r, phase in zip(rates, last, strict=True):
            p50, p99, achieved = results[r]
            p50.runs.append(percentile(phase["e2e"], 50))
            p99.runs.append(percentile(phase["e2e"], 99))
            achieved.runs.append(phase["achieved"])
    out: list[Result] = []
    for r, phase in zip(rates, last, strict=True):
        p50, p99, achieved = results[r]
        p99.note = _note(phase, seconds, wait)
        achieved.note = ("single POST /v1/tickets; 202 answers per second from the first send to the last "
                         "answer (up to 15 s after the last send)")
        if r != rate:
            p99.bar = achieved.bar = None
            p99.note = "reference: the same pipeline well below its capacity; " + p99.note
        out += [p50, p99, achieved]
    return out
