"""HTTP API: decisions (one and a filtered list), the strategies in force and their reload. (A strategy's
return moved to insights, issue 15: ``GET /v1/strategies/{id}/return`` there.)
Every route is authenticated and region-scoped; errors are RFC 9457 problem details.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Depends`` inside the route
closures' annotations, which string annotations would hide.
"""

import asyncio
import base64
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auto_comp import persistence
from services.auto_comp.domain.model import Strategy
from services.auto_comp.store import StrategyStore
from shared.auth import Authenticator, Principal
from shared.contracts.envelope import AwareDatetime, check_date
from shared.http import Problem, problems
from shared.money import Money
from shared.regions import UnknownRegion, catalogue

READERS = ("ops_admin", "strategy_manager", "finance", "auditor", "senior_auditor", "lead", "service")
RELOADERS = ("strategy_manager", "ops_admin")
REGION = r"^[A-Z]{2,3}$"
TICKET_ID = r"^[A-Za-z0-9._:@\-]{1,128}$"  # shared.contracts.envelope.Identifier
STRATEGY_ID = r"^[a-z0-9_\-]{1,100}$"  # as strategy files name them
OutcomeFilter = Literal["issued", "not_eligible", "capped_by_abuse_guard", "holdout", "budget_denied", "paced",
                        "pending_budget", "reservation_expired"]


def _major(minor: int | None, currency: str) -> str | None:
    return None if minor is None else Money(int(minor), currency).format()


def _mask(code: str | None) -> str | None:
    """A voucher code is a bearer credential for the buyer: the API shows only enough to recognise it."""
    return None if code is None else f"{'*' * (len(code) - 4)}{code[-4:]}"


def _decision(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in (
        "ticket_id", "region", "order_id", "buyer_id", "reason", "outcome", "failed_rule", "detail",
        "strategy_id", "strategy_version", "config_version", "scenario", "tier", "currency", "proposed_minor",
        "issued_minor", "compensation_id", "ticket_occurred_at", "decided_at", "updated_at")}
    out["proposed"] = _major(row.get("proposed_minor"), row["currency"])
    out["issued"] = _major(row.get("issued_minor"), row["currency"])
    return out


def _status(row: dict[str, Any]) -> str | None:
    """An issued voucher the promotion system has since closed shows as closed (redeemed, expired, revoked):
    with the decision's outcome ``issued`` that is what became of it (a reservation that expired before
    anything was issued is outcome ``reservation_expired``)."""
    if row["compensation_status"] == "issued" and row.get("voucher_state"):
        return str(row["voucher_state"])
    return row["compensation_status"]


def _lifecycle(row: dict[str, Any]) -> dict[str, Any] | None:
    if not row.get("voucher_state"):
        return None
    early = row["expired_early_by_seconds"]
    return {"state": row["voucher_state"], "at": row["voucher_closed_at"], "event_id": row["voucher_event_id"],
            # Reported expired before its validity ended: applied, and flagged (shared/vouchers.py).
            "expired_early": early is not None, "expired_early_by_seconds": early}


def _cursor(row: dict[str, Any]) -> str:
    raw = orjson.dumps([row["decided_at"].isoformat(), row["ticket_id"]])
    return base64.urlsafe_b64encode(raw).decode()


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor is handed back by the client, so it is checked like any other input (a forged one could
    otherwise carry an instant or a ticket id no query can take)."""
    try:
        at, ticket = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        instant = datetime.fromisoformat(at)
        if instant.tzinfo is None or not isinstance(ticket, str) or not re.fullmatch(TICKET_ID, ticket):
            raise ValueError("not a cursor")
        check_date(instant.date())
        return instant, ticket
    except (ValueError, TypeError) as exc:
        raise Problem(422, "Request validation failed", "invalid cursor",
                      errors=[{"field": "query.cursor", "message": "not a cursor from a previous page"}]) from exc


def _strategy(s: Strategy) -> dict[str, Any]:
    comp = s.compensation
    return {
        "id": s.id, "version": s.version, "scenario": s.scenario, "regions": sorted(s.regions),
        "currency": s.currency, "enabled": s.enabled, "mode": s.mode.value, "priority": s.priority,
        "effective_from": s.effective_from, "effective_to": s.effective_to,
        "reasons": sorted(r.value for r in s.match.reasons),
        "thresholds": {m.value: {"min": r.min, "max": r.max} for m, r in s.match.thresholds.items()},
        "kind": comp.kind.value, "rounding": comp.rounding.value,
        "tiers": [t.name for t in comp.tiers], "holdout_percent": s.holdout_basis_points / 100,
        "abuse_guard": None if s.abuse_guard is None else {
            "window_days": s.abuse_guard.window_days, "max_count": s.abuse_guard.max_count,
            "max_amount_minor": s.abuse_guard.max_amount.minor if s.abuse_guard.max_amount else None},
        "pacing_allowance_percent": s.budget.pacing_allowance_percent,
        "degrade_to_lower_tier": s.budget.degrade_to_lower_tier, "file": s.source,
    }


def build_router(engine: AsyncEngine, auth: Authenticator, store: StrategyStore) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Caller = Annotated[Principal, Depends(auth)]

    @router.get("/decisions/{ticket_id}", tags=["decisions"],
                summary="The decision of record for a ticket, with its inputs, compensation and shadow trials",
                responses=problems(404, described={404: "No decision for this ticket."}))
    async def get_decision(principal: Caller, ticket_id: Annotated[str, Path(pattern=TICKET_ID)]) -> dict[str, Any]:
        principal.require_role(*READERS)
        async with engine.connect() as conn:
            row = await persistence.get_decision(conn, ticket_id)
        if row is None:
            raise Problem(404, "Not Found", f"no decision for ticket {ticket_id}")
        principal.require_region(row["region"])
        out = _decision(row)
        out["inputs"] = row["inputs"]
        out["compensation"] = None if row["compensation_id"] is None else {
            "compensation_id": row["compensation_id"], "allowance_id": row["allowance_id"],
            "reservation_id": row["reservation_id"],  # only compensations decided before allowances (ADR 0012)
            "status": _status(row), "voucher_lifecycle": _lifecycle(row),
            "kind": row["kind"], "voucher_code": _mask(row["voucher_code"]),
            "valid_until": row["valid_until"] if row["kind"] == "voucher" else None,
            "min_spend_minor": row["min_spend_minor"], "liability_rule": row["liability_rule"],
            "liability_percent": row["shares"], "denial_reason": row["denial_reason"],
            "budget_period": row["budget_period"]}
        out["shadow"] = row["shadow"]
        return out

    @router.get("/decisions", tags=["decisions"], summary="Decisions, newest first, filtered; keyset pages")
    async def list_decisions(
            principal: Caller,
            region: Annotated[str | None, Query(pattern=REGION)] = None,
            outcome: OutcomeFilter | None = None,
            strategy_id: Annotated[str | None, Query(pattern=STRATEGY_ID)] = None,
            since: Annotated[AwareDatetime | None, Query(description="decided_at >= since (RFC 3339, with offset)")]
            = None,
            until: Annotated[AwareDatetime | None, Query(description="decided_at < until (RFC 3339, with offset)")]
            = None,
            limit: Annotated[int, Query(ge=1, le=500)] = 100,
            cursor: Annotated[str | None, Query(max_length=1000, description="next_cursor of the previous page")]
            = None) -> dict[str, Any]:
        principal.require_role(*READERS)
        if region is not None:
            try:
                catalogue().get(region)
            except UnknownRegion:
                raise Problem(422, "Request validation failed", f"unknown region {region}",
                              errors=[{"field": "query.region", "message": "not in the region catalogue"}]) from None
            principal.require_region(region)
            regions = [region]
        else:
            regions = principal.allowed_regions(catalogue().codes())
        async with engine.connect() as conn:
            rows = await persistence.list_decisions(
                conn, regions=regions, outcome=outcome, strategy_id=strategy_id, since=since, until=until,
                after=_parse_cursor(cursor) if cursor else None, limit=limit)
        return {"items": [_decision(r) for r in rows],
                "next_cursor": _cursor(rows[-1]) if len(rows) == limit else None}

    @router.get("/strategies", tags=["strategies"], summary="The strategies in force (in the caller's regions)")
    async def strategies(principal: Caller,
                         region: Annotated[str | None, Query(pattern=REGION)] = None) -> dict[str, Any]:
        principal.require_role(*READERS)
        if region is not None:
            if region not in catalogue():
                raise Problem(422, "Request validation failed", f"unknown region {region}",
                              errors=[{"field": "query.region", "message": "not in the region catalogue"}])
            principal.require_region(region)
        current = store.current
        visible = [s for s in current.strategies
                   if any(principal.can_access(r) for r in s.regions) and (region is None or region in s.regions)]
        return {"config_version": current.version, "strategies": [_strategy(s) for s in visible]}

    @router.post("/admin/strategies/reload", tags=["strategies"],
                 summary="Reload the strategy files; on any error the previous version stays in force",
                 responses=problems(described={422: "The strategy files are invalid; the version in force "
                                                    "stays (``errors`` names file, strategy and field)."}))
    async def reload(principal: Caller) -> dict[str, Any]:
        principal.require_role(*RELOADERS)
        # A reload swaps every region's strategies at once, so it needs a grant for all of them.
        for code in sorted({r for s in store.current.strategies for r in s.regions}):
            principal.require_region(code)
        result = await asyncio.to_thread(store.reload)
        if not result.ok:
            raise Problem(422, "Strategy files are invalid",
                          f"reload failed; version {result.version} stays in force",
                          errors=[{"field": f"{e.file}: {e.strategy or '-'}: {e.field}", "message": e.message}
                                  for e in result.errors], active_version=result.version)
        return {"config_version": result.version, "previous_version": result.previous_version,
                "changed": result.version != result.previous_version,
                "strategies": len(store.current.strategies)}

    return router
