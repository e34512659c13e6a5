"""HTTP API of intake: one single and one batch route per upstream event type.

Bodies are read and validated here rather than by FastAPI, so a batch is judged item by item (one bad
item never rejects the others) and single and batch items get exactly the same checks and error names.
The OpenAPI document still describes every body precisely (see ``openapi.py``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.access import Access
from services.intake.backlog import BacklogGuard
from services.intake.domain.screening import WHOLE_ITEM, Outcome, Status, screen, settle
from services.intake.metrics import (
    BATCH_ITEMS,
    EVENTS_ACCEPTED,
    EVENTS_DUPLICATE,
    EVENTS_REJECTED,
    REQUESTS_REFUSED,
)
from services.intake.openapi import batch_operation, single_operation
from services.intake.persistence import store_events
from shared.auth import Principal
from shared.contracts.envelope import new_event_id
from shared.db import DATABASE_ERRORS
from shared.http import Problem, require_json_body
from shared.logging import correlation_id, log_event
from shared.regions import RegionCatalogue

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    event_type: str
    path: str
    summary: str


ROUTES: tuple[Route, ...] = (
    Route("ticket.opened", "/v1/tickets", "Ticket or order issue (late, lost, damaged, wrong item, ...)"),
    Route("compensation.manual_issued", "/v1/manual-compensations", "Compensation issued by a CS agent"),
    Route("voucher.redeemed", "/v1/vouchers/redeemed", "Voucher redeemed, with the actual discount"),
    Route("voucher.expired", "/v1/vouchers/expired", "Voucher expired unused"),
    Route("voucher.revoked", "/v1/vouchers/revoked", "Voucher revoked"),
    Route("buyer.order_placed", "/v1/buyer-orders", "Later order by a buyer (strategy ROI)"),
    Route("buyer.feedback_given", "/v1/buyer-feedback", "A buyer's CSAT answer or review score (1-5)"),
    Route("order.volume_reported", "/v1/order-volume", "A region's orders and GMV for one local day"),
    Route("compensation.requested", "/v1/compensation-requests",
          "A CS agent's compensation request with the case; judged against the authority limits"),
)
# Event types whose answer repeats the business id the producer chose (the CS tool issues against it).
ANSWER_IDS: dict[str, str] = {"compensation.requested": "request_id"}


class Intake:
    """Screens items, stores the good ones with their outbox rows in one transaction, and says so."""

    def __init__(self, *, engine: AsyncEngine, guard: BacklogGuard, regions: RegionCatalogue,
                 max_skew_seconds: int, max_batch_items: int, retry_after_seconds: int,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.guard = guard
        self.regions = regions
        self.max_skew = timedelta(seconds=max_skew_seconds)
        self.max_batch_items = max_batch_items
        self.retry_after = str(retry_after_seconds)
        self.on_stored = on_stored

    def admit(self, event_type: str) -> None:
        if self.guard.full:
            REQUESTS_REFUSED.labels(event_type, "backlog_full").inc()
            raise Problem(503, "Service Unavailable",
                          f"{self.guard.count} events wait for the broker (limit {self.guard.limit}); "
                          "retry later", headers={"Retry-After": self.retry_after})

    async def submit(self, event_type: str, raw_items: Sequence[Any], principal: Principal) -> list[Outcome]:
        screened = screen(event_type, raw_items, now=datetime.now(UTC), max_skew=self.max_skew,
                          regions=self.regions, may_send_to=principal.can_access)
        stored: dict[str, str | None] = {}
        if screened.candidates:
            try:
                stored = await store_events(self.engine, event_type, screened.candidates, principal.subject[:64],
                                            correlation_id.get() or new_event_id())
            except DATABASE_ERRORS as exc:
                REQUESTS_REFUSED.labels(event_type, "database_unavailable").inc()
                raise Problem(503, "Service Unavailable", "events could not be stored; nothing was accepted",
                              headers={"Retry-After": self.retry_after}) from exc
            new = sum(1 for v in stored.values() if v is None)
            if new:
                self.guard.note_enqueued(new)
                if self.on_stored is not None:
                    self.on_stored()
        outcomes = settle(screened, stored)
        _count(event_type, outcomes)
        # One line per item, under the correlation id its event carries on (its own, or the request's), so
        # an operator follows a ticket from here through auto_comp and the ledger (LOG_EVENTS_PERCENT).
        own = {c.item.event_id: c.item.correlation_id for c in screened.candidates if c.item.correlation_id}
        request_cid = correlation_id.get()
        for o in outcomes:
            log_event(_log, "event received", own.get(o.event_id or "") or request_cid, event_type=event_type,
                      event_id=o.event_id, status=o.status.value, region=o.region, reason=o.reason or None)
        return outcomes


def _count(event_type: str, outcomes: list[Outcome]) -> None:
    tally = Counter((o.status, o.region, o.reason) for o in outcomes)
    for (status, region, reason), n in tally.items():
        if status is Status.ACCEPTED:
            EVENTS_ACCEPTED.labels(event_type, region).inc(n)
        elif status is Status.DUPLICATE:
            EVENTS_DUPLICATE.labels(event_type, region).inc(n)
        else:
            EVENTS_REJECTED.labels(event_type, region, reason).inc(n)


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _read_json(request: Request, event_type: str) -> Any:
    body = await request.body()
    try:
        require_json_body(request, body)
    except Problem:
        REQUESTS_REFUSED.labels(event_type, "media_type").inc()
        raise
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        REQUESTS_REFUSED.labels(event_type, "malformed").inc()
        raise Problem(400, "Bad Request", "the body is not valid JSON",
                      errors=[{"field": "body", "message": str(exc)}]) from exc


def _errors(outcome: Outcome, prefix: str = "") -> list[dict[str, str]]:
    """Fields relative to the item in batches; ``body.<field>`` for single events, like FastAPI's own."""
    return [{"field": prefix.rstrip(".") if prefix and v.field == WHOLE_ITEM else prefix + v.field,
             "message": v.message} for v in outcome.errors]


def _answer_id(item: Any, event_type: str) -> dict[str, Any]:
    """``{"request_id": ...}`` for an accepted compensation request (read from the validated item's body)."""
    name = ANSWER_IDS.get(event_type)
    return {name: item[name]} if name is not None and isinstance(item, dict) else {}


def _single_answer(outcome: Outcome, ids: dict[str, Any] | None = None) -> Response:
    if outcome.status in (Status.ACCEPTED, Status.DUPLICATE):
        return _json({"event_id": outcome.event_id, "status": outcome.status.value, **(ids or {})}, 202)
    if outcome.status is Status.CONFLICT:
        raise Problem(409, "Conflict", f"event id {outcome.event_id} was already received with different "
                      "content", errors=_errors(outcome, "body."))
    if outcome.reason == "forbidden_region":
        raise Problem(403, "Forbidden", outcome.errors[0].message, errors=_errors(outcome, "body."))
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in _errors(outcome, "body.")[:5])
    raise Problem(422, "Request validation failed", detail, errors=_errors(outcome, "body."))


def _batch_answer(outcomes: list[Outcome], items: list[Any], event_type: str) -> Response:
    tally = Counter(o.status for o in outcomes)
    results = []
    for o in outcomes:
        result: dict[str, Any] = {"index": o.index, "event_id": o.event_id, "status": o.status.value}
        if o.status in (Status.ACCEPTED, Status.DUPLICATE):
            result.update(_answer_id(items[o.index], event_type))
        if o.errors:
            result["errors"] = _errors(o)
        results.append(result)
    return _json({"accepted": tally[Status.ACCEPTED], "duplicate": tally[Status.DUPLICATE],
                  "rejected": tally[Status.REJECTED] + tally[Status.CONFLICT], "results": results}, 200)


def _batch_items(body: Any, limit: int, event_type: str) -> list[Any]:
    problem = None
    if not isinstance(body, dict) or "items" not in body:
        problem = ("body.items", "a JSON object with an 'items' list is required")
    elif extra := sorted(set(body) - {"items"}):
        problem = (f"body.{extra[0]}", "unknown field")
    elif not isinstance(body["items"], list):
        problem = ("body.items", "must be a list")
    elif not 1 <= len(body["items"]) <= limit:
        problem = ("body.items", f"must hold between 1 and {limit} items")
    if problem is not None:
        REQUESTS_REFUSED.labels(event_type, "malformed").inc()
        raise Problem(422, "Request validation failed", f"{problem[0]}: {problem[1]}",
                      errors=[{"field": problem[0], "message": problem[1]}])
    return list(body["items"])


class _PlainRoute(APIRoute):
    """Hands the request straight to the endpoint. Intake's endpoints authenticate explicitly and read and
    judge their own bodies, so FastAPI's per-request work (solving dependencies, body and response
    handling) would only cost time: about 5% of a single-event request's CPU. Problems raised still reach
    the app's exception handlers (the route's ASGI wrapper is FastAPI's own)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return cast(Callable[[Request], Coroutine[Any, Any, Response]], self.endpoint)


def router(intake: Intake, access: Access) -> APIRouter:
    api = APIRouter(prefix="", tags=["events"], route_class=_PlainRoute)
    for route in ROUTES:
        _add_routes(api, route, intake, access)
    return api


def _add_routes(api: APIRouter, route: Route, intake: Intake, access: Access) -> None:
    event_type = route.event_type
    authorize = access.for_event_type(event_type)

    async def single(request: Request) -> Response:
        principal = await authorize(request)
        intake.admit(event_type)
        body = await _read_json(request, event_type)
        (outcome,) = await intake.submit(event_type, [body], principal)
        return _single_answer(outcome, _answer_id(body, event_type))

    async def batch(request: Request) -> Response:
        principal = await authorize(request)
        intake.admit(event_type)
        items = _batch_items(await _read_json(request, event_type), intake.max_batch_items, event_type)
        BATCH_ITEMS.labels(event_type).observe(len(items))
        outcomes = await intake.submit(event_type, items, principal)
        return _batch_answer(outcomes, items, event_type)

    name = event_type.replace(".", "_")
    api.add_api_route(route.path, single, methods=["POST"], status_code=202, name=f"submit_{name}",
                      summary=route.summary, **single_operation(event_type))
    api.add_api_route(route.path + "/batch", batch, methods=["POST"], status_code=200, name=f"submit_{name}_batch",
                      summary=f"{route.summary}: batch of up to {intake.max_batch_items}",
                      **batch_operation(event_type, intake.max_batch_items))


def install(app: FastAPI, intake: Intake, access: Access) -> None:
    app.include_router(router(intake, access))
