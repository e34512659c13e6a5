"""Disputes: a lead contests a failed verdict on a sampled compensation; a senior auditor who neither raised
it nor gave the verdict upholds or overturns it. An overturn reverses the verdict's ledger correction, tells
insights, and replays the agent's inspection level without the failure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.audit_sampler import metrics
from services.audit_sampler import persistence as db
from services.audit_sampler.domain.verdicts import ATTRIBUTES
from services.audit_sampler.operations import announce
from services.audit_sampler.operations.access import (
    RESOLVE_ROLES,
    SUPERVISOR_ROLES,
    region_scope,
    require_region,
    require_role,
)
from services.audit_sampler.operations.claims import not_found, now_or
from services.audit_sampler.operations.errors import Conflict, Forbidden, Invalid
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.operations.verdicts import correction_event, rebuild_agent_results, snapshot_shares
from shared.auth import Principal
from shared.outbox import enqueue_records


async def dispute_verdict(engine: AsyncEngine, principal: Principal, verdict_id: int, reason: str
                          ) -> dict[str, Any]:
    """The agent's lead contests a failed verdict; a senior auditor then decides."""
    require_role(principal, "lead")
    if not reason or not reason.strip() or len(reason) > 2000:
        raise Invalid("a reason is required",
                      errors=[{"field": "reason", "message": "1 to 2000 characters"}])
    async with engine.begin() as conn:
        verdict = await db.verdict(conn, verdict_id, for_update=True)
        if verdict is None:
            raise not_found("verdict", verdict_id)
        require_region(principal, verdict["region"])
        if verdict["item_kind"] != "sample":
            raise Conflict("only verdicts on sampled compensations can be disputed")
        if verdict["passed"]:
            raise Conflict("the verdict passed the compensation; nothing to dispute")
        if verdict["status"] != "final":
            raise Conflict(f"verdict {verdict_id} is already {verdict['status']}")
        created = await db.insert_dispute(conn, verdict_id, verdict["region"], principal.subject, reason.strip())
        if created is None:
            raise Conflict(f"verdict {verdict_id} was already disputed")
        await db.set_verdict_status(conn, verdict_id, "disputed")
    metrics.DISPUTES.labels(verdict["region"], "raised").inc()
    return created


def same_person(a: str | None, b: str | None) -> bool:
    """People are compared by their names case-insensitively: a bearer token's subject and a workbench
    user name may differ in case for the same person, and separation of duties must err towards refusing."""
    return a is not None and b is not None and a.casefold() == b.casefold()


def resolution_conflict(principal: Principal, dispute: Mapping[str, Any], verdict_auditor: str) -> str | None:
    """Why this person may not resolve this dispute (separation of duties), or None when they may.

    Four eyes: whoever raised a dispute argues one side and the auditor whose verdict is disputed the
    other; neither may decide it, so a money reversal always needs a third person."""
    if same_person(principal.subject, dispute["raised_by"]):
        return "you raised this dispute; it is resolved by someone who neither raised it nor gave the verdict"
    if same_person(principal.subject, verdict_auditor):
        return "the disputed verdict is yours; it is resolved by someone who neither raised the dispute nor " \
               "gave the verdict"
    return None


def may_resolve(principal: Principal, dispute: Mapping[str, Any]) -> bool:
    """For pages: whether to offer this person the resolve buttons of a dispute row (with ``auditor_id``)."""
    return (principal.has_role(*RESOLVE_ROLES) and dispute.get("status") == "open"
            and resolution_conflict(principal, dispute, dispute["auditor_id"]) is None)


async def resolve_dispute(engine: AsyncEngine, principal: Principal, dispute_id: int, outcome: str,
                          note: str | None = None, *, runtime: Runtime,
                          now: datetime | None = None) -> dict[str, Any]:
    """A senior auditor upholds or overturns; an overturn reverses the verdict's correction. The person who
    raised the dispute and the auditor whose verdict is disputed may not resolve it; a reversal names them
    both, and the resolver, in the correction event the ledger records."""
    require_role(principal, *RESOLVE_ROLES)
    if outcome not in ("uphold", "overturn"):
        raise Invalid("outcome must be uphold or overturn",
                      errors=[{"field": "outcome", "message": "uphold or overturn"}])
    rt = runtime
    at = now_or(now)
    async with engine.begin() as conn:
        current = await db.dispute(conn, dispute_id, for_update=True)
        if current is None:
            raise not_found("dispute", dispute_id)
        require_region(principal, current["region"])
        if current["status"] != "open":
            raise Conflict(f"dispute {dispute_id} is already {current['status']}")
        verdict = await db.verdict(conn, current["verdict_id"], for_update=True)
        assert verdict is not None
        conflict = resolution_conflict(principal, current, verdict["auditor_id"])
        if conflict is not None:
            metrics.DISPUTES.labels(current["region"], "refused_conflict").inc()
            raise Forbidden(f"{principal.subject} may not resolve dispute {dispute_id}: {conflict}",
                          errors=[{"field": "dispute_id", "message": conflict}])
        reverse_id = None
        if outcome == "overturn" and verdict["correction_id"]:
            item = await db.item(conn, verdict["item_id"])
            assert item is not None
            reverse_id = f"{verdict['correction_id']}-reversal"
            comp = item["compensation"]
            await enqueue_records(conn, [correction_event(
                correction_id=reverse_id, item=item, audit_id=f"dispute-{dispute_id}", auditor=principal.subject,
                category=verdict["error_category"] or "other", amount_minor=int(comp["amount"]["amount_minor"]),
                shares=snapshot_shares(comp), note=note, corrects=verdict["correction_id"], now=at,
                topic=rt.corrections_topic, dispute_raised_by=current["raised_by"],
                disputed_auditor=verdict["auditor_id"])])
        status = "upheld" if outcome == "uphold" else "overturned"
        await db.set_verdict_status(conn, verdict["id"], status)
        if status == "overturned":
            item = await db.item(conn, verdict["item_id"])
            assert item is not None
            await enqueue_records(conn, [announce.overturned(verdict=verdict, item=item, dispute_id=dispute_id,
                                                             at=at, attributes=ATTRIBUTES)])
        if status == "overturned":
            await rebuild_agent_results(conn, rt.policies.for_region(current["region"]), verdict)
        resolved = await db.resolve_dispute(conn, dispute_id, status, principal.subject, note, reverse_id, at)
    metrics.DISPUTES.labels(current["region"], status).inc()
    if reverse_id:
        metrics.CORRECTIONS.labels(current["region"], "reversal").inc()
    return {**resolved, "auditor_id": verdict["auditor_id"]}


async def list_disputes(engine: AsyncEngine, principal: Principal, region: str | None = None,
                        status: str | None = "open") -> list[dict[str, Any]]:
    require_role(principal, *SUPERVISOR_ROLES)
    regions = region_scope(principal, region)
    async with engine.connect() as conn:
        return await db.disputes(conn, regions, status)
