"""Fault injection (``make chaos``; ``--smoke`` in ``make test``): the real services under a seeded mixed load
while processes are SIGKILLed, the broker is frozen and PostgreSQL restarts; then drain and check that
nothing was lost, doubled or overspent (issue 13, ADR 0022).

The world is private: an embedded PostgreSQL cluster in a temporary folder and a Tansu broker, both on free
ports, never the ``make up`` ports or data. Two replicas of every service (intake behind a client that
fails over like a load balancer; auto_comp, ledger, audit_sampler and insights as consumer-group members)
run as separate ``serve`` processes with one consumer process each.

Load, drawn from ``random.Random(seed)`` (the seed is printed; ``--seed`` repeats a run's choices, not its
timing): tickets of several reasons in SG and US, manual compensations, redemptions, expiries and
revocations of issued vouchers, later buyer orders, re-sends of items already accepted (same event id),
upstream-style retries (a refused or unanswered request is sent again until answered) and audit verdicts,
a share of them correcting the amount or finding the compensation unwarranted (a ledger correction).

Faults: SIGKILL of a random service process every few seconds (restarted on the same port), a broker
freeze (SIGSTOP ... SIGCONT) longer than the allowance lease, the grant re-send timeout and the consumer
session timeout, and PostgreSQL restarts (one immediate, SIGQUIT: crash recovery; the rest fast). The cluster
acknowledges a commit only once its WAL is written (``embedded.CRASH_SAFE_PG_SETTINGS``), as a production
server does: with the tests' ``synchronous_commit=off`` a crash loses commits already acknowledged (an item
intake answered 202 for vanished, and a ticket looked lost although no service dropped it).

Checks (each a row of the table; any failure exits 1): budgets sampled over HTTP during the run never above
their limit (automatic spend and outstanding allowances); after the drain (every group's stored offsets at
the exact topic ends of ``shared.kafka.lag``, outboxes empty): every accepted item in intake's idempotency
record, one final decision per ticket, one live charge per issued compensation, manual compensations charged
once and each in the audit population (sampled or recorded not sampled), each verdict's correction applied
once, ``check-invariants`` clean, no dead letters, no parked events, no valid item refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.stack import Service, Stack
from shared import embedded
from shared.auth import TokenService
from shared.contracts.topics import ALL_TOPICS
from shared.kafka.lag import end_offsets, group_lag

IN_FLIGHT = 32  # upstream items sent and not yet answered, at most
SERVICES = ("intake", "auto_comp", "ledger", "audit_sampler", "insights")
SCHEMAS = SERVICES  # each service's tables live in the schema of its name
REGIONS = {"SG": ("SGD", "Asia/Singapore"), "US": ("USD", "America/New_York")}
REASONS = ("late_delivery", "late_delivery", "not_received", "damaged", "missing_parts", "wrong_item",
           "seller_cancelled")
# Short enough that a freeze outlasts them, long enough not to churn on a two-core machine.
TIMEOUTS = {"LEDGER_ALLOWANCE_LEASE_SECONDS": "8", "AUTO_COMP_GRANT_TIMEOUT_SECONDS": "4",
            "CONSUMER_SESSION_TIMEOUT_MS": "6000", "CONSUMER_PROCESSES": "1"}


# The restarts crash PostgreSQL (SIGQUIT): its commits must be durable, as in production, or the run
# reports a loss that is only the harness's own database forgetting acknowledged commits.
PG_SETTINGS = embedded.CRASH_SAFE_PG_SETTINGS


@dataclass
class Plan:
    seed: int
    duration: float  # seconds of load and faults
    kills: int  # SIGKILLs spread over the duration
    rate: float  # upstream items per second
    freeze: float  # seconds the broker stays frozen
    pg_restarts: int
    drain_timeout: float
    budget_minor: dict[str, int]

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
        if args.smoke:
            plan = cls(seed, 45.0, 10, 6.0, 10.0, 1, 90.0, {"SG": 60_000, "US": 80_000})
        else:
            plan = cls(seed, 480.0, 110, 8.0, 30.0, 2, 300.0, {"SG": 400_000, "US": 500_000})
        if args.duration:
            plan.duration = args.duration
        if args.kills is not None:
            plan.kills = args.kills
        return plan


@dataclass
class Sent:
    """What the load generator had acknowledged by intake: what the platform owes it."""

    tickets: dict[str, str] = field(default_factory=dict)  # ticket id -> region
    manual: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # comp id -> (region, buyer, minor)
    items: list[tuple[str, bytes]] = field(default_factory=list)  # (path, body) for re-sends
    lifecycle: set[str] = field(default_factory=set)  # compensation ids redeemed, expired or revoked
    buyers: dict[str, str] = field(default_factory=dict)  # buyer -> region
    verdicts: dict[int, str] = field(default_factory=dict)  # audit item -> what we scored
    tally: Tally[str] = field(default_factory=Tally)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Chaos:
    def __init__(self, plan: Plan, folder: Path, log: Any) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.folder = folder
        self.pg_folder = folder / "pg"
        self.say = log
        self.sent = Sent()
        self.kills: Tally[str] = Tally()
        self.faults: list[str] = []
        self.budget_samples = 0
        self.budget_violations: list[str] = []
        self.refused: list[str] = []
        self.stack: Stack | None = None
        self.token = ""
        self.auditor = ""
        self.period: dict[str, str] = {}
        self._restarting: set[str] = set()
        self._event_no = 0
        self._vouchers: list[tuple[str, str, str, int, str]] = []
        self._vouchers_due = 0.0
        self._last_behind = ""
        self._last_said = 0.0
        self._stop = asyncio.Event()
        self._pg_down = asyncio.Event()

    # ------------------------------------------------------------------ world

    @property
    def s(self) -> Stack:
        assert self.stack is not None
        return self.stack

    def instances(self, name: str) -> list[Service]:
        return [svc for key, svc in self.s.services.items() if svc.name == name and key not in self._restarting]

    async def start_world(self, stack: Stack) -> None:
        self.stack = stack
        await asyncio.gather(*(asyncio.to_thread(stack.cli, name, "migrate") for name in SERVICES))
        await asyncio.gather(*(self._start(name, f"{name}-{i}") for name in SERVICES for i in (1, 2)))
        tokens = TokenService(stack.env()["AUTH_TOKEN_SECRET"])
        self.token = tokens.issue("chaos-upstream", ["service"], ["*"], ttl_seconds=7200)
        self.auditor = tokens.issue("chaos-auditor", ["auditor", "lead", "finance"], ["*"], ttl_seconds=7200)
        async with httpx.AsyncClient(timeout=10.0) as client:
            for region, minor in self.plan.budget_minor.items():
                self.period[region] = await self._set_budget(client, region, minor)

    async def _set_budget(self, client: httpx.AsyncClient, region: str, minor: int) -> str:
        """Finance sets this month's budget (and the next one's, near a month's end) over the ledger's API."""
        from shared.periods import period_of
        from shared.regions import region as region_of

        now = datetime.now(UTC)
        periods = sorted({period_of(now + timedelta(minutes=m), region_of(region), "month") for m in (0, 60)})
        for period in periods:
            r = await client.put(f"{self.instances('ledger')[0].base}/v1/budgets/{region}/{period}",
                                 headers={"Authorization": f"Bearer {self.auditor}"},
                                 json={"limit_minor": minor, "currency": REGIONS[region][0], "reason": "chaos run"})
            if r.status_code >= 300:
                raise RuntimeError(f"setting the {region} budget failed: {r.status_code} {r.text[:300]}")
        return periods[0]

    async def _start(self, name: str, instance: str, port: int | None = None) -> None:
        """Start (or restart) one replica; a start that fails (PostgreSQL restarting, the broker frozen)
        is tried again until it succeeds or the run ends."""
        for attempt in range(1, 21):
            try:
                await self.s.start(name, instance=instance, migrate=False, port=port, wait=120.0, **TIMEOUTS)
                return
            except RuntimeError as exc:
                if attempt == 20:
                    raise
                self.faults.append(f"{name} start failed (retried)")
                self.note(f"{instance} start failed, retrying: {str(exc).splitlines()[0][:160]}")
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ faults

    async def killer(self) -> None:
        """SIGKILL ``kills`` random replicas spread over the run, each restarted on its port at once."""
        if self.plan.kills <= 0:
            return
        gap = self.plan.duration / (self.plan.kills + 1)
        restarts: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        # On a fixed schedule (kill i near (i + 1) * gap): a slow restart or a busy machine delays a kill,
        # never drops one; the load goes on until the last kill is done.
        for i in range(self.plan.kills):
            due = started + (i + 1 + self.rng.uniform(-0.4, 0.4)) * gap
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            live = [k for k, svc in self.s.services.items() if k not in self._restarting and svc.proc.poll() is None]
            if not live:
                continue
            victim = self.rng.choice(sorted(live))
            svc = self.s.services[victim]
            with contextlib.suppress(ProcessLookupError):
                os.kill(svc.pid, signal.SIGKILL)
            await asyncio.to_thread(svc.proc.wait)
            self.kills[svc.name] += 1
            self.note(f"SIGKILL {victim} (kill {sum(self.kills.values())})")
            self._restarting.add(victim)
            task = asyncio.create_task(self._restart(svc.name, victim, svc.port))
            restarts.add(task)
            task.add_done_callback(restarts.discard)
        if restarts:
            await asyncio.gather(*restarts)

    async def _restart(self, name: str, instance: str, port: int) -> None:
        try:
            await self._start(name, instance, port)
        finally:
            self._restarting.discard(instance)

    async def freezer(self, broker_pid: int) -> None:
        """Freeze the broker once, a third into the run."""
        await self._sleep(self.plan.duration / 3)
        self.faults.append(f"broker frozen {self.plan.freeze:.0f} s")
        self.note(f"broker frozen (SIGSTOP) for {self.plan.freeze:.0f} s")
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.plan.freeze)
        finally:
            os.kill(broker_pid, signal.SIGCONT)

    async def pg_restarter(self) -> None:
        """Restart PostgreSQL ``pg_restarts`` times: the first immediately (SIGQUIT: crash recovery on start),
        the others with a fast shutdown."""
        for n in range(self.plan.pg_restarts):
            await self._sleep(self.plan.duration * (0.55 + 0.3 * n) / max(1, self.plan.pg_restarts))
            if self._stop.is_set():
                return
            pid = embedded.postgres_pid(self.pg_folder)
            self._pg_down.set()
            started = time.monotonic()
            try:
                if n == 0 and pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGQUIT)
                    await asyncio.to_thread(_wait_gone, pid, 30.0)
                    how = "immediate"
                else:
                    await asyncio.to_thread(embedded.stop_postgres, self.pg_folder)
                    how = "fast"
                await asyncio.sleep(2.0)
                await asyncio.to_thread(embedded.start_postgres, self.pg_folder,
                                        settings=PG_SETTINGS)
            finally:
                self._pg_down.clear()
            self.faults.append(f"PostgreSQL restarted ({how} shutdown)")
            self.note(f"PostgreSQL restarted ({how} shutdown, down {time.monotonic() - started:.1f} s)")

    def note(self, line: str) -> None:
        self.say(f"chaos +{time.monotonic() - self.t0:5.0f} s: {line}")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    # ------------------------------------------------------------------ load

    async def post(self, client: httpx.AsyncClient, path: str, body: bytes, *, resend: bool = False) -> bool:
        """POST to an intake replica like an upstream system: on no answer or a 5xx, wait and send the same
        item again (to whichever replica answers) until intake answers. True when it was accepted."""
        backoff = 0.2
        while True:
            replicas = self.instances("intake")
            if replicas:
                svc = self.rng.choice(replicas)
                try:
                    r = await client.post(f"{svc.base}{path}", content=body, headers={
                        "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
                except httpx.HTTPError:
                    self.sent.tally["upstream retries (no answer or 5xx)"] += 1
                else:
                    if r.status_code < 300:
                        self.sent.tally["items re-sent (same event id)" if resend else "items accepted"] += 1
                        return True
                    if r.status_code < 500 and r.status_code != 429:
                        self.refused.append(f"{path} {r.status_code}: {r.text[:200]}")
                        return False
                    self.sent.tally["upstream retries (no answer or 5xx)"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 3.0)

    def _item(self, region: str, **payload: Any) -> dict[str, Any]:
        self._event_no += 1  # unique per item (a re-send repeats an item's bytes, never builds a new one)
        return {"event_id": f"E-{self.tag}-{self._event_no}", "region": region,
                "occurred_at": datetime.now(UTC).isoformat(), **payload}

    async def loader(self, client: httpx.AsyncClient) -> None:
        """Upstream systems at ``rate`` items per second, each item in its own task, at most ``IN_FLIGHT``
        unanswered at a time (an upstream's bounded sender: while intake is down or frozen, sending waits
        instead of piling up retries that would starve this process, and the faults' schedule with it)."""
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(IN_FLIGHT)
        n = 0
        t0 = time.monotonic()
        while not self._stop.is_set():
            n += 1
            await slots.acquire()
            task = asyncio.create_task(self._one(client, n))
            task.add_done_callback(lambda _: slots.release())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await self._sleep(max(0.0, t0 + n / self.plan.rate - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, n: int) -> None:
        roll = self.rng.random()
        self.sent.tally["events"] += 1
        if roll < 0.45 or not self.sent.buyers:
            await self._ticket(client, n)
        elif roll < 0.60:
            await self._manual(client, n)
        elif roll < 0.75:
            await self._voucher_event(client, n)
        elif roll < 0.88:
            await self._buyer_order(client, n)
        elif self.sent.items:
            path, body = self.rng.choice(self.sent.items)
            await self.post(client, path, body, resend=True)

    async def _send(self, client: httpx.AsyncClient, path: str, item: dict[str, Any]) -> bool:
        body = json.dumps(item).encode()
        ok = await self.post(client, path, body)
        if ok:
            self.sent.items.append((path, body))
        return ok

    async def _ticket(self, client: httpx.AsyncClient, n: int) -> None:
        region = self.rng.choice(sorted(REGIONS))
        currency = REGIONS[region][0]
        reason = self.rng.choice(REASONS)
        tid, buyer = f"T-{self.tag}-{n}", f"B-{self.tag}-{self.rng.randrange(40)}"
        now = datetime.now(UTC)
        promised = now - timedelta(days=self.rng.randint(5, 9))
        payload: dict[str, Any] = {
            "ticket_id": tid, "order_id": f"O-{self.tag}-{n}", "buyer_id": buyer, "seller_id": f"S-{n % 7}",
            "carrier_id": f"C-{n % 3}", "reason": reason,
            "order_amount": {"amount_minor": self.rng.randint(3_000, 12_000), "currency": currency},
            "order_placed_at": (promised - timedelta(days=6)).isoformat(),
            "dispatch_due_at": (promised - timedelta(days=4)).isoformat(),
            "shipped_at": (promised - timedelta(days=4, hours=-2)).isoformat(),
            "promised_delivery_at": promised.isoformat()}
        if reason != "not_received":
            payload["delivered_at"] = (promised + timedelta(days=self.rng.randint(1, 4))).isoformat()  # past
        if reason in ("damaged", "missing_parts", "wrong_item"):
            payload["evidence"] = [{"kind": "photo", "uri": f"https://evidence.example/{tid}.jpg"}]
        if await self._send(client, "/v1/tickets", self._item(region, **payload)):
            self.sent.tickets[tid] = region
            self.sent.buyers[buyer] = region

    async def _manual(self, client: httpx.AsyncClient, n: int) -> None:
        cid, buyer = f"MC-{self.tag}-{n}", self.rng.choice(sorted(self.sent.buyers))
        region = self.sent.buyers[buyer]
        currency = REGIONS[region][0]
        amount = self.rng.randint(200, 2_000)
        seller_part = amount * self.rng.randint(0, 10) // 10
        shares = (("seller", f"S-{n % 7}", seller_part), ("carrier", f"C-{n % 3}", amount - seller_part))
        liability = [{"party": {"type": kind, "id": who}, "amount_minor": minor}
                     for kind, who, minor in shares if minor > 0]
        item = self._item(
            region, compensation_id=cid, ticket_id=f"T-{self.tag}-m{n}", order_id=f"O-{self.tag}-m{n}",
            buyer_id=buyer, seller_id=f"S-{n % 7}", carrier_id=f"C-{n % 3}", agent_id=f"A-{n % 5}",
            team=f"{region.lower()}-tier1", kind="voucher", amount={"amount_minor": amount, "currency": currency},
            reason_code=self.rng.choice(["late_delivery", "damaged_item", "goodwill"]), liability=liability,
            voucher_code=f"V-{self.tag}-{n}",
            valid_until=(datetime.now(UTC) + timedelta(days=30)).isoformat())
        if await self._send(client, "/v1/manual-compensations", item):
            self.sent.manual[cid] = (region, buyer, amount)

    async def _voucher_event(self, client: httpx.AsyncClient, n: int) -> None:
        issued = await self._issued_vouchers()
        fresh = [v for v in issued if v[0] not in self.sent.lifecycle]
        if not fresh:
            return
        cid, region, buyer, minor, currency = self.rng.choice(fresh)
        roll = self.rng.random()
        if roll < 0.6:
            path, extra = "/v1/vouchers/redeemed", {
                "order_id": f"O-{self.tag}-r{n}",
                "discount": {"amount_minor": max(1, minor * self.rng.randint(3, 10) // 10), "currency": currency}}
        elif roll < 0.85:
            path, extra = "/v1/vouchers/expired", {}
        else:
            path, extra = "/v1/vouchers/revoked", {"reason": "fraud_suspected"}
        self.sent.lifecycle.add(cid)
        await self._send(client, path, self._item(region, compensation_id=cid, buyer_id=buyer, **extra))

    async def _issued_vouchers(self) -> list[tuple[str, str, str, int, str]]:
        """Issued automatic vouchers (as the promotion system would know them), read from auto_comp at most
        every two seconds."""
        if time.monotonic() < self._vouchers_due:
            return self._vouchers
        self._vouchers_due = time.monotonic() + 2.0
        self._vouchers = await self._read_issued_vouchers() or self._vouchers
        return self._vouchers

    async def _read_issued_vouchers(self) -> list[tuple[str, str, str, int, str]]:
        try:
            conn = await asyncpg.connect(self.s.dsn, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return []
        try:
            rows = await conn.fetch(
                "SELECT compensation_id, region, buyer_id, issued_minor, currency FROM auto_comp.decisions "
                "WHERE outcome = 'issued' AND ticket_id LIKE $1 ORDER BY ticket_id", f"T-{self.tag}-%")
            return [(r[0], r[1], r[2], int(r[3]), r[4]) for r in rows]
        except (OSError, asyncpg.PostgresError):
            return []
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _buyer_order(self, client: httpx.AsyncClient, n: int) -> None:
        buyer = self.rng.choice(sorted(self.sent.buyers))
        region = self.sent.buyers[buyer]
        await self._send(client, "/v1/buyer-orders", self._item(
            region, order_id=f"O-{self.tag}-b{n}", buyer_id=buyer,
            amount={"amount_minor": self.rng.randint(1_000, 20_000), "currency": REGIONS[region][0]}))

    # ------------------------------------------------------------------ auditors and budget watch

    async def auditors(self, client: httpx.AsyncClient) -> None:
        """Auditors claim sampled manual compensations and score them: most pass, some correct the amount,
        some find it unwarranted (each correction must reach the ledger exactly once)."""
        while not self._stop.is_set():
            await self._sleep(0.7)
            replicas = self.instances("audit_sampler")
            if not replicas:
                continue
            svc = self.rng.choice(replicas)
            region = self.rng.choice(sorted(REGIONS))
            headers = {"Authorization": f"Bearer {self.auditor}"}
            try:
                r = await client.post(f"{svc.base}/v1/queues/{region}/claim", headers=headers)
                if r.status_code != 200:
                    continue
                item = r.json()
                await self._score(client, item, headers)
            except (httpx.HTTPError, ValueError):
                self.sent.tally["auditor retries"] += 1

    async def _score(self, client: httpx.AsyncClient, item: dict[str, Any], headers: dict[str, str]) -> None:
        ok = {a: True for a in ("warranted", "amount_correct", "kind_correct", "liable_party_correct",
                                "evidence_sufficient", "policy_compliant", "not_duplicate")}
        amount = int(item["compensation"]["amount"]["amount_minor"])
        roll = self.rng.random()
        body: dict[str, Any]
        if roll < 0.5 or amount < 2:
            body, what = {"attributes": ok, "passed": True}, "passed"
        elif roll < 0.8:
            body = {"attributes": {**ok, "amount_correct": False}, "passed": False,
                    "error_category": "wrong_amount", "corrected_amount_minor": amount // 2}
            what = "amount corrected"
        else:
            body = {"attributes": {**ok, "warranted": False}, "passed": False, "error_category": "not_warranted"}
            what = "not warranted"
        backoff = 0.3
        for _ in range(30):
            replicas = self.instances("audit_sampler")
            if replicas:
                svc = self.rng.choice(replicas)
                try:
                    r = await client.post(f"{svc.base}/v1/items/{item['id']}/verdict", json=body, headers=headers)
                except httpx.HTTPError:
                    self.sent.tally["auditor retries"] += 1
                else:
                    if r.status_code in (201, 409):  # 409: our earlier attempt was recorded, its answer lost
                        self.sent.verdicts[int(item["id"])] = what
                        self.sent.tally[f"verdicts: {what}"] += 1
                        return
                    if r.status_code < 500:
                        self.refused.append(f"verdict on item {item['id']} {r.status_code}: {r.text[:200]}")
                        return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 3.0)

    async def budget_watch(self, client: httpx.AsyncClient) -> None:
        """Sample every budget over the ledger's API during the run: automatic spend plus outstanding
        allowances never above the limit (manual compensations are always charged; they only shrink what
        later grants may give, so they are not part of this bound)."""
        headers = {"Authorization": f"Bearer {self.auditor}"}
        while not self._stop.is_set():
            await self._sleep(0.5)
            for region, period in self.period.items():
                replicas = self.instances("ledger")
                if not replicas:
                    continue
                try:
                    r = await client.get(f"{self.rng.choice(replicas).base}/v1/budgets/{region}/{period}",
                                         headers=headers)
                except httpx.HTTPError:
                    continue
                if r.status_code != 200:
                    continue
                self._budget_sample(r.json())

    def _budget_sample(self, b: dict[str, Any]) -> None:
        self.budget_samples += 1
        spent = int(b["allotted_minor"]) + int(b["reserved_minor"]) + int(b["posted_auto_minor"])
        if b["limit_minor"] is not None and spent > int(b["limit_minor"]):
            self.budget_violations.append(f"{b['region']} {b['period']}: {spent} > {b['limit_minor']}")

    # ------------------------------------------------------------------ drain and checks

    async def drain(self) -> tuple[bool, float]:
        """Wait until every consumer group's stored offsets reach the exact topic ends and the outboxes
        are empty, twice in a row one second apart (a relay or a keeper may add work meanwhile)."""
        started = time.monotonic()
        deadline = started + self.plan.drain_timeout
        quiet = 0
        while time.monotonic() < deadline:
            try:
                behind = await self._behind()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                behind = f"unreadable: {exc}"
            if not behind:
                quiet += 1
                if quiet >= 3:
                    return True, time.monotonic() - started
            else:
                quiet = 0
                if behind != self._last_behind and time.monotonic() - self._last_said > 15:
                    self.note(f"draining: {behind}")
                    self._last_said = time.monotonic()
                self._last_behind = behind
            await asyncio.sleep(1.0)
        return False, time.monotonic() - started

    async def _behind(self) -> str:
        ends = await end_offsets(self.s.bootstrap, topics=ALL_TOPICS)
        conn = await asyncpg.connect(self.s.dsn, timeout=5)
        try:
            out: list[str] = []
            for schema in SCHEMAS:
                pending = await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox")
                if pending:
                    out.append(f"{schema} outbox {pending}")
                rows = await conn.fetch(f"SELECT consumer_group, topic, partition, next_offset "
                                        f"FROM {schema}.consumer_offsets")
                groups: dict[str, dict[tuple[str, int], int]] = {}
                for r in rows:
                    groups.setdefault(r[0], {})[(r[1], r[2])] = r[3]
                for group, stored in groups.items():
                    topics = {t for t, _ in stored}
                    lag = group_lag({tp: e for tp, e in ends.items() if tp.topic in topics}, stored)
                    total = sum(lag.values())
                    if total:
                        out.append(f"{group} lag {total}")
            waiting = await conn.fetchval(
                "SELECT count(*) FROM auto_comp.decisions WHERE outcome = 'pending_budget' AND ticket_id LIKE $1",
                f"T-{self.tag}-%")
            if waiting:
                out.append(f"{waiting} tickets pending budget")
            return "; ".join(out)
        finally:
            await conn.close()

    async def checks(self) -> list[Check]:
        conn = await asyncpg.connect(self.s.dsn, timeout=10)
        try:
            return [
                await self._intake_check(conn),
                *await self._decision_checks(conn),
                *await self._charge_checks(conn),
                await self._correction_check(conn),
                Check("budgets never over their limit (sampled during the run)",
                      self.budget_samples > 0 and not self.budget_violations,
                      f"{self.budget_samples} samples, {len(self.budget_violations)} over"
                      + (f": {self.budget_violations[:3]}" if self.budget_violations else "")),
                await self._budget_end_check(conn),
                await self._dead_letter_check(conn),
                Check("no valid item refused", not self.refused,
                      f"{len(self.refused)} refused" + (f": {self.refused[:3]}" if self.refused else "")),
                await self._invariants(),
            ]
        finally:
            await conn.close()

    async def _intake_check(self, conn: asyncpg.Connection) -> Check:
        """Every item intake answered 2xx for is in its idempotency record (kept 30 days), so a later gap is
        told apart at once: a missing decision of a ticket intake kept is a consumer's, of one it did not,
        intake's or its database's (an acknowledged commit lost)."""
        accepted = {json.loads(body)["event_id"] for _, body in self.sent.items}
        kept = {r[0] for r in await conn.fetch(
            "SELECT event_id FROM intake.received_events WHERE event_id = ANY($1::text[])", list(accepted))}
        lost = sorted(accepted - kept)
        return Check("every accepted item recorded by intake", not lost,
                     f"{len(accepted)} accepted, {len(lost)} not recorded" + (f": {lost[:5]}" if lost else ""))

    async def _decision_checks(self, conn: asyncpg.Connection) -> list[Check]:
        rows = await conn.fetch("SELECT ticket_id, outcome FROM auto_comp.decisions WHERE ticket_id LIKE $1",
                                f"T-{self.tag}-%")
        decided = Tally(r[0] for r in rows)
        outcomes = Tally(r[1] for r in rows)
        missing = [t for t in self.sent.tickets if t not in decided]
        doubled = [t for t, c in decided.items() if c > 1]
        unknown = [t for t in decided if t not in self.sent.tickets]
        pending = outcomes.get("pending_budget", 0)
        return [Check("one final decision per accepted ticket",
                      not missing and not doubled and not unknown and not pending,
                      f"{len(self.sent.tickets)} tickets, {len(decided)} decided "
                      f"({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))}); missing {len(missing)}, "
                      f"doubled {len(doubled)}, unknown {len(unknown)}, pending {pending}"
                      + (f"; missing {sorted(missing)[:5]}" if missing else ""))]

    async def _charge_checks(self, conn: asyncpg.Connection) -> list[Check]:
        issued = {r[0] for r in await conn.fetch(
            "SELECT compensation_id FROM auto_comp.decisions WHERE outcome = 'issued' AND ticket_id LIKE $1",
            f"T-{self.tag}-%")}
        live = {r[0]: (r[1], int(r[2]), r[3]) for r in await conn.fetch(
            "SELECT c.compensation_id, c.origin, c.current_amount_minor, ("
            "  SELECT count(*) FROM ledger.journal_transfers t WHERE t.compensation_id = c.compensation_id "
            "  AND t.line_no = 1 AND t.kind = 'charge' AND NOT EXISTS (SELECT 1 FROM ledger.journal_transfers r "
            "  WHERE r.reverses_tx_id = t.tx_id AND r.line_no = 1)) "
            "FROM ledger.compensations c WHERE c.compensation_id = ANY($1::text[])",
            [*issued, *self.sent.manual])}

        def wrong(ids: set[str] | dict[str, Any]) -> list[str]:
            return [c for c in ids if c not in live or live[c][2] != (1 if live[c][1] > 0 else 0)]

        auto_wrong, manual_wrong = wrong(issued), wrong(self.sent.manual)
        population = {r[0] for r in await conn.fetch(
            "SELECT compensation_id FROM audit_sampler.population WHERE compensation_id = ANY($1::text[])",
            list(self.sent.manual))}
        sampled = {r[0] for r in await conn.fetch(
            "SELECT DISTINCT compensation_id FROM audit_sampler.audit_items WHERE item_kind = 'sample' "
            "AND compensation_id = ANY($1::text[])", list(self.sent.manual))}
        unrecorded = [c for c in self.sent.manual if c not in population]
        return [
            Check("one live charge per issued automatic compensation", not auto_wrong,
                  f"{len(issued)} issued, {len(auto_wrong)} without exactly one live charge"
                  + (f": {auto_wrong[:3]}" if auto_wrong else "")),
            Check("manual compensations charged once", not manual_wrong,
                  f"{len(self.sent.manual)} accepted, {len(manual_wrong)} without exactly one live charge"
                  + (f": {manual_wrong[:3]}" if manual_wrong else "")),
            Check("manual compensations sampled or recorded not sampled", not unrecorded,
                  f"{len(sampled)} sampled, {len(population) - len(sampled)} recorded not sampled, "
                  f"{len(unrecorded)} unrecorded"),
        ]

    async def _correction_check(self, conn: asyncpg.Connection) -> Check:
        verdicts = await conn.fetch(
            "SELECT v.correction_id, v.compensation_id, v.corrected_amount_minor FROM audit_sampler.verdicts v "
            "WHERE v.correction_id IS NOT NULL AND v.compensation_id LIKE $1", f"MC-{self.tag}-%")
        applied = Tally(r[0] for r in await conn.fetch(
            "SELECT correction_id FROM ledger.corrections WHERE compensation_id LIKE $1", f"MC-{self.tag}-%"))
        # The compensation stands at the amount of its latest correction (a re-audit may correct it again).
        latest = {r[0]: (r[1], int(r[2])) for r in await conn.fetch(
            "SELECT compensation_id, last_correction_id, current_amount_minor FROM ledger.compensations "
            "WHERE compensation_id LIKE $1 AND last_correction_id IS NOT NULL", f"MC-{self.tag}-%")}
        bad = [r[0] for r in verdicts if applied.get(r[0]) != 1 or (
            latest.get(r[1], ("", 0))[0] == r[0] and latest[r[1]][1] != int(r[2] or 0))]
        stray = [c for c in applied if c not in {r[0] for r in verdicts}]
        return Check("corrections applied once", not bad and not stray,
                     f"{len(verdicts)} verdicts with a correction, {sum(applied.values())} applied; "
                     f"{len(bad)} not applied exactly once or at another amount, {len(stray)} stray"
                     + (f": {bad[:3]}" if bad else ""))

    async def _budget_end_check(self, conn: asyncpg.Connection) -> Check:
        rows = await conn.fetch("SELECT region, period, limit_minor, allotted_minor + reserved_minor + "
                                "posted_auto_minor FROM ledger.budgets WHERE limit_minor IS NOT NULL")
        over = [f"{r[0]} {r[1]}" for r in rows if r[3] > r[2]]
        return Check("budgets within their limit at the end", not over,
                     "; ".join(f"{r[0]} {r[1]}: {r[3]:,} of {r[2]:,}" for r in rows))

    async def _dead_letter_check(self, conn: asyncpg.Connection) -> Check:
        counts = {s: int(await conn.fetchval(f"SELECT count(*) FROM {s}.dead_letters")) for s in SCHEMAS}
        parked = int(await conn.fetchval("SELECT count(*) FROM ledger.parked_events"))
        return Check("no dead letters, no parked events", not any(counts.values()) and not parked,
                     ", ".join(f"{s} {c}" for s, c in counts.items()) + f"; parked {parked}")

    async def _ready(self, client: httpx.AsyncClient) -> Check:
        """Every replica ready again after the faults (a runner left not ready would say why)."""
        problems: list[str] = []
        for key, svc in sorted(self.s.services.items()):
            try:
                r = await client.get(f"{svc.base}/readyz")
            except httpx.HTTPError as exc:
                problems.append(f"{key}: {type(exc).__name__}")
                continue
            if r.status_code != 200:
                problems.append(f"{key}: {r.status_code} {r.text[:150]}")
        return Check("every replica ready after the drain", not problems,
                     f"{len(self.s.services)} replicas" + (f"; {problems[:3]}" if problems else ""))

    async def _invariants(self) -> Check:
        try:
            out = await asyncio.to_thread(self.s.cli, "ledger", "check-invariants")
        except RuntimeError as exc:
            return Check("check-invariants clean", False, str(exc).splitlines()[-1][:300])
        last = out.strip().splitlines()[-1] if out.strip() else ""
        return Check("check-invariants clean", True, last[:200])

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        plan = self.plan
        self.tag = f"{plan.seed:x}"
        self.say(f"chaos: seed {plan.seed} (repeat with --seed {plan.seed}); {plan.duration:.0f} s of load at "
                 f"{plan.rate:g} items/s, {plan.kills} kills, broker frozen {plan.freeze:.0f} s, "
                 f"{plan.pg_restarts} PostgreSQL restart(s)")
        self.t0 = t0 = time.monotonic()
        url = await asyncio.to_thread(embedded.start_postgres, self.pg_folder, settings=PG_SETTINGS)
        try:
            async with Stack(url, None, "chaos", partitions=4, env_extra=dict(TIMEOUTS)) as stack:
                self.logs = stack._dir
                await self.start_world(stack)
                assert stack._broker is not None
                self.note(f"{len(stack.services)} service processes up; load and faults for {plan.duration:.0f} s")
                async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0)) as client:
                    killer = asyncio.create_task(self.killer())
                    workers = [killer, *(asyncio.create_task(w) for w in (
                        self.loader(client), self.auditors(client), self.budget_watch(client),
                        self.freezer(stack._broker.pid), self.pg_restarter()))]
                    load_started = time.monotonic()
                    await self._sleep(plan.duration)
                    await killer  # every kill made and restarted, under load
                    self._stop.set()
                    await asyncio.gather(*workers)
                    load_seconds = time.monotonic() - load_started
                    self.note("load stopped; draining")
                    for svc in list(stack.services.values()):
                        if svc.proc.poll() is not None:
                            self.faults.append(f"{svc.name} found dead at the end")
                    drained, drain_seconds = await self.drain()
                    self._stop.clear()
                    watch = asyncio.create_task(self.budget_watch(client))  # one more sample after the drain
                    await asyncio.sleep(1.0)
                    self._stop.set()
                    await watch
                    self.note(f"drained: {drained}; checking")
                    results = await self.checks()
                    results.append(await self._ready(client))
                if os.environ.get("BENCH_KEEP_LOGS"):
                    stack._db = ""  # --keep: the database stays for a post-mortem (start_postgres on pg/)
                    results.insert(0, Check("drained (stored offsets at the exact topic ends, outboxes empty)",
                                            drained, f"{drain_seconds:.0f} s"
                                            + ("" if drained else f"; still: {self._last_behind}")))
        finally:
            await asyncio.to_thread(embedded.stop_postgres, self.pg_folder)
        self.say(self.table(results, load_seconds, time.monotonic() - t0))
        return 0 if all(c.ok for c in results) else 1

    def table(self, results: list[Check], load_seconds: float, total: float) -> str:
        lines = [f"\nchaos result (seed {self.plan.seed}): load {load_seconds:.0f} s, wall {total:.0f} s", "",
                 "| load | count |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in sorted(self.sent.tally.items()) if k != "events"]
        lines += [f"| tickets accepted | {len(self.sent.tickets):,} |",
                  f"| manual compensations accepted | {len(self.sent.manual):,} |",
                  f"| voucher lifecycle events | {len(self.sent.lifecycle):,} |", "",
                  "| fault | count |", "|---|---:|"]
        lines += [f"| SIGKILL {k} | {v} |" for k, v in sorted(self.kills.items())]
        lines += [f"| SIGKILL total | {sum(self.kills.values())} |"]
        for fault, n in sorted(Tally(self.faults).items()):
            lines.append(f"| {fault} | {n} |")
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'ok' if c.ok else 'VIOLATED'} | {c.detail} |" for c in results]
        return "\n".join(lines)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while embedded.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="repeat a run's random choices (printed at the start)")
    parser.add_argument("--smoke", action="store_true", help="the short form run by make test (< 3 minutes)")
    parser.add_argument("--duration", type=float, help="seconds of load and faults (overrides the form's)")
    parser.add_argument("--kills", type=int, help="SIGKILLs over the run (overrides the form's)")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data folder (path printed)")
    args = parser.parse_args(argv)
    plan = Plan.of(args)
    folder = Path(tempfile.mkdtemp(prefix="chaos-"))
    if args.keep:
        os.environ["BENCH_KEEP_LOGS"] = "1"  # bench.stack keeps the services' and broker's logs
    try:
        code = asyncio.run(Chaos(plan, folder, lambda line: print(line, flush=True)).run())
    finally:
        if args.keep:
            print(f"chaos: logs and data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
