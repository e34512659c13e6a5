"""The audit operations, shared by the JSON API (api.py) and the workbench pages (web/).

Every function takes the service engine and the acting ``Principal`` first, checks the principal's role
and region grant itself (raising ``shared.http.Problem`` 403/404/409/422), runs in one transaction, and
returns plain dicts ready for JSON or a template:

- ``queue_overview(engine, principal, region=None)`` -> list of {region, queue, waiting, claimed,
  oldest_age_seconds, sla_breached, sla_hours, daily_capacity}
- ``claim_next(engine, principal, region, queue=None)`` -> item dict or None (nothing waiting); the item
  the auditor already holds (in that queue, when one is named) comes back first, with its lease renewed;
  an auditor's concurrent claims take turns, so they never lease a second item
- ``get_item(engine, principal, item_id)`` -> item dict (+ ``verdict``, ``agent_history``,
  ``agent_state``); blind: gold answers and the first verdict of a re-audit are hidden from auditors,
  who see only items they hold or audited (leads, senior auditors and ops admins see all in region)
- ``submit_verdict(engine, principal, item_id, VerdictInput)`` -> verdict dict (with ``correction_id``)
- ``release_item(engine, principal, item_id)`` -> item dict
- ``reassign_item(engine, principal, item_id, auditor_id)`` -> item dict (lead)
- ``dispute_verdict(engine, principal, verdict_id, reason)`` -> dispute dict (lead)
- ``resolve_dispute(engine, principal, dispute_id, "uphold" | "overturn", note=None)`` -> dispute dict
  (senior_auditor)
- ``list_disputes(engine, principal, region=None, status="open")`` -> list of dispute dicts
- ``seed_gold_item(engine, principal, GoldItemInput)`` -> item dict (lead); ``gold_item_errors(GoldItemInput)``
  lists what it would refuse, without writing

Each also takes ``runtime=`` (policies, correction topic) and ``now=`` for tests; by default it uses the
process runtime that ``configure()`` installed (app.py does that at start).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.audit_sampler import announce, metrics
from services.audit_sampler import approval_store as requests_db
from services.audit_sampler import persistence as db
from services.audit_sampler.contracts import (
    CORRECTION_EVENT,
    SOURCE,
    AuditCorrectionIssued,
    LiabilityShare,
    LiableParty,
    ManualCompensationIssued,
    NonNegativeMoney,
    PartyType,
)
from services.audit_sampler.domain import queues as q
from services.audit_sampler.domain.policy import Policy, PolicySet, QueueRule
from services.audit_sampler.domain.sampling import InspectionLevel, record_audit, replay_levels, uniform_draw
from services.audit_sampler.domain.verdicts import (
    ATTRIBUTES,
    Share,
    VerdictError,
    VerdictInput,
    correction_for,
    gold_agreement,
    parse_expected,
    validate,
)
from shared.auth import Principal
from shared.contracts.registry import make_envelope, region_currency_errors
from shared.contracts.topics import Topic
from shared.http import Problem
from shared.kafka.producer import record_for
from shared.outbox import enqueue_records
from shared.regions import UnknownRegion, catalogue

AUDIT_ROLES = ("auditor", "senior_auditor", "lead")
VIEW_ROLES = (*AUDIT_ROLES, "ops_admin")
LEAD_ROLES = ("lead", "ops_admin")
RESOLVE_ROLES = ("senior_auditor",)
RESULTS_KEPT = 50  # audit outcomes remembered per agent (enough for every switching/boost window)


@dataclass
class Runtime:
    policies: PolicySet
    corrections_topic: str = Topic.AUDIT_CORRECTIONS.value


@dataclass
class _Holder:
    runtime: Runtime | None = field(default=None)


_process = _Holder()


def configure(runtime: Runtime) -> None:
    _process.runtime = runtime


def current_runtime() -> Runtime:
    if _process.runtime is None:
        from services.audit_sampler.config import Settings

        settings = Settings()
        _process.runtime = Runtime(PolicySet.load(settings.policy_dir), settings.corrections_topic)
    return _process.runtime


@dataclass(frozen=True)
class GoldItemInput:
    """A known-answer item: a compensation as an agent issued it, and the verdict it deserves."""

    region: str
    compensation: Mapping[str, Any]  # ManualCompensationIssued fields
    expected: Mapping[str, bool]  # every attribute
    queue: str | None = None


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _not_found(what: str, ident: int) -> Problem:
    return Problem(404, "Not Found", f"{what} {ident} does not exist")


def _check_region_code(region: str) -> None:
    try:
        catalogue().get(region)
    except UnknownRegion:
        raise Problem(404, "Not Found", f"unknown region {region}",
                      errors=[{"field": "region", "message": "not in the region catalogue"}]) from None


def _is_supervisor(principal: Principal) -> bool:
    return principal.has_role("lead", "senior_auditor", "ops_admin")


def _present_item(item: dict[str, Any], principal: Principal) -> dict[str, Any]:
    out = dict(item)
    if not _is_supervisor(principal):
        # Blind audit: the auditor cannot tell a gold or re-audit item from an ordinary one. That hides
        # the sampling rationale too: gold and re-audit items carry their own (reasons "gold" or
        # "calibration", always mandatory, the lead who seeded it, the first auditor excluded).
        for hidden in _UNBLINDING:
            out.pop(hidden, None)
        out["item_kind"] = "audit"
    return out


_UNBLINDING = ("gold_expected", "parent_item_id", "reasons", "risk_score", "inclusion_probability", "mandatory",
               "created_by", "excluded_auditor")


async def queue_overview(engine: AsyncEngine, principal: Principal, region: str | None = None, *,
                         runtime: Runtime | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    principal.require_role(*VIEW_ROLES)
    rt = runtime or current_runtime()
    if region is not None:
        _check_region_code(region)
        principal.require_region(region)
        regions: list[str] | None = [region]
    else:
        regions = None if "*" in principal.regions else sorted(principal.regions)
    async with engine.connect() as conn:
        rows = await db.queue_stats(conn, regions, _now(now))
    # Empty queues are worth seeing too: every configured queue of every region in view gets a row.
    shown = set(regions) if regions is not None else (
        {r["region"] for r in rows} | {code for code in rt.policies.policies if code in catalogue()})
    present = {(r["region"], r["queue"]) for r in rows}
    for code in sorted(shown):
        for queue_rule in rt.policies.for_region(code).queues:
            if (code, queue_rule.name) not in present:
                rows.append({"region": code, "queue": queue_rule.name, "waiting": 0, "claimed": 0,
                             "oldest_age_seconds": 0.0, "sla_breached": 0})
    for row in rows:
        rule = rt.policies.for_region(row["region"]).queue(row["queue"])
        row["oldest_age_seconds"] = round(float(row["oldest_age_seconds"]), 3)
        row["sla_hours"] = rule.sla_hours if rule else None
        row["daily_capacity"] = rule.daily_capacity if rule else None
    rows.sort(key=lambda r: (r["region"], r["queue"]))
    return rows


async def claim_next(engine: AsyncEngine, principal: Principal, region: str, queue: str | None = None, *,
                     runtime: Runtime | None = None, now: datetime | None = None) -> dict[str, Any] | None:
    """Lease the next item (or return the one this auditor already holds in the region)."""
    principal.require_role(*AUDIT_ROLES)
    _check_region_code(region)
    principal.require_region(region)
    policy = (runtime or current_runtime()).policies.for_region(region)
    if queue is not None and policy.queue(queue) is None:
        raise Problem(404, "Not Found", f"no queue {queue} in region {region}",
                      errors=[{"field": "queue", "message": "unknown queue"}])
    at = _now(now)
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
                return _present_item(renewed, principal)
        item = await db.claim_next(conn, region, principal.subject, at, lease_until,
                                   [r.name for r in policy.queues], queue)
    return None if item is None else _present_item(item, principal)


async def get_item(engine: AsyncEngine, principal: Principal, item_id: int, *, history_limit: int = 10
                   ) -> dict[str, Any]:
    principal.require_role(*VIEW_ROLES)
    async with engine.connect() as conn:
        item = await db.item(conn, item_id)
        if item is None:
            raise _not_found("item", item_id)
        principal.require_region(item["region"])
        out = _present_item(item, principal)
        verdict = await db.verdict_of_item(conn, item_id)
        supervisor = _is_supervisor(principal)
        if not supervisor and item["claimed_by"] != principal.subject and (
                verdict is None or verdict["auditor_id"] != principal.subject):
            # Auditors see their own work only: browsing others' verdicts would unblind re-audits.
            raise Problem(403, "Forbidden", f"item {item_id} is not claimed or audited by {principal.subject}")
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


def _snapshot_shares(compensation: Mapping[str, Any]) -> list[Share]:
    return [Share(s["party"]["type"], s["party"].get("id"), int(s["amount_minor"]))
            for s in compensation.get("liability", [])]


def _shares_json(shares: Sequence[Share]) -> list[dict[str, Any]]:
    return [{"party": {"type": s.party_type, "id": s.party_id}, "amount_minor": s.amount_minor} for s in shares]


def _correction_event(*, correction_id: str, item: Mapping[str, Any], audit_id: str, auditor: str,
                      category: str, amount_minor: int, shares: Sequence[Share], note: str | None,
                      corrects: str | None, now: datetime, topic: str, dispute_raised_by: str | None = None,
                      disputed_auditor: str | None = None) -> tuple[str, bytes, bytes, Any]:
    comp = item["compensation"]
    currency = comp["amount"]["currency"]
    payload = AuditCorrectionIssued(
        correction_id=correction_id, compensation_id=item["compensation_id"], corrects_correction_id=corrects,
        audit_id=audit_id, auditor_id=auditor, buyer_id=comp["buyer_id"], error_category=category,
        corrected_amount=NonNegativeMoney(amount_minor=amount_minor, currency=currency),
        corrected_liability=[LiabilityShare(party=LiableParty(type=PartyType(s.party_type), id=s.party_id),
                                            amount_minor=s.amount_minor) for s in shares],
        note=note, dispute_raised_by=dispute_raised_by, disputed_auditor_id=disputed_auditor)
    # Caused by the manual compensation it corrects, so a trace links the two (gold items have none).
    envelope = make_envelope(CORRECTION_EVENT, payload, source=SOURCE, region=item["region"], occurred_at=now,
                             event_id=correction_id, causation_id=comp.get("event_id"))
    _, key, value, headers = record_for(envelope)
    return topic, key, value, headers


async def submit_verdict(engine: AsyncEngine, principal: Principal, item_id: int, verdict: VerdictInput, *,
                         runtime: Runtime | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Record the verdict; a money error enqueues the ledger correction in the same transaction."""
    principal.require_role(*AUDIT_ROLES)
    rt = runtime or current_runtime()
    at = _now(now)
    async with engine.begin() as conn:
        item = await db.item_for_update(conn, item_id)
        if item is None:
            raise _not_found("item", item_id)
        principal.require_region(item["region"])
        if item["status"] == "done":
            raise Problem(409, "Conflict", f"item {item_id} already has a verdict")
        if item["status"] != "claimed" or item["claimed_by"] != principal.subject:
            raise Problem(409, "Conflict", f"item {item_id} is not claimed by {principal.subject}; claim it first")
        policy = rt.policies.for_region(item["region"])
        comp = item["compensation"]
        amount = int(comp["amount"]["amount_minor"])
        try:
            validate(verdict, original_amount_minor=amount, categories=policy.error_categories)
        except VerdictError as exc:
            raise Problem(422, "Invalid verdict", str(exc),
                          errors=[{"field": f, "message": m} for f, m in exc.errors]) from exc
        gold_correct = None
        if item["item_kind"] == "gold":
            agreement = gold_agreement(item["gold_expected"], verdict.attributes)
            gold_correct = all(agreement.values())
        correction = None
        if item["item_kind"] == "sample":
            correction = correction_for(verdict, original_amount_minor=amount, currency=comp["amount"]["currency"],
                                        original_liability=_snapshot_shares(comp))
        verdict_id = await db.insert_verdict(conn, {
            "item_id": item_id, "item_kind": item["item_kind"], "region": item["region"],
            "compensation_id": item["compensation_id"], "agent_id": item["agent_id"], "team": item["team"],
            "reason_code": comp["reason_code"], "currency": comp["amount"]["currency"], "amount_minor": amount,
            "auditor_id": principal.subject, "attributes": dict(verdict.attributes), "passed": verdict.passed,
            "error_category": verdict.error_category, "note": verdict.note,
            "corrected_amount_minor": None if correction is None else correction.amount_minor,
            "corrected_liability": None if correction is None else _shares_json(correction.liability),
            "gold_correct": gold_correct, "created_at": at})
        correction_id = None
        if correction is not None:
            correction_id = f"audit-correction-{item['region']}-{verdict_id}"
            await db.set_correction_id(conn, verdict_id, correction_id)
            await enqueue_records(conn, [_correction_event(
                correction_id=correction_id, item=item, audit_id=f"verdict-{verdict_id}",
                auditor=principal.subject, category=verdict.error_category or "other",
                amount_minor=correction.amount_minor, shares=correction.liability, note=verdict.note,
                corrects=None, now=at, topic=rt.corrections_topic)])
        await db.complete_item(conn, item_id, at)
        if item["item_kind"] == "sample":
            await enqueue_records(conn, [announce.verdict(
                verdict_id=verdict_id, item=item, auditor=principal.subject, passed=verdict.passed,
                attributes=verdict.attributes, error_category=verdict.error_category,
                corrected_amount_minor=None if correction is None else correction.amount_minor, at=at)])
            await _record_agent_result(conn, policy, item, verdict.passed)
            await _maybe_calibrate(conn, policy, item, principal.subject, at)
        elif item["item_kind"] == "calibration" and item["parent_item_id"]:
            primary = await db.verdict_of_item(conn, item["parent_item_id"])
            if primary is not None:
                await db.insert_calibration_pair(conn, item["region"], primary, verdict_id, principal.subject)
        saved = await db.verdict(conn, verdict_id)
    outcome = "pass" if verdict.passed else "fail"
    metrics.VERDICTS.labels(item["region"], item["item_kind"], outcome).inc()
    for name in ATTRIBUTES:
        if not verdict.attributes[name]:
            metrics.VERDICT_ATTRIBUTE_FAILURES.labels(item["region"], name).inc()
    if correction is not None:
        metrics.CORRECTIONS.labels(item["region"], "correction").inc()
    assert saved is not None
    return saved


async def _record_agent_result(conn: AsyncConnection, policy: Policy, item: Mapping[str, Any], passed: bool
                               ) -> None:
    agent = await db.agent_for_update(conn, item["region"], item["agent_id"])
    if agent is None:
        return
    results = (*agent.recent_results, passed)[-RESULTS_KEPT:]
    level = record_audit(InspectionLevel(agent.state, agent.audits_at_level), results, policy.switching)
    await db.save_agent_results(conn, item["region"], item["agent_id"], results, level)


async def _rebuild_agent_results(conn: AsyncConnection, policy: Policy, verdict: Mapping[str, Any]) -> None:
    """An overturned failure must not keep counting against the agent: replay the switching rules over
    the corrected history (from normal, as for a new agent)."""
    agent = await db.agent_for_update(conn, verdict["region"], verdict["agent_id"])
    if agent is None:
        return
    results = await db.agent_results_from_verdicts(conn, verdict["region"], verdict["agent_id"], RESULTS_KEPT)
    await db.save_agent_results(conn, verdict["region"], verdict["agent_id"], results,
                                replay_levels(results, policy.switching))


async def _maybe_calibrate(conn: AsyncConnection, policy: Policy, item: Mapping[str, Any], auditor: str,
                           now: datetime) -> None:
    # The same keyed draw as sampling, on a separate label, so the re-audit choice is reproducible too.
    if uniform_draw(policy.seed, f"calibration:{item['compensation_id']}") >= policy.calibration_share:
        return
    rule = policy.queue(item["queue"]) or policy.queues[-1]
    await db.insert_calibration_item(conn, dict(item), auditor, now, q.sla_due(now, rule.sla_hours))


async def release_item(engine: AsyncEngine, principal: Principal, item_id: int) -> dict[str, Any]:
    """Give a claimed item back to its queue (the holder, or a lead)."""
    principal.require_role(*AUDIT_ROLES, "ops_admin")
    async with engine.begin() as conn:
        item = await db.item_for_update(conn, item_id)
        if item is None:
            raise _not_found("item", item_id)
        principal.require_region(item["region"])
        if item["status"] != "claimed":
            raise Problem(409, "Conflict", f"item {item_id} is {item['status']}, not claimed")
        if item["claimed_by"] != principal.subject and not principal.has_role(*LEAD_ROLES):
            raise Problem(403, "Forbidden", f"item {item_id} is held by another auditor")
        await db.set_item_holder(conn, item_id, status="queued", claimed_by=None, lease_until=None,
                                 assigned_to=None)
        updated = await db.item(conn, item_id)
    assert updated is not None
    return _present_item(updated, principal)


async def reassign_item(engine: AsyncEngine, principal: Principal, item_id: int, auditor_id: str, *,
                        runtime: Runtime | None = None, now: datetime | None = None) -> dict[str, Any]:
    """A lead hands an open item to a named auditor: leased to them now, claimable by no one else."""
    principal.require_role(*LEAD_ROLES)
    if not auditor_id or len(auditor_id) > 128:
        raise Problem(422, "Invalid request", "auditor_id is required",
                      errors=[{"field": "auditor_id", "message": "1 to 128 characters"}])
    at = _now(now)
    async with engine.begin() as conn:
        item = await db.item_for_update(conn, item_id)
        if item is None:
            raise _not_found("item", item_id)
        principal.require_region(item["region"])
        if item["status"] not in ("queued", "claimed"):
            raise Problem(409, "Conflict", f"item {item_id} is {item['status']}; only open items move")
        if auditor_id in (item["agent_id"], item["excluded_auditor"]):
            raise Problem(409, "Conflict", f"{auditor_id} may not audit this item (own compensation or "
                                           "own first verdict)")
        policy = (runtime or current_runtime()).policies.for_region(item["region"])
        await db.set_item_holder(conn, item_id, status="claimed", claimed_by=auditor_id,
                                 lease_until=q.lease_expiry(at, policy.lease_seconds), assigned_to=auditor_id)
        updated = await db.item(conn, item_id)
    assert updated is not None
    return _present_item(updated, principal)


async def dispute_verdict(engine: AsyncEngine, principal: Principal, verdict_id: int, reason: str
                          ) -> dict[str, Any]:
    """The agent's lead contests a failed verdict; a senior auditor then decides."""
    principal.require_role("lead")
    if not reason or not reason.strip() or len(reason) > 2000:
        raise Problem(422, "Invalid request", "a reason is required",
                      errors=[{"field": "reason", "message": "1 to 2000 characters"}])
    async with engine.begin() as conn:
        verdict = await db.verdict(conn, verdict_id, for_update=True)
        if verdict is None:
            raise _not_found("verdict", verdict_id)
        principal.require_region(verdict["region"])
        if verdict["item_kind"] != "sample":
            raise Problem(409, "Conflict", "only verdicts on sampled compensations can be disputed")
        if verdict["passed"]:
            raise Problem(409, "Conflict", "the verdict passed the compensation; nothing to dispute")
        if verdict["status"] != "final":
            raise Problem(409, "Conflict", f"verdict {verdict_id} is already {verdict['status']}")
        created = await db.insert_dispute(conn, verdict_id, verdict["region"], principal.subject, reason.strip())
        if created is None:
            raise Problem(409, "Conflict", f"verdict {verdict_id} was already disputed")
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
                          note: str | None = None, *, runtime: Runtime | None = None,
                          now: datetime | None = None) -> dict[str, Any]:
    """A senior auditor upholds or overturns; an overturn reverses the verdict's correction. The person who
    raised the dispute and the auditor whose verdict is disputed may not resolve it; a reversal names them
    both, and the resolver, in the correction event the ledger records."""
    principal.require_role(*RESOLVE_ROLES)
    if outcome not in ("uphold", "overturn"):
        raise Problem(422, "Invalid request", "outcome must be uphold or overturn",
                      errors=[{"field": "outcome", "message": "uphold or overturn"}])
    rt = runtime or current_runtime()
    at = _now(now)
    async with engine.begin() as conn:
        current = await db.dispute(conn, dispute_id, for_update=True)
        if current is None:
            raise _not_found("dispute", dispute_id)
        principal.require_region(current["region"])
        if current["status"] != "open":
            raise Problem(409, "Conflict", f"dispute {dispute_id} is already {current['status']}")
        verdict = await db.verdict(conn, current["verdict_id"], for_update=True)
        assert verdict is not None
        conflict = resolution_conflict(principal, current, verdict["auditor_id"])
        if conflict is not None:
            metrics.DISPUTES.labels(current["region"], "refused_conflict").inc()
            raise Problem(403, "Forbidden", f"{principal.subject} may not resolve dispute {dispute_id}: {conflict}",
                          errors=[{"field": "dispute_id", "message": conflict}])
        reverse_id = None
        if outcome == "overturn" and verdict["correction_id"]:
            item = await db.item(conn, verdict["item_id"])
            assert item is not None
            reverse_id = f"{verdict['correction_id']}-reversal"
            comp = item["compensation"]
            await enqueue_records(conn, [_correction_event(
                correction_id=reverse_id, item=item, audit_id=f"dispute-{dispute_id}", auditor=principal.subject,
                category=verdict["error_category"] or "other", amount_minor=int(comp["amount"]["amount_minor"]),
                shares=_snapshot_shares(comp), note=note, corrects=verdict["correction_id"], now=at,
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
            await _rebuild_agent_results(conn, rt.policies.for_region(current["region"]), verdict)
        resolved = await db.resolve_dispute(conn, dispute_id, status, principal.subject, note, reverse_id, at)
    metrics.DISPUTES.labels(current["region"], status).inc()
    if reverse_id:
        metrics.CORRECTIONS.labels(current["region"], "reversal").inc()
    return {**resolved, "auditor_id": verdict["auditor_id"]}


async def list_disputes(engine: AsyncEngine, principal: Principal, region: str | None = None,
                        status: str | None = "open") -> list[dict[str, Any]]:
    principal.require_role("lead", "senior_auditor", "ops_admin")
    if region is not None:
        principal.require_region(region)
        regions: list[str] | None = [region]
    else:
        regions = None if "*" in principal.regions else sorted(principal.regions)
    async with engine.connect() as conn:
        return await db.disputes(conn, regions, status)


def gold_item_errors(gold: GoldItemInput, *, runtime: Runtime | None = None) -> list[dict[str, str]]:
    """Every problem with a gold item's known answer, compensation and queue, as {field, message}; empty
    when ``seed_gold_item`` would accept it. No I/O, no role or region check (the caller's job, and
    ``seed_gold_item`` does both again). The workbench form lists them all next to its fields."""
    return _check_gold(gold, runtime)[0]


def _check_gold(gold: GoldItemInput, runtime: Runtime | None
                ) -> tuple[list[dict[str, str]], tuple[ManualCompensationIssued, dict[str, bool], QueueRule] | None]:
    # Every group is checked (not only up to the first failure), so a form shows all its mistakes at once.
    errors: list[dict[str, str]] = []
    expected: dict[str, bool] = {}
    try:
        expected = parse_expected(gold.expected)
    except VerdictError as exc:
        errors += [{"field": f, "message": m} for f, m in exc.errors]
    comp: ManualCompensationIssued | None = None
    try:
        comp = ManualCompensationIssued.model_validate(dict(gold.compensation))
    except ValidationError as exc:
        errors += [{"field": ".".join(["compensation", *(str(p) for p in e["loc"])]), "message": e["msg"]}
                   for e in exc.errors()]
    else:
        errors += [{"field": f.replace("payload.", "compensation."), "message": m}
                   for f, m in region_currency_errors(gold.region, comp)]
    policy = (runtime or current_runtime()).policies.for_region(gold.region)
    rule = policy.queue(gold.queue) if gold.queue else policy.queues[-1]
    if rule is None:
        errors.append({"field": "queue", "message": f"no queue {gold.queue} in region {gold.region}"})
    if errors or comp is None or rule is None:
        return errors, None
    return errors, (comp, expected, rule)


async def seed_gold_item(engine: AsyncEngine, principal: Principal, gold: GoldItemInput, *,
                         runtime: Runtime | None = None, now: datetime | None = None) -> dict[str, Any]:
    """A lead seeds a known-answer item; auditors see it as an ordinary audit."""
    principal.require_role(*LEAD_ROLES)
    _check_region_code(gold.region)
    principal.require_region(gold.region)
    errors, checked = _check_gold(gold, runtime)
    if checked is None:
        raise Problem(422, "Invalid gold item", "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]),
                      errors=errors)
    comp, expected, rule = checked
    at = _now(now)
    region = catalogue().get(gold.region)
    async with engine.begin() as conn:
        item_id = await db.insert_gold_item(conn, {
            "region": gold.region, "queue": rule.name, "compensation_id": comp.compensation_id,
            "agent_id": comp.agent_id, "team": comp.team, "compensation": comp.model_dump(mode="json"),
            "local_day": q.local_day(region, at), "now": at, "due": q.sla_due(at, rule.sla_hours),
            "expected": expected, "created_by": principal.subject})
        created = await db.item(conn, item_id)
    assert created is not None
    return _present_item(created, principal)


def lease_remaining(item: Mapping[str, Any], now: datetime | None = None) -> timedelta | None:
    expires = item.get("lease_expires_at")
    return None if expires is None else expires - _now(now)
