"""auto_comp: sustained decisions/s with budget allowance + voucher + charge, against the real ledger.

Per run, on a private database and broker: the ledger is started (``serve``) with a budget far above what
the run spends, and warmed up (an allowance request and a manual compensation through both of its consumer
groups); auto_comp is started and warmed up with 200 tickets (its consumer groups joined and every
partition's allowance granted: a one-off at a service's start); then N = BENCH_COUNT / 2 tickets (or
BENCH_AUTO_COMP_COUNT) are produced onto ``tickets.v1`` at once (US late deliveries, one buyer each: every
ticket matches ``us-late-delivery``, 5% fall in its holdout). The clock runs from auto_comp's first
recorded decision of those (the database's ``decided_at``) until every decision is final and every issued
voucher is charged by the ledger: the voucher spent from its partition's budget allowance (ADR 0012) and
issued in the decision's transaction, ``compensation.issued`` relayed, and the charge on the ledger's
books. The rate is N over that time; the note adds the rate of final decisions alone.

The note also gives CPU time per decision (median of the runs), which depends far less on what else runs on
the machine than the wall-clock rate: auto_comp's and the ledger's processes (with their consumer processes)
and the PostgreSQL backends of the run's database, from the end of the warm-up until every voucher is
charged, over the N decisions.
"""

from __future__ import annotations

import os
import statistics
import uuid
from datetime import UTC, datetime
from typing import Any

from bench.common import Result
from bench.events import Records, produce
from bench.ledger import _backend_cpu, _cpu_seconds
from bench.stack import Counter, Stack
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from shared.kafka.producer import record_for
from shared.periods import period_of
from shared.regions import region

BUDGET_MINOR = 10**13


async def warm_ledger(stack: Stack) -> None:
    """Both ledger consumer groups joined and through their first batch before the clock matters."""
    from aiokafka import AIOKafkaProducer

    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    period = period_of(now, region("US"))
    request = ev.BudgetAllowanceRequested(
        allowance_id=f"al-warm-{tag}", request_seq=1, budget_period=period, pacing_allowance_percent=100,
        at_least=ev.MoneyTotal(amount_minor=0, currency="USD"),
        wanted=ev.MoneyTotal(amount_minor=100, currency="USD"), owner="bench:warm-up")
    returned = ev.BudgetAllowanceReturned(
        allowance_id=f"al-warm-{tag}", budget_period=period, spent=ev.MoneyTotal(amount_minor=0, currency="USD"),
        spent_count=0, reason=ev.AllowanceCloseReason.SHUTDOWN, closed_at=now)
    manual = ev.ManualCompensationIssued(
        compensation_id=f"MC-warm-{tag}", ticket_id=f"T-warm-{tag}", order_id=f"O-warm-{tag}",
        buyer_id=f"B-warm-{tag}", agent_id="A-warm", team="warm", kind=ev.CompensationKind.STORE_CREDIT,
        amount=ev.PositiveMoney(amount_minor=100, currency="USD"), reason_code="warm_up",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=100)])
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        for event_type, payload in (("budget.allowance_requested", request), ("budget.allowance_returned", returned),
                                    ("compensation.manual_issued", manual)):
            topic, key, value, headers = record_for(make_envelope(event_type, payload, source="bench", region="US",
                                                                  occurred_at=now))
            await (await producer.send(topic, value, key=key, headers=headers))
    finally:
        await producer.stop()
    async with Counter(stack.dsn) as db:
        await db.wait_for("SELECT count(*) FROM ledger.allowances WHERE status = 'returned'", 1, 90, 0.1,
                          "ledger warm-up allowance")
        await db.wait_for("SELECT count(*) FROM ledger.compensations", 1, 90, 0.1, "ledger warm-up charge")




def _final(tag: str) -> str:
    return f"SELECT count(*) FROM auto_comp.decisions WHERE outcome <> 'pending_budget' AND ticket_id LIKE 'T-{tag}-%'"


def _charged(tag: str) -> str:
    return ("SELECT count(*) FROM ledger.compensations WHERE origin = 'auto' AND compensation_id IN (SELECT "
            f"compensation_id FROM auto_comp.compensations WHERE status = 'issued' AND ticket_id LIKE 'T-{tag}-%')")


WARM = 200  # tickets through auto_comp before the clock: its consumer groups joined, every partition granted


async def one_run(url: str, external: str | None, partitions: int, n: int,
                  cpu: list[tuple[float, float, float]] | None = None) -> tuple[float, float, int, int]:
    """(decisions/s with every voucher charged, final decisions/s, issued, holdout) of one run; appends
    (auto_comp, ledger, PostgreSQL) CPU microseconds per decision to ``cpu``."""
    async with Stack(url, external, "autocomp", partitions) as stack:
        ledger = await stack.start("ledger")
        await stack.set_budget("US", BUDGET_MINOR)
        await warm_ledger(stack)
        service = await stack.start("auto_comp")
        timeout = 120 + n / 100
        warm = uuid.uuid4().hex[:8]
        await produce(stack.bootstrap, Records("ticket", warm), 0, WARM)
        async with Counter(stack.dsn) as db:
            await db.wait_for(_final(warm), WARM, timeout, 0.1, "auto_comp warm-up decisions")
            await db.wait_for(_charged(warm), await db.value(_final(warm).replace("<> 'pending_budget'",
                                                                                   "= 'issued'")),
                              timeout, 0.1, "ledger warm-up charges")
            tag = uuid.uuid4().hex[:8]
            service0, ledger0, backends0 = _cpu_seconds(service.pid), _cpu_seconds(ledger.pid), await _backend_cpu(db)
            await produce(stack.bootstrap, Records("ticket", tag), 0, n)
            decided = await db.wait_for(_final(tag), n, timeout, 0.1, "final auto_comp decisions")
            counts = await db.row(
                "SELECT count(*) FILTER (WHERE outcome = 'issued') AS issued, count(*) FILTER (WHERE outcome = "
                "'holdout') AS holdout, min(extract(epoch FROM decided_at))::float8 AS start FROM "
                f"auto_comp.decisions WHERE ticket_id LIKE 'T-{tag}-%'")
            end = await db.wait_for(_charged(tag), counts["issued"], timeout, 0.1, "ledger charges of the vouchers")
            service1, ledger1, backends1 = _cpu_seconds(service.pid), _cpu_seconds(ledger.pid), await _backend_cpu(db)
            if cpu is not None:
                # Backends that were not there at the start count from zero.
                backend = sum(v - backends0.get(pid, 0.0) for pid, v in backends1.items())
                cpu.append(((service1 - service0) / n * 1e6, (ledger1 - ledger0) / n * 1e6, backend / n * 1e6))
        start = counts["start"]
        return n / (end - start), n / (decided - start), counts["issued"], counts["holdout"]


async def run(settings: Any, url: str, bootstrap: str, args: Any) -> list[Result]:
    n = int(os.environ.get("BENCH_AUTO_COMP_COUNT", str(args.count // 2)))
    result = Result("auto_comp: decisions with allowance + voucher + charge", "decisions/s",
                    ceiling="raw aiokafka consume", bar=5_000)
    decided: list[float] = []
    issued = holdout = 0
    external = os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS")
    cpu: list[tuple[float, float, float]] = []
    for _ in range(args.repeats):
        rate, decision_rate, issued, holdout = await one_run(url, external, args.partitions, n, cpu)
        result.runs.append(rate)
        decided.append(decision_rate)
    cpu_note = ""
    if cpu:
        service_us, ledger_us, backend_us = (statistics.median(c[i] for c in cpu) for i in range(3))
        cpu_note = (f"; CPU per decision (median): auto_comp {service_us:.0f} us, ledger {ledger_us:.0f} us, "
                    f"PostgreSQL backends {backend_us:.0f} us")
    result.note = (f"{n:,} pre-loaded tickets per run, from the first decision until every decision is final and "
                   f"every issued voucher charged by the ledger ({issued:,} issued, {holdout:,} holdout in the last "
                   f"run); final decisions alone at {statistics.median(decided):,.0f}/s{cpu_note}")
    return [result]
