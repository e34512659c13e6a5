"""The approval stage (issue 14): compensation requests judged against the region's authority limits,
approved at once within them, else queued for a lead or senior auditor with an SLA and escalated when
overdue; every step has a reason, lands in the request's trail and is published for the CS tools and
insights (``compensation.request_decided``). The consumer of requests is ``handlers.RequestHandler``; issued
manual compensations are checked against their request (``judge_issue``) by the manual-compensation consumer.

Limits are judged under advisory locks of the (region, agent, local day) and (region, buyer) keys taken
before the totals are read and held to commit, so two requests racing one agent's daily limit take turns:
the second sees the first's approval and never both pass (docs/audit.md, "Approvals").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.audit_sampler import metrics
from services.audit_sampler import persistence as db
from services.audit_sampler.domain import queues as q
from services.audit_sampler.domain.authority import (
    ApprovedRequest,
    IssueCheck,
    LimitsSet,
    check_issue,
    due,
)
from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.operations import announce
from services.audit_sampler.operations.access import region_scope, require_region, require_role
from services.audit_sampler.operations.errors import Conflict, Forbidden, Invalid, NotFound
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.persistence import approvals as store
from shared.auth import Principal
from shared.contracts import events as ev
from shared.outbox import Record, enqueue_records

log = logging.getLogger(__name__)

SYSTEM = "authority_limits"  # decided_by of automatic steps
SLA_ACTOR = "approval_sla"  # actor of an escalation the SLA triggered
APPROVER_ROLES = ("lead", "senior_auditor")
ESCALATED_ROLES = ("senior_auditor",)  # an escalated request goes up: leads no longer decide it
VIEW_ROLES = ("lead", "senior_auditor", "ops_admin")
MAX_REASON = 2000


# ------------------------------------------------------------------ events


def decided_record(row: Mapping[str, Any], *, trail_id: int, outcome: ev.RequestOutcome, actor: str,
                   automatic: bool, reason: str, at: datetime, due_at: datetime | None = None) -> Record:
    currency = row["currency"]
    approved = row.get("approved_amount_minor") if outcome is ev.RequestOutcome.APPROVED else None
    payload = ev.CompensationRequestDecided(
        request_id=row["request_id"], ticket_id=row["ticket_id"], order_id=row["order_id"],
        buyer_id=row["buyer_id"], agent_id=row["agent_id"], team=row["team"], reason_code=row["reason_code"],
        kind=ev.CompensationKind(row["kind"]),
        requested_amount=ev.PositiveMoney(amount_minor=int(row["amount_minor"]), currency=currency),
        approved_amount=None if approved is None else ev.PositiveMoney(amount_minor=int(approved),
                                                                       currency=currency),
        outcome=outcome, automatic=automatic, decided_by=actor, reason=reason[:MAX_REASON],
        exceeded=list(row.get("exceeded") or []), rule=row.get("rule"), limits_version=row.get("limits_version"),
        requested_at=row["requested_at"], decided_at=at, due_at=due_at)
    return announce.record("compensation.request_decided", payload, region=row["region"], at=at,
                           event_id=f"audit-request-{row['region']}-{trail_id}", causation_id=row.get("event_id"))


def flagged_record(comp: Mapping[str, Any], check: IssueCheck, *, region: str, item_id: int | None,
                   approved_minor: int | None, at: datetime) -> Record:
    amount = comp["amount"]
    payload = ev.CompensationIssueFlagged(
        compensation_id=comp["compensation_id"], request_id=comp.get("request_id"), ticket_id=comp["ticket_id"],
        buyer_id=comp["buyer_id"], agent_id=comp["agent_id"], team=comp["team"], reason_code=comp["reason_code"],
        issued_amount=ev.PositiveMoney.model_validate(amount),
        approved_amount=None if approved_minor is None else ev.PositiveMoney(
            amount_minor=approved_minor, currency=amount["currency"]),
        mismatches=[ev.IssueMismatch(m) for m in check.mismatches], finding=check.finding[:MAX_REASON],
        item_id=item_id, issued_at=comp["occurred_at"])
    digest = hashlib.sha256(comp["compensation_id"].encode()).hexdigest()[:32]
    return announce.record("compensation.issue_flagged", payload, region=region, at=at,
                           event_id=f"audit-issue-flag-{region}-{digest}", causation_id=comp.get("event_id"))


# ------------------------------------------------------------------ issued vs approved


def approved_request(row: Mapping[str, Any]) -> ApprovedRequest:
    return ApprovedRequest(request_id=row["request_id"], buyer_id=row["buyer_id"], status=row["status"],
                           approved_amount_minor=row["approved_amount_minor"])


def judge_issue(comp: Mapping[str, Any], region: str, requests: Mapping[str, Mapping[str, Any]],
                limits_set: LimitsSet) -> IssueCheck | None:
    """The check of one issued compensation (its contract payload as JSON); None while its request is
    unknown here (the request may still be on its way: the check waits for it)."""
    request_id = comp.get("request_id")
    row = requests.get(request_id) if request_id else None
    if request_id and row is None:
        return None
    return check_issue(request_id=request_id, request=approved_request(row) if row else None,
                       buyer_id=comp["buyer_id"], amount_minor=int(comp["amount"]["amount_minor"]),
                       currency=comp["amount"]["currency"], limits=limits_set.for_region(region))


def count_flag(region: str, comp: Mapping[str, Any], check: IssueCheck) -> None:
    for mismatch in check.mismatches:
        metrics.ISSUE_MISMATCHES.labels(region, comp["team"], comp["reason_code"], mismatch).inc()


async def settle_awaiting_checks(conn: AsyncConnection, policies: PolicySet, limits_set: LimitsSet,
                                 request_ids: Sequence[str], now: datetime) -> None:
    """Compensations issued before their request reached us are checked now that it has."""
    waiting = await store.awaiting_checks(conn, request_ids)
    if not waiting:
        return
    requests = await store.requests_by_id(conn, sorted({w["request_id"] for w in waiting}))
    settled: list[dict[str, Any]] = []
    flagged: dict[str, tuple[Mapping[str, Any], IssueCheck, str]] = {}
    for w in waiting:
        comp = w["compensation"]
        check = judge_issue(comp, w["region"], requests, limits_set)
        assert check is not None  # its request is here now
        settled.append({"compensation_id": w["compensation_id"], "request_id": w["request_id"],
                        "region": w["region"], "status": "flagged" if check.flagged else "ok",
                        "mismatches": list(check.mismatches), "finding": check.finding or None,
                        "compensation": comp})
        if check.flagged:
            flagged[w["compensation_id"]] = (comp, check, w["region"])
    await store.record_checks(conn, settled)
    if not flagged:
        return
    item_ids = await store.flag_existing_items(conn, {cid: f[1].finding for cid, f in flagged.items()})
    missing = [cid for cid in flagged if cid not in item_ids]
    population = await store.population_rows(conn, missing)
    items = []
    for cid in missing:
        comp, check, region = flagged[cid]
        pop = population.get(cid)
        if pop is None:
            continue  # not recorded in the population (cannot happen: the check was written with it)
        rule = policies.for_region(region).queue_for(float(pop["risk_score"]), True)
        items.append({"region": region, "queue": rule.name, "compensation_id": cid, "agent_id": comp["agent_id"],
                      "team": comp["team"], "compensation": comp, "risk_score": float(pop["risk_score"]),
                      "inclusion_probability": 1.0, "reasons": "issue_check", "mandatory": True,
                      "local_day": pop["local_day"], "enqueued_at": now,
                      "sla_due_at": q.sla_due(now, rule.sla_hours), "finding": check.finding})
    await store.make_mandatory(conn, missing)
    queued = await db.insert_sample_items(conn, items)
    item_ids.update(queued)
    records = announce.sampled(items, queued)
    for cid, (comp, check, region) in flagged.items():
        row = requests.get(comp.get("request_id") or "")
        records.append(flagged_record(comp, check, region=region, item_id=item_ids.get(cid),
                                      approved_minor=row["approved_amount_minor"] if row else None, at=now))
        count_flag(region, comp, check)
    await enqueue_records(conn, records)


# ------------------------------------------------------------------ approvers


def _reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise Invalid("a reason is required for every decision",
                      errors=[{"field": "reason", "message": "required"}])
    if len(text) > MAX_REASON or "\x00" in text:
        raise Invalid(f"the reason is at most {MAX_REASON} characters",
                      errors=[{"field": "reason", "message": f"at most {MAX_REASON} characters, no NUL"}])
    return text


async def _locked_waiting(conn: AsyncConnection, principal: Principal, request_id: str) -> dict[str, Any]:
    row = await store.request(conn, request_id, for_update=True)
    if row is None:
        raise NotFound(f"request {request_id} does not exist")
    require_region(principal, row["region"])
    if row["status"] not in store.WAITING:
        raise Conflict(f"request {request_id} is already {row['status']}"
                      + (f" by {row['decided_by']}" if row.get("decided_by") else ""))
    if principal.subject == row["agent_id"]:
        raise Forbidden("an agent cannot decide their own request")
    return row


async def decide(engine: AsyncEngine, principal: Principal, request_id: str, *, approve: bool, reason: str | None,
                 amount_minor: int | None = None, now: datetime) -> dict[str, Any]:
    """An approver approves (the requested amount, or less) or rejects a waiting request, with a reason."""
    require_role(principal, *APPROVER_ROLES)
    why = _reason(reason)
    async with engine.begin() as conn:
        row = await _locked_waiting(conn, principal, request_id)
        if row["status"] == "escalated" and not principal.has_role(*ESCALATED_ROLES):
            raise Forbidden(f"request {request_id} was escalated: a senior auditor decides it")
        approved: int | None = None
        if approve:
            approved = int(row["amount_minor"]) if amount_minor is None else amount_minor
            if not 0 < approved <= int(row["amount_minor"]):
                raise Invalid("the approved amount is above zero and at most the requested amount", errors=[
                    {"field": "amount", "message": f"between 1 and {row['amount_minor']} minor units"}])
            # Automatic approvals racing this one see it in their totals.
            await store.lock_keys(conn, [store.agent_day_key(row["region"], row["agent_id"], row["local_day"]),
                                         store.buyer_key(row["region"], row["buyer_id"])])
        status = "approved" if approve else "rejected"
        await store.set_decision(conn, request_id, status=status, approved_amount_minor=approved,
                                 decided_by=principal.subject, reason=why, at=now)
        (trail_id,) = await store.add_trail(conn, [{"request_id": request_id, "action": status,
                                                    "actor": principal.subject, "reason": why,
                                                    "amount_minor": approved, "at": now}])
        row.update(status=status, approved_amount_minor=approved, decided_by=principal.subject,
                   decision_reason=why, decided_at=now)
        outcome = ev.RequestOutcome.APPROVED if approve else ev.RequestOutcome.REJECTED
        await enqueue_records(conn, [decided_record(row, trail_id=trail_id, outcome=outcome, actor=principal.subject,
                                                    automatic=False, reason=why, at=now)])
    labels = (row["region"], row["team"], row["reason_code"])
    metrics.REQUESTS.labels(*labels, status).inc()
    metrics.REQUEST_DECISION_SECONDS.labels(row["region"]).observe(
        max(0.0, (now - row["requested_at"]).total_seconds()))
    if approve:
        metrics.REQUEST_OVERRIDES.labels(*labels).inc()
    return row


async def escalate(engine: AsyncEngine, principal: Principal, request_id: str, *, reason: str | None,
                   runtime: Runtime, now: datetime) -> dict[str, Any]:
    """A lead sends a waiting request up to the senior auditors, with a reason."""
    require_role(principal, *APPROVER_ROLES)
    why = _reason(reason)
    async with engine.begin() as conn:
        row = await _locked_waiting(conn, principal, request_id)
        if row["status"] == "escalated":
            raise Conflict(f"request {request_id} is already escalated")
        await _escalate(conn, row, limits_set=runtime.authority_limits(), actor=principal.subject, reason=why,
                        now=now)
    metrics.REQUEST_ESCALATIONS.labels(row["region"], row["team"], row["reason_code"], "approver").inc()
    return row


async def _escalate(conn: AsyncConnection, row: dict[str, Any], *, limits_set: LimitsSet, actor: str, reason: str,
                    now: datetime) -> None:
    limits = limits_set.for_region(row["region"])
    due_at = due(now, limits.escalation_sla_hours if limits else 8)
    await store.set_escalated(conn, row["request_id"], at=now, due_at=due_at)
    (trail_id,) = await store.add_trail(conn, [{"request_id": row["request_id"], "action": "escalated",
                                                "actor": actor, "reason": reason, "amount_minor": None, "at": now}])
    row.update(status="escalated", escalated_at=now, due_at=due_at)
    await enqueue_records(conn, [decided_record(row, trail_id=trail_id, outcome=ev.RequestOutcome.ESCALATED,
                                                actor=actor, automatic=actor == SLA_ACTOR, reason=reason, at=now,
                                                due_at=due_at)])


async def escalate_overdue(engine: AsyncEngine, now: datetime, *, runtime: Runtime, limit: int = 500) -> int:
    """Escalate every request whose approval SLA has passed (a periodic chore); how many it escalated."""
    async with engine.begin() as conn:
        rows = await store.overdue_awaiting(conn, now, limit)
        for row in rows:
            await _escalate(conn, row, limits_set=runtime.authority_limits(), actor=SLA_ACTOR,
                            reason=f"approval SLA passed at {row['due_at'].isoformat()} with no decision", now=now)
    for row in rows:
        metrics.REQUEST_ESCALATIONS.labels(row["region"], row["team"], row["reason_code"], "sla").inc()
    return len(rows)


async def list_waiting(engine: AsyncEngine, principal: Principal, region: str | None) -> list[dict[str, Any]]:
    require_role(principal, *VIEW_ROLES)
    regions = _regions(principal, region)
    async with engine.connect() as conn:
        return await store.waiting(conn, regions)


async def recent_decisions(engine: AsyncEngine, principal: Principal, region: str | None) -> list[dict[str, Any]]:
    require_role(principal, *VIEW_ROLES)
    async with engine.connect() as conn:
        return await store.recent_decided(conn, _regions(principal, region))


async def get_request(engine: AsyncEngine, principal: Principal, request_id: str) -> dict[str, Any]:
    require_role(principal, *VIEW_ROLES)
    async with engine.connect() as conn:
        row = await store.request(conn, request_id)
        if row is None:
            raise NotFound(f"request {request_id} does not exist")
        require_region(principal, row["region"])
        row["trail"] = await store.trail(conn, request_id)
    return row


def may_decide(principal: Principal, row: Mapping[str, Any]) -> bool:
    if row["status"] not in store.WAITING or principal.subject == row["agent_id"]:
        return False
    if not principal.can_access(row["region"]):
        return False
    roles = ESCALATED_ROLES if row["status"] == "escalated" else APPROVER_ROLES
    return principal.has_role(*roles)


def _regions(principal: Principal, region: str | None) -> list[str] | None:
    return region_scope(principal, region.upper() if region else None, check_code=True)
