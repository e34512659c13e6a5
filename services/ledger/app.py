"""The ledger service: two consumer groups over the five input topics, a housekeeper, and the HTTP API.

``build_app(settings)`` runs in-process too (httpx ASGI transport + lifespan, or ``app.state.ctx``
start/stop), which the end-to-end saga tests use. Its consumer groups are ``consumer_groups(settings)``;
``build_app(settings, topics=[...])`` runs one group named ``LEDGER_CONSUMER_GROUP`` over given topics.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from fastapi import FastAPI
from sqlalchemy import text

from services.ledger import handlers, invariants, metrics
from services.ledger.api import build_router
from services.ledger.config import Settings
from services.ledger.contracts import CONSUMES
from shared.auth import Authenticator
from shared.contracts.topics import Topic
from shared.periodic import PeriodicTask
from shared.service import ServiceContext, create_app

log = logging.getLogger(__name__)


class Housekeeper(PeriodicTask):
    """Periodic work: void stale reservations, apply or dead-letter parked events, refresh budget gauges,
    and run the invariant checker. Every step is an ordinary locked transaction, safe on every replica."""

    def __init__(self, ctx: ServiceContext, settings: Settings) -> None:
        super().__init__("ledger-housekeeper", settings.housekeeping_interval_seconds, self.run_once)
        self.ctx, self.settings = ctx, settings
        self.stripe = random.randrange(settings.balance_stripes)
        self._last_invariants = 0.0
        self.last_violations: dict[str, int] = {}
        self._parked_regions: set[str] = set()

    async def run_once(self, *, invariants_now: bool = False) -> None:
        engine, s, now = self.ctx.engine, self.settings, datetime.now(UTC)
        async with engine.begin() as conn:
            await handlers.sweep_reservations(conn, s, self.stripe, now)
        async with engine.begin() as conn:
            await handlers.retry_parked(conn, s, self.stripe, now)
        if s.park_seconds > 0:
            async with engine.begin() as conn:
                await handlers.expire_parked(conn, s, now)
        self.ctx.relay.wake()
        await self.refresh_gauges()
        if invariants_now or time.monotonic() - self._last_invariants >= s.invariant_interval_seconds:
            self._last_invariants = time.monotonic()
            async with engine.connect() as conn:
                self.last_violations = await invariants.check(conn, now, s.voucher_grace_seconds)
            for name, count in self.last_violations.items():
                metrics.INVARIANT_VIOLATIONS.labels(name).set(count)
            metrics.INVARIANT_LAST_RUN.set(time.time())
            if any(self.last_violations.values()):
                log.error("ledger invariant violations", extra={"violations": self.last_violations})

    async def refresh_gauges(self) -> None:
        async with self.ctx.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT region, period, limit_minor, reserved_minor, posted_auto_minor, posted_manual_minor, "
                "breakage_minor, allotted_minor FROM budgets WHERE updated_at > now() - interval '62 days'"))).all()
            parked = (await conn.execute(text(
                "SELECT region, count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(parked_at)), 0) "
                "FROM parked_events GROUP BY region"))).all()
            # Open past their expiry plus the overdue margin: auto_comp (any replica) should have returned them.
            overdue = (await conn.execute(text(
                "SELECT region, count(*) FROM allowances WHERE status = 'open' "
                "AND expires_at + make_interval(secs => :s) < now() GROUP BY region"),
                {"s": self.settings.allowance_overdue_seconds})).all()
        metrics.PARK_WINDOW.set(self.settings.park_seconds)
        waiting = {region: (count, float(age)) for region, count, age in parked}
        # Regions that had waiting events and have none now read 0, not their last value.
        for region in set(self._parked_regions) | set(waiting):
            count, age = waiting.get(region, (0, 0.0))
            metrics.PARKED_NOW.labels(region).set(count)
            metrics.PARKED_OLDEST_AGE.labels(region).set(age)
        self._parked_regions = set(waiting) | set(self._parked_regions)
        for region, period, limit, reserved, auto, manual, breakage, allotted in rows:
            metrics.BUDGET_LIMIT.labels(region, period).set(limit or 0)
            metrics.BUDGET_RESERVED.labels(region, period).set(reserved)
            metrics.BUDGET_ALLOTTED.labels(region, period).set(allotted)
            metrics.BUDGET_POSTED.labels(region, period, "auto").set(auto)
            metrics.BUDGET_POSTED.labels(region, period, "manual").set(manual)
            metrics.BUDGET_BREAKAGE.labels(region, period).set(breakage)
            if limit:
                # a gauge ratio for dashboards only; money itself never leaves integer minor units
                metrics.BUDGET_USED_RATIO.labels(region, period).set((allotted + reserved + auto + manual) / limit)
            metrics.ALLOWANCES_OVERDUE.labels(region).set(0)
        for region, count in overdue:
            metrics.ALLOWANCES_OVERDUE.labels(region).set(count)


def consumer_groups(settings: Settings) -> dict[str, list[str]]:
    """Consumer group -> topics of a ledger process.

    Two groups: allowance requests and returns (latency-sensitive, they lock their budget rows for the
    batch; with the retired per-voucher requests, still drained) never wait behind a batch of charges, and
    charge batches never hold a budget lock for long (ADR 0005, 0012).
    """
    budget = [Topic.BUDGET_ALLOWANCES.value, Topic.BUDGET_REQUESTS.value]
    return {f"{settings.consumer_group}-budget": budget,
            books_group(settings): [t for t in CONSUMES if t not in budget]}


def books_group(settings: Settings) -> str:
    return f"{settings.consumer_group}-books"


def build_app(settings: Settings, *, topics: Sequence[str] | None = None, housekeeping: bool = True) -> FastAPI:
    ctx = ServiceContext.create("ledger", "ledger", settings)
    groups = {settings.consumer_group: list(topics)} if topics is not None else consumer_groups(settings)
    for group, group_topics in groups.items():
        # Charge batches hold no hot lock until their last statements (ADR 0005 point 2), so they can be
        # large; request batches hold their budget rows throughout and keep the common, smaller size.
        batch = settings.books_max_batch if group == books_group(settings) else None
        # The cyclic collector rests while a batch is in hand (CollectorPause, ADR 0005).
        ctx.add_consumer(group, group_topics, handlers.LedgerHandler(settings, group), max_batch=batch,
                         pause_gc=True)
    keeper = Housekeeper(ctx, settings)
    if housekeeping:
        ctx.components.append(keeper)
    app = create_app(ctx, title="Ledger", description=(
        "Double-entry book of record of every compensation: liable-party charges, regional budgets "
        "(reserve, post, void), statements, lineage, breakage."))
    app.state.housekeeper = keeper
    app.include_router(build_router(ctx.engine, Authenticator(ctx.tokens), settings.budget_period,
                                   settings.park_seconds))
    return app
