"""intake: (a) batch throughput, (b) single-event latency at a fixed 500 requests/s (open loop).

A real ``python -m services.intake serve`` on a free port, after ``migrate``, on a private database and
broker; the load generator authenticates with a bearer token of role ``service`` from
``python -m shared token``. The outbox relay publishes to the broker meanwhile, as in production.

(a) ``BENCH_INTAKE_CLIENTS`` (4) clients POST batches of 1,000 tickets to ``/v1/tickets/batch`` until
2 x BENCH_COUNT events are in; events/s accepted (202-equivalent per item: stored with its outbox row).
(b) 500 single ``POST /v1/tickets`` per second for ``BENCH_LATENCY_SECONDS`` (20) after a 2 s warm-up,
sent at fixed intervals whatever the answers do; latency is measured from each request's scheduled time to
its 202, so queueing behind a slow answer counts.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import orjson

from bench.common import Result, open_loop, percentile
from bench.events import TicketItems, chunks
from bench.http import Client, HttpError
from bench.stack import HOST, Counter, Stack

BATCH = 1000
RATE = 500.0
GRACE = 15.0  # seconds an unanswered request may still take after the last send


async def _batches(client: Client, bodies: list[bytes], clients: int) -> tuple[int, float, list[int]]:
    queue = list(reversed(bodies))
    accepted = 0
    statuses: list[int] = []

    async def worker() -> None:
        nonlocal accepted
        while queue:
            body = queue.pop()
            status, payload = await client.post("/v1/tickets/batch", body)
            statuses.append(status)
            if status == 200:
                accepted += orjson.loads(payload)["accepted"]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return accepted, time.perf_counter() - started, statuses


async def _latency(client: Client, items: TicketItems, seconds: float) -> tuple[list[float], dict[str, int], int]:
    """Latencies (ms) of the 202s; answers other than 202 by status; requests abandoned unanswered
    ``GRACE`` seconds after the last send (each counted with its age then: a lower bound)."""
    samples: list[float] = []
    errors: dict[str, int] = {}
    scheduled_at: dict[int, float] = {}

    async def send(i: int, scheduled: float) -> None:
        scheduled_at[i] = scheduled
        try:
            status, _ = await client.post("/v1/tickets", items.item(i))
        except (HttpError, OSError) as exc:
            status = type(exc).__name__  # type: ignore[assignment]
        del scheduled_at[i]
        if status == 202:
            samples.append((time.perf_counter() - scheduled) * 1000)
        else:
            errors[str(status)] = errors.get(str(status), 0) + 1

    _, abandoned = await open_loop(RATE, seconds, send, drain_timeout=GRACE)
    now = time.perf_counter()
    samples.extend((now - at) * 1000 for at in scheduled_at.values())
    return samples, errors, abandoned


async def _drained(dsn: str, timeout: float = 120) -> float:
    """Seconds until intake's outbox is empty (every accepted event published)."""
    started = time.perf_counter()
    async with Counter(dsn) as db:
        await db.wait_for("SELECT CASE WHEN count(*) = 0 THEN 1 ELSE 0 END FROM intake.outbox", 1, timeout,
                          interval=0.1, what="intake outbox empty")
    return time.perf_counter() - started


async def run(settings: Any, url: str, bootstrap: str, args: Any) -> list[Result]:
    clients = int(os.environ.get("BENCH_INTAKE_CLIENTS", "4"))
    seconds = float(os.environ.get("BENCH_LATENCY_SECONDS", "20"))
    total = 2 * args.count
    batch = Result("intake: batch POST /v1/tickets/batch", "events/s", ceiling="raw asyncpg COPY", bar=10_000)
    p50 = Result("intake: single POST p50 @500 req/s", "ms", ceiling="raw asyncpg INSERT+COMMIT p50 @500/s",
                 lower_is_better=True)
    p99 = Result("intake: single POST p99 @500 req/s", "ms", ceiling="raw asyncpg INSERT+COMMIT p99 @500/s",
                 bar=20, lower_is_better=True)
    external = os.environ.get("BENCH_KAFKA_BOOTSTRAP_SERVERS")
    async with Stack(url, external, "intake", args.partitions) as stack:
        service = await stack.start("intake")
        token = stack.token()
        publish_rates: list[float] = []
        lat_errors: dict[str, int] = {}
        batch_errors = abandoned = 0
        achieved: list[float] = []
        async with Client(HOST, service.port, {"Authorization": f"Bearer {token}"}) as client:
            for _ in range(args.repeats):
                items = TicketItems(uuid.uuid4().hex[:8])
                bodies = [items.batch(s, n) for s, n in chunks(total, BATCH)]
                accepted, elapsed, statuses = await _batches(client, bodies, clients)
                drain = await _drained(stack.dsn)
                batch.runs.append(accepted / elapsed)
                publish_rates.append(accepted / (elapsed + drain))
                batch_errors += sum(1 for s in statuses if s != 200) + (total - accepted)
            warm = TicketItems("warm" + uuid.uuid4().hex[:6])
            await _latency(client, warm, 2.0)
            await _drained(stack.dsn)
            for _ in range(args.repeats):
                items = TicketItems(uuid.uuid4().hex[:8])
                started = time.perf_counter()
                samples, errors, lost = await _latency(client, items, seconds)
                abandoned += lost
                achieved.append((len(samples) - lost) / (time.perf_counter() - started))
                for k, v in errors.items():
                    lat_errors[k] = lat_errors.get(k, 0) + v
                p50.runs.append(percentile(samples, 50))
                p99.runs.append(percentile(samples, 99))
                await _drained(stack.dsn)
            connections, pool = client.connections, client.max_connections
    batch.note = (f"{clients} clients x batches of {BATCH}, {total:,} events per run; accepted until every "
                  f"event is also published: {sorted(publish_rates)[len(publish_rates) // 2]:,.0f}/s"
                  + (f"; {batch_errors} items not accepted" if batch_errors else ""))
    p99.note = (f"open loop {seconds:.0f} s per run, latency from the scheduled send time, at most "
                f"{pool} keep-alive connections at a time ({connections} opened in all); answered at "
                f"{sorted(achieved)[len(achieved) // 2]:,.0f} "
                f"req/s (median run)"
                + (f"; {abandoned:,} requests still unanswered {GRACE:.0f} s after the last send were abandoned "
                   "and count with their age then (a lower bound)" if abandoned else "")
                + (f"; non-202 answers: {lat_errors}" if lat_errors else ""))
    return [batch, p50, p99]
