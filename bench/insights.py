"""insights: events/s into the rollups, and the month report's latency over rollups of 50,000,000 events.

(a) Ingestion. Per run, on a private database and broker, N = 3 x BENCH_COUNT events are pre-loaded:
tickets (US, each its own buyer, 60% of the events), manual compensations of half of those tickets (30%)
and voucher redemptions of a sixth of them (10%), on their own topics; then insights is started (``serve``)
and drains them. Every event updates insights' record of its ticket or compensation and appends its
rollup deltas (the compactor folds them in meanwhile). The clock runs from the first processed-event
record to the database clock when all N are processed; the rate is N over that time, shown beside the raw
aiokafka consume ceiling.

(b) Month report. The rollups of region US are filled directly (COPY into the base tables) with what
50,000,000 events would leave for November and October 2026: 25,000,000 tickets and 12,500,000
compensations in November (half of them redeemed or expired) over 8 reasons x 40 carriers x 7 strategies
per local day, 2,000 distinct amounts per day and source, 5,000 sellers per day, feedback and decisions,
plus 5,000 audited items and the approval stage (99,000 requests), flagged issues and corrective actions;
three other regions get the same November so the tables are not one region's
alone. Then ``GET /v1/reports/US?period=2026-11`` is asked 60 times in a row (after 5 warm-ups) through
the running service, with a bearer token; the result is the p95 of the 60 latencies per run.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from bench.common import Result, compression
from bench.events import chunks
from bench.ledger import _backend_cpu as backend_cpu
from bench.ledger import _cpu_seconds as cpu_seconds
from bench.stack import DEFAULT_PROCESSES, HOST, SECRET, Counter, Stack
from services.insights.domain.rollups import (
    ACTION_DAILY,
    AMOUNT_DAILY,
    AMOUNT_MONTH,
    APPROVAL_DAILY,
    COMP_DAILY,
    COMP_DAY,
    DECISION_DAILY,
    FEEDBACK_DAILY,
    FLAG_DAILY,
    SELLER_DAILY,
    TICKET_DAILY,
    TICKET_DAY,
    TTC_BINS,
    Table,
)
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from shared.kafka.producer import record_for

_TID, _BID, _EID = "XXTIDXX", "XXBIDXX", "XXEIDXX"
REPORT_ASKS, WARMUPS = 60, 5


def _templates(now: datetime) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    ticket = ev.TicketOpened(
        ticket_id=_TID, order_id=_TID, buyer_id=_BID, seller_id="S-7", carrier_id="C-3",
        reason=ev.TicketReason.DAMAGED, order_amount=ev.PositiveMoney(amount_minor=5000, currency="USD"),
        raised_by=ev.RaisedBy.BUYER)
    manual = ev.ManualCompensationIssued(
        compensation_id=_TID, ticket_id=_TID, order_id=_TID, buyer_id=_BID, seller_id="S-7", agent_id="A-1",
        team="us-tier1", kind=ev.CompensationKind.VOUCHER, amount=ev.PositiveMoney(amount_minor=600, currency="USD"),
        reason_code="damaged_item",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S-7"), amount_minor=600)])
    redeemed = ev.VoucherRedeemed(compensation_id=_TID, buyer_id=_BID, order_id=_TID,
                                  discount=ev.PositiveMoney(amount_minor=450, currency="USD"))
    out = []
    for event_type, payload, at in (("ticket.opened", ticket, now), ("compensation.manual_issued", manual,
                                                                     now + timedelta(minutes=20)),
                                    ("voucher.redeemed", redeemed, now + timedelta(days=2))):
        env = make_envelope(event_type, payload, source="bench", region="US", occurred_at=at, event_id=_EID,
                            correlation_id=_EID)
        topic, key, value, headers = record_for(env)
        out.append((topic, key, value, list(headers)))
    return out


async def _preload(bootstrap: str, run: str, n: int) -> int:
    """Tickets, compensations of half of them, redemptions of a sixth: n events in all (60/30/10)."""
    from aiokafka import AIOKafkaProducer

    ticket, manual, redeemed = _templates(datetime.now(UTC) - timedelta(days=3))
    tickets = n * 6 // 10
    plan: list[tuple[Any, int]] = [(ticket, i) for i in range(tickets)]
    plan += [(manual, i) for i in range(0, tickets, 2)]
    plan += [(redeemed, i) for i in range(0, tickets, 6)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type=compression(),
                                max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for start, size in chunks(len(plan), 5000):
            futures = []
            for (topic, key, value, headers), i in plan[start:start + size]:
                tid, bid, eid = f"T-{run}-{i}".encode(), f"B-{run}-{i}".encode(), f"E-{run}-{topic}-{i}".encode()
                futures.append(await producer.send(
                    topic, value.replace(_TID.encode(), tid).replace(_BID.encode(), bid).replace(_EID.encode(), eid),
                    key=key.replace(_BID.encode(), bid),
                    headers=[(k, v.replace(_EID.encode(), eid)) for k, v in headers]))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(plan)


async def ingestion_run(url: str, external: str | None, partitions: int, n: int, run_no: int = 0
                        ) -> tuple[float, int, tuple[float, float]]:
    """(events/s, events, (service CPU, PostgreSQL backends' CPU) in microseconds per event)."""
    async with Stack(url, external, "insights", partitions) as stack:
        await asyncio.to_thread(stack.cli, "insights", "migrate")
        total = await _preload(stack.bootstrap, uuid.uuid4().hex[:8], n)
        service = await stack.start("insights", migrate=False)
        spy = _pyspy(service.pid, run_no)
        async with Counter(stack.dsn) as db:
            done0 = await db.value("SELECT count(*) FROM insights.processed_events")
            service0, backends0 = cpu_seconds(service.pid), await backend_cpu(db)
            end = await db.wait_for("SELECT count(*) FROM insights.processed_events", total, 120 + total / 500, 0.05,
                                    "insights processed events")
            service1, backends1 = cpu_seconds(service.pid), await backend_cpu(db)
            start = await db.value(
                "SELECT extract(epoch FROM min(processed_at))::float8 FROM insights.processed_events")
            tickets = await db.value("SELECT count(*) FROM insights.tickets")
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait(30)
        assert tickets == n * 6 // 10, tickets
        events = max(1, total - done0)
        backend = sum(v - backends0.get(pid, 0.0) for pid, v in backends1.items())
        return total / (end - start), total, ((service1 - service0) / events * 1e6, backend / events * 1e6)


def _pyspy(pid: int, run_no: int) -> subprocess.Popen[bytes] | None:
    """``BENCH_INSIGHTS_PYSPY=<file stem>``: a py-spy profile of the service (and its consumer processes) per
    run, when ``py-spy`` is on PATH."""
    stem = os.environ.get("BENCH_INSIGHTS_PYSPY")
    exe = shutil.which("py-spy")
    if not stem or not exe:
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "--subprocesses", "-r", "200", "-f", "raw", "-o",
                             f"{stem}-{run_no}.txt"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ------------------------------------------------------------------ month report over filled rollups


def _rows(table: Table, keys: list[tuple[Any, ...]], measure: Any) -> list[tuple[Any, ...]]:
    return [(*k, *measure(k)) for k in keys]


def _month_amounts(rows: list[tuple[Any, ...]]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for _, _, src, amount, n in rows:
        out[(src, amount)] = out.get((src, amount), 0) + n
    return out


async def fill_rollups(dsn: str, regions: list[str], seed: int = 7) -> dict[str, int]:
    """COPY 50,000,000 events' worth of rollups per region-month into the base tables (US: October too)."""
    rnd = random.Random(seed)
    reasons = [r.value for r in ev.TicketReason]
    carriers = [f"C-{i}" for i in range(40)]
    strategies = [f"us-s{i}" for i in range(6)]
    conn = await asyncpg.connect(dsn)
    counts: dict[str, int] = {}
    tickets_per_cell = 25_000_000 // (30 * len(reasons) * len(carriers))  # ~2,604
    try:
        await conn.execute("SET search_path TO insights")
        months = [(r, date(2026, 11, 1), 30) for r in regions] + [("US", date(2026, 10, 1), 31)]
        for region, first, days in months:
            day_list = [first + timedelta(days=i) for i in range(days)]
            ticket_keys = [(region, d, r, c) for d in day_list for r in reasons for c in carriers]
            comp_keys = [(region, d, r, c, src, s) for d in day_list for r in reasons for c in carriers
                         for src, s in [("manual", "")] + [("auto", s) for s in strategies]]
            per_comp = tickets_per_cell // 2 // 7  # compensations per comp cell: 12.5 M in the month
            comp_measures = (
                per_comp, per_comp * 900, per_comp * 400, per_comp * 300, per_comp * 200, per_comp,
                per_comp * 900, per_comp // 2, per_comp * 300, per_comp // 4, per_comp * 200, 0, per_comp // 5,
                per_comp, per_comp * 7200, *[per_comp // TTC_BINS + (1 if i < per_comp % TTC_BINS else 0)
                                              for i in range(TTC_BINS)])
            batches: list[tuple[Table, list[tuple[Any, ...]]]] = [
                (TICKET_DAILY, _rows(TICKET_DAILY, ticket_keys, lambda k: (
                    tickets_per_cell, tickets_per_cell // 2, tickets_per_cell // 3, tickets_per_cell // 4,
                    tickets_per_cell // 2, tickets_per_cell // 3))),
                (COMP_DAILY, [(*k, *comp_measures) for k in comp_keys]),
                (AMOUNT_DAILY, [(region, d, src, a, rnd.randint(1, 200)) for d in day_list
                                for src in ("auto", "manual") for a in range(100, 100 + 2000 * 7, 7)]),
                (SELLER_DAILY, [(region, d, f"S-{s}", 170, 80, 85, 85 * 900) for d in day_list for s in range(5000)]),
                (FEEDBACK_DAILY, [(region, d, r, k, c, 300, 1100, 4400) for d in day_list for r in reasons
                                  for k in ("csat", "review") for c in ("after_comp", "uncompensated", "before_comp")]),
                (DECISION_DAILY, [(region, d, s, 1, o, "", "base", False, 2000, 2000 * 500) for d in day_list
                                  for s in strategies for o in ("issued", "not_eligible", "holdout", "paced")]),
            ]
            # the report grains: a region's day, a region's day per source, a month of amounts
            batches += [
                (TICKET_DAY, [(region, d, *[sum(x) for x in zip(*[r[4:] for r in batches[0][1] if r[1] == d],
                                                                  strict=True)]) for d in day_list]),
                (COMP_DAY, [(region, d, src, *[v * (1 if src == "manual" else len(strategies)) * len(reasons)
                                               * len(carriers) for v in comp_measures])
                            for d in day_list for src in ("auto", "manual")]),
                (AMOUNT_MONTH, [(region, f"{first.year:04d}-{first.month:02d}", src, a, n)
                                for (src, a), n in _month_amounts(batches[2][1]).items()]),
            ]
            for table, rows in batches:
                await conn.copy_records_to_table(table.name, columns=[*table.key_names, *table.measures],
                                                 records=rows, schema_name="insights")
                counts[table.name] = counts.get(table.name, 0) + len(rows)
        items = [("US", i, f"MC-{i}", True, date(2026, 11, 1) + timedelta(days=i % 30), "default",
                  rnd.choice([0.05, 0.1, 0.2, 1.0]), False, f"A-{i % 300}", "t", "damaged", 800,
                  datetime(2026, 11, 3, tzinfo=UTC), False, i, None, f"Q-{i % 20}", rnd.random() > 0.08, None,
                  0, datetime(2026, 11, 2, tzinfo=UTC) + timedelta(hours=i % 600),
                  date(2026, 11, 2) + timedelta(days=(i % 600) // 24), True)
                 for i in range(1, 5001)]
        await conn.copy_records_to_table(
            "audit_items", schema_name="insights", records=items,
            columns=["region", "item_id", "compensation_id", "sampled", "comp_day", "stratum", "probability",
                     "mandatory", "agent_id", "team", "reason_code", "amount_minor", "sla_due_at", "evicted",
                     "verdict_id", "dispute_id", "auditor_id", "passed", "error_category", "misstated_minor",
                     "audited_at", "audit_day", "within_sla"])
        # The approval stage, flagged issues and corrective actions of US November (3,300 requests, 170 flagged
        # compensations and 70 corrective actions a day): a row per day, mismatch, or kind x status x due day.
        nov = [date(2026, 11, 1) + timedelta(days=i) for i in range(30)]
        extra: list[tuple[Table, list[tuple[Any, ...]]]] = [
            (APPROVAL_DAILY, [("US", d, 3300, 800, 260, 2400, 560, 60, 180, 100, 3300 * 900, 2960 * 800,
                               2960 * 900, *[50 if i < 12 else 10 for i in range(TTC_BINS)]) for d in nov]),
            (FLAG_DAILY, [("US", d, m, 170 if m == "" else 60, 170 * 700 if m == "" else 0) for d in nov
                          for m in ("", *(x.value for x in ev.IssueMismatch))]),
            (ACTION_DAILY, [("US", d, k, st, d + timedelta(days=due), 3, 1, 1) for d in nov
                            for k in ("coaching", "guideline_change", "seller_warning", "carrier_claim")
                            for st in ("open", "in_progress", "done", "cancelled") for due in (7, 14)]),
        ]
        for table, rows in extra:
            await conn.copy_records_to_table(table.name, columns=[*table.key_names, *table.measures], records=rows,
                                             schema_name="insights")
            counts[table.name] = len(rows)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return counts


async def report_run(url: str, external: str | None, partitions: int
                     ) -> tuple[float, dict[str, int], float, float]:
    from shared.auth import TokenService

    async with Stack(url, external, "insightsreport", partitions) as stack:
        await asyncio.to_thread(stack.cli, "insights", "migrate")
        counts = await fill_rollups(stack.dsn, ["US", "SG", "GB", "MY"])
        service = await stack.start("insights", migrate=False)
        token = TokenService(SECRET, "compensation-platform").issue("bench", roles=["strategy_manager"],
                                                                    regions=["US"])
        latencies = []
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{service.port}", timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            for i in range(WARMUPS + REPORT_ASKS):
                started = time.perf_counter()
                answer = await client.get("/v1/reports/US", params={"period": "2026-11"})
                elapsed = time.perf_counter() - started
                answer.raise_for_status()
                if i >= WARMUPS:
                    latencies.append(elapsed * 1000)
            tickets = answer.json()["volume"]["tickets"]
        latencies.sort()
        return latencies[int(0.95 * len(latencies)) - 1], counts, tickets, latencies[int(0.99 * len(latencies)) - 1]


async def run(settings: Any, url: str, bootstrap: str, args: Any) -> list[Result]:
    external = os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS")
    n = int(os.environ.get("BENCH_INSIGHTS_COUNT", str(3 * args.count)))
    ingest = Result("insights: events into the rollups", "events/s", ceiling="raw aiokafka consume", bar=20_000)
    total = 0
    cpu: list[tuple[float, float]] = []
    for run_no in range(args.repeats):
        rate, total, used = await ingestion_run(url, external, args.partitions, n, run_no)
        ingest.runs.append(rate)
        cpu.append(used)
    processes = os.environ.get("BENCH_INSIGHTS_PROCESSES", DEFAULT_PROCESSES.get("insights", "1"))
    ingest.note = (f"{total:,} pre-loaded events per run (60% tickets, 30% manual compensations, 10% voucher "
                   "redemptions) drained by the running service: records + rollup deltas, compactor running; "
                   f"{processes} consumer process(es); CPU per event (median): service "
                   f"{statistics.median(c[0] for c in cpu):.0f} us, PostgreSQL backends "
                   f"{statistics.median(c[1] for c in cpu):.0f} us")
    report = Result("insights: month report p95 over 50M-event rollups", "ms", bar=200, lower_is_better=True)
    counts: dict[str, int] = {}
    tickets = 0
    p99s: list[float] = []
    for _ in range(args.repeats):
        p95, counts, tickets, p99 = await report_run(url, external, args.partitions)
        report.runs.append(p95)
        p99s.append(p99)
    report.note = (f"GET /v1/reports/US?period=2026-11 x {REPORT_ASKS} per run after {WARMUPS} warm-ups, through "
                   f"the service; {tickets:,} tickets in the month; rollup rows filled (4 regions' November + US "
                   f"October): {', '.join(f'{k} {v:,}' for k, v in counts.items())}; 5,000 audited items; "
                   f"p99 (median of runs) {statistics.median(p99s):.1f} ms")
    return [ingest, report]


__all__ = ["fill_rollups", "run", "statistics"]
