"""Claims: queue overview, leasing the next item (the claim is the auditor's heartbeat), reading an item
blind, releasing it and a lead's reassignment.

Blind audit: gold answers and the first verdict of a re-audit are hidden from auditors, who see only items
they hold or audited (leads, senior auditors and ops admins see all in region).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.audit_sampler import persistence as db
from services.audit_sampler.domain import queues as q
from services.audit_sampler.operations.access import (
    AUDIT_ROLES,
    LEAD_ROLES,
    VIEW_ROLES,
    check_region_code,
    is_supervisor,
    region_scope,
    require_region,
    require_role,
)
from services.audit_sampler.operations.errors import Conflict, Forbidden, Invalid, NotFound
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.persistence import approvals as requests_db
from shared.auth import Principal
from shared.regions import catalogue

# Blind audit: the auditor cannot tell a gold or re-audit item from an ordinary one. That hides the sampling
# rationale too: gold and re-audit items carry their own (reasons "gold" or "calibration", always mandatory,
# the lead who seeded it, the first auditor excluded).
_UNBLINDING = ("gold_expected", "parent_item_id", "reasons", "risk_score", "inclusion_probability", "mandatory",
               "created_by", "excluded_auditor")


def now_or(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def not_found(what: str, ident: int) -> NotFound:
    return NotFound(f"{what} {ident} does not exist")


def present_item(item: Mapping[str, Any], principal: Principal) -> dict[str, Any]:
    out = dict(item)
    if not is_supervisor(principal):
        for hidden in _UNBLINDING:
            out.pop(hidden, None)
        out["item_kind"] = "audit"
    return out


async def queue_overview(engine: AsyncEngine, principal: Principal, region: str | None = None, *,
                         runtime: Runtime, now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per configured queue of every region in view: {region, queue, waiting, claimed,
    oldest_age_seconds, sla_breached, sla_hours, daily_capacity}."""
    require_role(principal, *VIEW_ROLES)
    regions = region_scope(principal, region, check_code=True)
    async with engine.connect() as conn:
        rows = await db.queue_stats(conn, regions, now_or(now))
    # Empty queues are worth seeing too: every configured queue of every region in view gets a row.
    shown = set(regions) if regions is not None else (
        {r["region"] for r in rows} | {code for code in runtime.policies.policies if code in catalogue()})
    present = {(r["region"], r["queue"]) for r in rows}
    for code in sorted(shown):
        for queue_rule in runtime.policies.for_region(code).queues:
            if (code, queue_rule.name) not in present:
                rows.append({"region": code, "queue": queue_rule.name, "waiting": 0, "claimed": 0,
                             "oldest_age_seconds": 0.0, "sla_breached": 0})
    for row in rows:
        rule = runtime.policies.for_region(row["region"]).queue(row["queue"])
        row["oldest_age_seconds"] = round(float(row["oldest_age_seconds"]), 3)
        row["sla_hours"] = rule.sla_hours if rule else None
        row["daily_capacity"] = rule.daily_capacity if rule else None
    rows.sort(key=lambda r: (r["region"], r["queue"]))
    return rows


async def claim_next(engine: AsyncEngine, principal: Principal, region: str, queue: str | None = None, *,
                     runtime: Runtime, now: datetime | None = None) -> dict[str, Any] | None:
    """Lease the next item, or None when nothing waits. The item the auditor already holds (in that queue,
    when one is named) comes back first, with its lease renewed; an auditor's concurrent claims take turns,
    so they never lease a second item."""
    require_role(principal, *AUDIT_ROLES)
    check_region_code(region)
    require_region(principal, region)
    policy = runtime.policies.for_region(region)
    if queue is not None and policy.queue(queue) is None:
        raise NotFound(f"no queue {queue} in region {region}",
                       errors=[{"field": "queue", "message": "unknown queue"}])
    at = now_or(now)
    lease_until = q.lease_expiry(at, policy.lease_seconds)
    async with engine.begin() as conn:
        # "Already holds one?" and "lease the next" in one turn per auditor: two claims at once would
        # otherwise both find nothing held and lease two items.
        await db.lock_auditor(conn, region, principal.subject)
        held = await db.held_item(conn, region, principal.subject, at, queue)
        if held is not None:
            # Claiming again is the auditor's heartbeat: the lease on the item in hand starts over.
            renewed = await db.renew_lease(conn, held["id"], principal.subject, lease_until)
            if renewed is not None:
                return present_item(renewed, principal)
        item = await db.claim_next(conn, region, principal.subject, at, lease_until,
                                   [r.name for r in policy.queues], queue)
    return None if item is None else present_item(item, principal)


async def get_item(engine: AsyncEngine, principal: Principal, item_id: int, *, history_limit: int = 10
                   ) -> dict[str, Any]:
    """The item (blind for auditors) with ``verdict``, ``dispute``, ``agent_history``, ``agent_state`` and
    the case it is scored against."""
    require_role(principal, *VIEW_ROLES)
    async with engine.connect() as conn:
        item = await db.item(conn, item_id)
        if item is None:
            raise not_found("item", item_id)
        require_region(principal, item["region"])
        out = present_item(item, principal)
        verdict = await db.verdict_of_item(conn, item_id)
        supervisor = is_supervisor(principal)
        if not supervisor and item["claimed_by"] != principal.subject and (
                verdict is None or verdict["auditor_id"] != principal.subject):
            # Auditors see their own work only: browsing others' verdicts would unblind re-audits.
            raise Forbidden(f"item {item_id} is not claimed or audited by {principal.subject}")
        out["verdict"] = verdict
        # Who disputed the verdict and who resolved it: a reversal of money names both (and the auditor).
        out["dispute"] = None if verdict is None else await db.dispute_of_verdict(conn, verdict["id"])
        if item["item_kind"] == "calibration" and supervisor and item["parent_item_id"]:
            out["first_verdict"] = await db.verdict_of_item(conn, item["parent_item_id"])
        history = await db.agent_history(conn, item["region"], item["agent_id"], history_limit)
        if item["item_kind"] == "calibration" and not supervisor:
            history = [h for h in history if h["compensation_id"] != item["compensation_id"]]
        out["agent_history"] = history
        agent = await db.load_agents(conn, [(item["region"], item["agent_id"])])
        row = agent.get((item["region"], item["agent_id"]))
        out["agent_state"] = row.state.value if row else None
        out.update(await _case_of(conn, item))
    return out


async def _case_of(conn: AsyncConnection, item: Mapping[str, Any]) -> dict[str, Any]:
    """What an auditor scores against beyond the compensation itself: the ticket's facts (the snapshot on
    the compensation, else the one on its request), the request and its approval trail, and the
    issued-vs-approved check. Facts of the case, not sampling reasons: shown to auditors too."""
    comp = item["compensation"]
    request_id = comp.get("request_id")
    request = await requests_db.request(conn, request_id) if request_id else None
    case = comp.get("case") or (request["request"].get("case") if request else None) or {}
    return {"case": case,
            "order_amount": comp.get("order_amount") or (request["request"].get("order_amount") if request else None),
            "request": None if request is None else {k: v for k, v in request.items() if k != "request"},
            "approval_trail": await requests_db.trail(conn, request_id) if request else [],
            "issue_check": await requests_db.issue_check(conn, item["compensation_id"])}


async def release_item(engine: AsyncEngine, principal: Principal, item_id: int) -> dict[str, Any]:
    """Give a claimed item back to its queue (the holder, or a lead)."""
    require_role(principal, *AUDIT_ROLES, "ops_admin")
    async with engine.begin() as conn:
        item = await db.item_for_update(conn, item_id)
        if item is None:
            raise not_found("item", item_id)
        require_region(principal, item["region"])
        if item["status"] != "claimed":
            raise Conflict(f"item {item_id} is {item['status']}, not claimed")
        if item["claimed_by"] != principal.subject and not principal.has_role(*LEAD_ROLES):
            raise Forbidden(f"item {item_id} is held by another auditor")
        await db.set_item_holder(conn, item_id, status="queued", claimed_by=None, lease_until=None,
                                 assigned_to=None)
        updated = await db.item(conn, item_id)
    assert updated is not None
    return present_item(updated, principal)


async def reassign_item(engine: AsyncEngine, principal: Principal, item_id: int, auditor_id: str, *,
                        runtime: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """A lead hands an open item to a named auditor: leased to them now, claimable by no one else."""
    require_role(principal, *LEAD_ROLES)
    if not auditor_id or len(auditor_id) > 128:
        raise Invalid("auditor_id is required",
                      errors=[{"field": "auditor_id", "message": "1 to 128 characters"}])
    at = now_or(now)
    async with engine.begin() as conn:
        item = await db.item_for_update(conn, item_id)
        if item is None:
            raise not_found("item", item_id)
        require_region(principal, item["region"])
        if item["status"] not in ("queued", "claimed"):
            raise Conflict(f"item {item_id} is {item['status']}; only open items move")
        if auditor_id in (item["agent_id"], item["excluded_auditor"]):
            raise Conflict(f"{auditor_id} may not audit this item (own compensation or own first verdict)")
        policy = runtime.policies.for_region(item["region"])
        await db.set_item_holder(conn, item_id, status="claimed", claimed_by=auditor_id,
                                 lease_until=q.lease_expiry(at, policy.lease_seconds), assigned_to=auditor_id)
        updated = await db.item(conn, item_id)
    assert updated is not None
    return present_item(updated, principal)


def lease_remaining(item: Mapping[str, Any], now: datetime | None = None) -> timedelta | None:
    expires = item.get("lease_expires_at")
    return None if expires is None else expires - now_or(now)
