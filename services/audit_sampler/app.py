"""The audit_sampler service: consumer of manual compensations, JSON API, workbench and reports."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from services.audit_sampler import metrics
from services.audit_sampler import persistence as db
from services.audit_sampler.api import build_api_router
from services.audit_sampler.config import Settings
from services.audit_sampler.domain.authority import LimitsError, LimitsSet
from services.audit_sampler.domain.policy import PolicyError, PolicySet
from services.audit_sampler.handlers import ManualCompensationHandler, RequestHandler
from services.audit_sampler.operations import approvals, corrective_actions
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.persistence import approvals as requests_db

# The workbench is part of the service, not an option: a broken import of it must stop start-up here rather
# than leave a service that answers the JSON API while its pages are silently missing and readiness is green.
from services.audit_sampler.web import build_reports_router, build_web_router, session_purge_task
from shared.config import ServiceSettings
from shared.http import BEARER_SCHEME
from shared.periodic import PeriodicTask
from shared.service import ServiceContext, create_app

log = logging.getLogger(__name__)


class PolicyReloader:
    """Re-reads changed policy files; a bad file keeps the policies in force and fails readiness."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self.last_error: str | None = None

    async def reload(self) -> None:
        try:
            changed = self.policies.reload()
            self.last_error = None
            if changed:
                metrics.POLICY_RELOADS.labels("changed").inc()
                log.info("sampling policies reloaded", extra={
                    "versions": {r: p.version for r, p in self.policies.policies.items()}})
        except PolicyError as exc:
            self.last_error = str(exc)
            metrics.POLICY_RELOADS.labels("invalid").inc()
            log.error("sampling policy reload failed; previous policies stay in force",
                      extra={"error": str(exc)})

    async def sampling_policies(self) -> None:
        """Readiness check."""
        if self.last_error:
            raise RuntimeError(self.last_error.splitlines()[0])


class LimitsReloader:
    """Re-reads changed authority limit files; a bad file keeps the limits in force and fails readiness."""

    def __init__(self, limits: LimitsSet) -> None:
        self.limits = limits
        self.last_error: str | None = None

    async def reload(self) -> None:
        try:
            changed = self.limits.reload()
            self.last_error = None
            if changed:
                metrics.LIMITS_RELOADS.labels("changed").inc()
                log.info("authority limits reloaded", extra={
                    "versions": {r: lim.version for r, lim in self.limits.limits.items()}})
        except LimitsError as exc:
            self.last_error = str(exc)
            metrics.LIMITS_RELOADS.labels("invalid").inc()
            log.error("authority limits reload failed; previous limits stay in force", extra={"error": str(exc)})

    async def authority_limits(self) -> None:
        """Readiness check."""
        if self.last_error:
            raise RuntimeError(self.last_error.splitlines()[0])


async def refresh_gauges(ctx: ServiceContext, policies: PolicySet) -> None:
    now = datetime.now(UTC)
    async with ctx.engine.connect() as conn:
        queues = await db.queue_stats(conn, None, now)
        quality = await db.quality_gauges(conn, now - timedelta(days=30))
        waiting = await requests_db.waiting_gauges(conn, now)
        actions = await requests_db.action_gauges(conn, now)
    metrics.REQUESTS_WAITING.clear()
    metrics.REQUESTS_OVERDUE.clear()
    for row in waiting:
        metrics.REQUESTS_WAITING.labels(row["region"], "awaiting_approval").set(row["awaiting"])
        metrics.REQUESTS_WAITING.labels(row["region"], "escalated").set(row["escalated"])
        metrics.REQUESTS_OVERDUE.labels(row["region"]).set(row["overdue"])
    metrics.ACTIONS_OPEN.clear()
    metrics.ACTIONS_OVERDUE.clear()
    for row in actions:
        metrics.ACTIONS_OPEN.labels(row["region"]).set(row["open"])
        metrics.ACTIONS_OVERDUE.labels(row["region"]).set(row["overdue"])
    for row in queues:
        labels = (row["region"], row["queue"])
        rule = policies.for_region(row["region"]).queue(row["queue"])
        if rule is not None:  # AuditQueueOverSla compares the oldest item's age with this
            metrics.QUEUE_SLA_SECONDS.labels(*labels).set(rule.sla_hours * 3600)
        metrics.QUEUE_DEPTH.labels(*labels).set(row["waiting"])
        metrics.QUEUE_CLAIMED.labels(*labels).set(row["claimed"])
        metrics.QUEUE_OLDEST_AGE.labels(*labels).set(float(row["oldest_age_seconds"]))
        metrics.QUEUE_SLA_BREACHED.labels(*labels).set(row["sla_breached"])
    for row in quality:
        for gauge, key in ((metrics.ESTIMATED_ACCURACY, "estimated_accuracy"),
                           (metrics.GOLD_ACCURACY, "gold_accuracy"),
                           (metrics.CALIBRATION_AGREEMENT, "calibration_agreement")):
            if row[key] is not None:
                gauge.labels(row["region"]).set(float(row[key]))


def build_app(settings: ServiceSettings) -> FastAPI:
    assert isinstance(settings, Settings)
    ctx = ServiceContext.create("audit_sampler", "audit_sampler", settings)
    policies = PolicySet.load(settings.policy_dir)
    limits = LimitsSet.load(settings.limits_dir)
    # One runtime for the API, the pages and the chores; the reloaders change its policies and limits in place.
    runtime = Runtime(policies, settings.corrections_topic, limits)
    clock = lambda: datetime.now(UTC)  # noqa: E731
    handler = ManualCompensationHandler(lambda: runtime.policies, clock, lambda: limits)
    ctx.add_consumer(settings.consumer_group, [settings.manual_topic], handler)
    ctx.add_consumer(settings.requests_consumer_group, [settings.requests_topic],
                     RequestHandler(lambda: limits, lambda: runtime.policies, clock))
    reloader = PolicyReloader(policies)
    ctx.components.append(PeriodicTask("policy-reload", settings.policy_reload_seconds, reloader.reload))
    limits_reloader = LimitsReloader(limits)
    ctx.components.append(PeriodicTask("limits-reload", settings.policy_reload_seconds, limits_reloader.reload))
    ctx.readiness.append(limits_reloader.authority_limits)

    async def escalate() -> None:
        await approvals.escalate_overdue(ctx.engine, datetime.now(UTC), runtime=runtime)

    ctx.components.append(PeriodicTask("approval-escalation", settings.escalation_check_seconds, escalate))

    async def publish_effects() -> None:
        await corrective_actions.publish_effects(ctx.engine, datetime.now(UTC))

    ctx.components.append(PeriodicTask("corrective-action-effects", settings.escalation_check_seconds,
                                       publish_effects))
    ctx.components.append(PeriodicTask("audit-gauges", settings.metrics_refresh_seconds,
                                    lambda: refresh_gauges(ctx, runtime.policies)))
    ctx.readiness.append(reloader.sampling_policies)
    app = create_app(
        ctx, title="audit_sampler",
        description="Samples manual compensations for quality audit; audit queues, verdicts, disputes, "
                    "calibration and corrections for the ledger.",
        openapi_tags=[{"name": "audit", "description": "Queues, claims, verdicts, disputes, gold items."}],
        security_schemes={**BEARER_SCHEME, "WorkbenchSession": {
            "type": "apiKey", "in": "cookie", "name": "audit_workbench_session",
            "description": "A workbench session (reports only): sign in at /workbench."}})
    app.state.audit_runtime = runtime  # the policies and limits this app serves (tests and tools read them here)
    app.include_router(build_api_router(ctx, runtime))
    app.include_router(build_web_router(ctx, runtime))
    app.include_router(build_reports_router(ctx))
    # Sessions live in the workbench's table, so their purge comes with the workbench.
    ctx.components.append(session_purge_task(ctx, settings.session_purge_seconds))
    return app
