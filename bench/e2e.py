"""End to end: tickets over HTTP into intake -> tickets.v1 -> auto_comp (decision, budget reservation with
the ledger over the broker, voucher) -> compensations.issued.v1 -> ledger (charge posted).

Per run, on a private database and broker: ledger, auto_comp and intake run as ``serve`` subprocesses (the
US budget set far above the run's spend), the pipeline is warmed up with 50 tickets, then single tickets
are POSTed to ``/v1/tickets`` open loop at BENCH_E2E_RATE (1,000) per second for BENCH_E2E_SECONDS (20).
Latency of a ticket: from the moment its 202 reached the client (wall clock) to the ``recorded_at`` of the
ledger's charge transaction for its compensation (the database clock at the start of the ledger's
transaction; same machine, same clock). Holdout tickets (5%) get no charge and are left out. Tickets not
charged BENCH_E2E_WAIT (45) s after the last send count with their age then (a lower bound), and so do
requests still unanswered 15 s after the last send.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from bench.auto_comp import BUDGET_MINOR
from bench.common import Result, open_loop, percentile
from bench.events import TicketItems
from bench.http import Client
from bench.stack import HOST, Counter, Stack

GRACE = 15.0

_FINAL = "SELECT count(*) FROM auto_comp.decisions WHERE outcome <> 'pending_budget' AND ticket_id LIKE $1"
_ISSUED = "SELECT count(*) FROM auto_comp.decisions WHERE outcome = 'issued' AND ticket_id LIKE $1"
_CHARGED = ("SELECT count(*) FROM auto_comp.decisions d JOIN ledger.journal_transactions t "
            "ON t.compensation_id = d.compensation_id AND t.kind = 'charge' WHERE d.ticket_id LIKE $1")
_TIMES = ("SELECT d.ticket_id, d.outcome, extract(epoch FROM d.decided_at)::float8 AS decided, "
          "extract(epoch FROM d.updated_at)::float8 AS issued, extract(epoch FROM t.recorded_at)::float8 AS charged "
          "FROM auto_comp.decisions d LEFT JOIN ledger.journal_transactions t "
          "ON t.compensation_id = d.compensation_id AND t.kind = 'charge' WHERE d.ticket_id LIKE $1")


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


async def one_run(url: str, external: str | None, partitions: int, rate: float, seconds: float,
                  wait: float) -> dict[str, Any]:
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

            items = TicketItems(uuid.uuid4().hex[:8])
            accepted_at: dict[str, float] = {}
            waiting: dict[str, float] = {}
            refused: dict[str, int] = {}

            async def send(i: int, scheduled: float) -> None:
                ticket = items.ticket_id(i)
                waiting[ticket] = scheduled
                status, _ = await client.post("/v1/tickets", items.item(i))
                del waiting[ticket]
                if status == 202:
                    accepted_at[ticket] = time.time()
                else:
                    refused[str(status)] = refused.get(str(status), 0) + 1

            started = time.perf_counter()
            offered, abandoned = await open_loop(rate, seconds, send, drain_timeout=GRACE)
            send_window = time.perf_counter() - started
            unanswered_age = [(time.perf_counter() - at) * 1000 for at in waiting.values()]
            settled = await _settle(db, f"T-{items.run}-%", len(accepted_at), wait)
            cutoff = time.time()
            rows = await db.rows(_TIMES, f"T-{items.run}-%")
    e2e, to_decided, decided_to_issued, issued_to_charged = [], [], [], []
    holdout = missing = 0
    for r in rows:
        at = accepted_at.get(r["ticket_id"])
        if at is None:
            continue
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
    undecided = len(accepted_at) - sum(1 for r in rows if r["ticket_id"] in accepted_at)
    missing += undecided
    e2e.extend((cutoff - accepted_at[t]) * 1000 for t in set(accepted_at) - {r["ticket_id"] for r in rows})
    e2e.extend(unanswered_age)
    return {"e2e": e2e, "accepted": len(accepted_at), "achieved": len(accepted_at) / send_window,
            "offered": offered, "abandoned": abandoned, "refused": refused, "holdout": holdout,
            "missing": missing, "settled": settled,
            "stages": {"accepted->decided": to_decided, "decided->issued": decided_to_issued,
                       "issued->charged": issued_to_charged}}


async def run(settings: Any, url: str, bootstrap: str, args: Any) -> list[Result]:
    rate = float(os.environ.get("BENCH_E2E_RATE", "1000"))
    seconds = float(os.environ.get("BENCH_E2E_SECONDS", "20"))
    wait = float(os.environ.get("BENCH_E2E_WAIT", "45"))
    repeats = int(os.environ.get("BENCH_E2E_REPEATS", str(args.repeats)))
    label = f"@{rate:,.0f} tickets/s offered"
    p50 = Result(f"e2e: accepted -> charge posted p50 {label}", "ms",
                 ceiling="raw aiokafka produce->consume p50 @1000/s", lower_is_better=True)
    p99 = Result(f"e2e: accepted -> charge posted p99 {label}", "ms",
                 ceiling="raw aiokafka produce->consume p99 @1000/s", bar=250, lower_is_better=True)
    achieved = Result("e2e: tickets accepted by intake", "tickets/s", ceiling="raw aiokafka produce", bar=rate)
    external = os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS")
    last: dict[str, Any] = {}
    for _ in range(repeats):
        last = await one_run(url, external, args.partitions, rate, seconds, wait)
        p50.runs.append(percentile(last["e2e"], 50))
        p99.runs.append(percentile(last["e2e"], 99))
        achieved.runs.append(last["achieved"])
    stages = "; ".join(f"{name} p50 {percentile(v, 50):,.0f} / p99 {percentile(v, 99):,.0f} ms"
                       for name, v in last["stages"].items())
    p99.note = (f"open loop {seconds:.0f} s per run; last run: {last['accepted']:,} accepted, "
                f"{last['holdout']:,} holdout (no charge), {last['missing']:,} not charged within {wait:.0f} s "
                f"(counted with their age then), {last['abandoned']:,} requests unanswered {GRACE:.0f} s after "
                f"the last send; stages {stages}"
                + (f"; non-202 answers {last['refused']}" if last["refused"] else ""))
    achieved.note = "single POST /v1/tickets, 202 answers per second over the send window (median run)"
    return [p50, p99, achieved]
