"""The insights service: one consumer group over every business topic, the rollup compactor, the HTTP API.

``build_app(settings)`` also runs in-process (httpx ASGI transport + lifespan, or ``app.state.ctx``
start/stop), as the integration tests do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fastapi import FastAPI

from services.insights import metrics
from services.insights import persistence as db
from services.insights.api import build_router
from services.insights.budget_watch import BudgetWatch
from services.insights.config import Settings
from services.insights.contracts import CONSUMES, RETURNS_CONSUMES
from services.insights.domain.rollups import TABLES
from services.insights.domain.scorecard import load_thresholds
from services.insights.handlers import RollupHandler
from services.insights.plan_api import build_plan_router
from services.insights.returns import OrderRetention, ReturnsHandler
from services.insights.spikes_job import SpikeWatch
from services.insights.strategy_api import build_strategy_router
from services.insights.web import mount_dashboard
from shared.auth import Authenticator
from shared.periodic import PeriodicTask
from shared.regions import catalogue
from shared.service import ServiceContext, create_app


class Compactor(PeriodicTask):
    """Folds the consumers' appended rollup deltas into the rollups, one table per transaction. Safe on
    every replica: a table another replica is compacting is skipped (advisory lock tried, never awaited)."""

    def __init__(self, ctx: ServiceContext, interval: float) -> None:
        super().__init__("insights-compactor", interval, self.run_once)
        self.ctx = ctx

    async def run_once(self) -> int:
        folded = 0
        for table in TABLES:
            async with self.ctx.engine.begin() as conn:
                folded += await db.compact(conn, table)
        async with self.ctx.engine.connect() as conn:
            metrics.DELTA_BACKLOG.set(await db.delta_backlog(conn))
        metrics.COMPACTED_ROWS.inc(folded)
        metrics.LAST_COMPACTION.set(time.time())
        return folded


def build_app(settings: Settings, *, topics: Sequence[str] | None = None, compactor: bool = True,
              returns_topics: Sequence[str] | None = None) -> FastAPI:
    """``topics`` / ``returns_topics`` replace the topic names (tests); with ``topics`` given and no
    ``returns_topics``, the returns consumer is not started (it would read the real topics)."""
    thresholds = load_thresholds(settings.scorecard_thresholds_file)  # a bad file stops the start, named
    ctx = ServiceContext.create("insights", "insights", settings)
    tz_of = {code: catalogue().get(code).timezone for code in catalogue().codes()}
    # A batch's objects are freed by reference counting once it commits (no cycles), so the collector may
    # rest while it is in hand (CollectorPause).
    ctx.add_consumer(settings.consumer_group, list(topics or CONSUMES), RollupHandler(tz_of),
                     max_batch=settings.max_batch, pause_gc=True)
    # Strategy returns (moved from auto_comp, ADR 0020): a group of its own over decisions and later orders.
    if returns_topics is not None or topics is None:
        ctx.add_consumer(settings.returns_consumer_group, list(returns_topics or RETURNS_CONSUMES),
                         ReturnsHandler(), max_batch=settings.max_batch)
    if compactor:
        ctx.components.append(OrderRetention(ctx.engine, settings.return_window_days,
                                             settings.return_retention_margin_days,
                                             settings.return_retention_interval_seconds))
    keeper = Compactor(ctx, settings.compact_interval_seconds)
    if compactor:
        ctx.components.append(keeper)
    app = create_app(ctx, title="Insights", description=(
        "The read side for the people who steer compensation: periodic reports per region (compensation "
        "rate, auto share, cost, time to compensate, proactive share, vouchers, accuracy, buyer feedback, "
        "audit team), root-cause breakdowns, count series for spike detection, budget burn-down."))
    app.state.compactor = keeper
    # Spike detection over the day series: stores alerts once and publishes each through the outbox.
    app.state.spike_watch = spike_watch = SpikeWatch(ctx.engine, settings, on_commit=ctx.relay.wake)
    if compactor:
        ctx.components.append(spike_watch)
    auth = Authenticator(ctx.tokens)
    app.include_router(build_router(ctx.engine, auth))
    app.include_router(build_strategy_router(
        ctx.engine, auth, return_window_days=settings.return_window_days,
        return_min_group=settings.return_min_group,
        return_retention_margin_days=settings.return_retention_margin_days, thresholds=thresholds))
    app.include_router(build_plan_router(ctx.engine, auth, settings))  # issue 15: budget plan, market comparison
    app.state.budget_watch = budget_watch = BudgetWatch(ctx.engine, settings.budget_watch_seconds)
    if compactor:
        ctx.components.append(budget_watch)
    mount_dashboard(app, ctx, settings, thresholds)  # /dashboard: the ops pages (services/insights/web)
    return app
