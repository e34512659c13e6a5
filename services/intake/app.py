"""The intake service: HTTP API over its database and the transactional outbox."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from services.intake.access import Access, ApiKeys
from services.intake.api import Intake, install
from services.intake.backlog import BacklogGuard
from services.intake.config import Settings
from services.intake.housekeeping import IdempotencyPurger
from services.intake.metrics import REQUEST_SECONDS
from services.intake.openapi import SECURITY_SCHEMES, components
from shared.auth import VerifiedTokens
from shared.config import ServiceSettings
from shared.regions import catalogue
from shared.runtime import FreezeHeapAfterStartup
from shared.service import ServiceContext, create_app

DESCRIPTION = """Upstream systems (order system, logistics, CS tooling, promotion system) post their events
here. Every item carries the producer's `event_id`; accepted means stored durably and on its way to the
broker. Authenticate with `X-API-Key` (one key per system, scoped to event types and regions) or a platform
bearer token. Errors are RFC 9457 `application/problem+json` naming each bad field."""


class RequestTimer:
    """Latency of every /v1 request, auth and refusals included, by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)


def build_app(settings: ServiceSettings, *, manage_lifecycle: bool = True) -> FastAPI:
    assert isinstance(settings, Settings)
    ctx = ServiceContext.create("intake", "intake", settings)
    guard = BacklogGuard(ctx.engine, settings.max_outbox_backlog, settings.backlog_check_seconds)
    ctx.components.append(guard)
    purger = IdempotencyPurger(ctx.engine, timedelta(days=settings.idempotency_retention_days),
                               settings.housekeeping_interval_seconds)
    ctx.components.append(purger)
    keys = ApiKeys(ctx.engine, settings.api_key_cache_seconds, settings.api_key_cache_size)
    intake = Intake(engine=ctx.engine, guard=guard, regions=catalogue(),
                    max_skew_seconds=settings.max_clock_skew_seconds, max_batch_items=settings.max_batch_items,
                    retry_after_seconds=settings.retry_after_seconds,
                    on_stored=ctx.relay.wake_soon)
    app = create_app(ctx, title="Compensation platform: intake", description=DESCRIPTION,
                     openapi_tags=[{"name": "events", "description": "Upstream events, single and batch."}],
                     manage_lifecycle=manage_lifecycle, security_schemes=SECURITY_SCHEMES,
                     security=[{"ApiKey": []}, {"Bearer": []}])
    app.state.intake = intake
    app.state.api_keys = keys
    app.state.purger = purger
    tokens = VerifiedTokens(settings.require_token_secret(), settings.auth_token_issuer)
    install(app, intake, Access(tokens, keys))
    ctx.components.append(FreezeHeapAfterStartup())  # last: after everything long-lived exists
    app.add_middleware(RequestTimer)
    _document(app, settings.max_batch_items)
    return app


def _document(app: FastAPI, max_items: int) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components(max_items))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
