"""Verdicts: scoring a claimed item, with the ledger correction a money error needs enqueued in the same
transaction, the agent's inspection level moved by the result, and a keyed draw for a calibration re-audit.
Gold items are scored against their known answer; calibration verdicts are paired with the first one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.audit_sampler import metrics
from services.audit_sampler import persistence as db
from services.audit_sampler.contracts import (
    CORRECTION_EVENT,
    SOURCE,
    AuditCorrectionIssued,
    LiabilityShare,
    LiableParty,
    NonNegativeMoney,
    PartyType,
)
from services.audit_sampler.domain import queues as q
from services.audit_sampler.domain.policy import Policy
from services.audit_sampler.domain.sampling import InspectionLevel, record_audit, replay_levels, uniform_draw
from services.audit_sampler.domain.verdicts import (
    ATTRIBUTES,
    Share,
    VerdictError,
    VerdictInput,
    correction_for,
    gold_agreement,
    validate,
)
from services.audit_sampler.operations import announce
from services.audit_sampler.operations.access import AUDIT_ROLES, require_region, require_role
from services.audit_sampler.operations.claims import not_found, now_or
from services.audit_sampler.operations.errors import Conflict, Invalid
from services.audit_sampler.operations.runtime import Runtime
from shared.auth import Principal
from shared.contracts.registry import make_envelope
from shared.kafka.producer import record_for
from shared.outbox import enqueue_records

RESULTS_KEPT = 50  # audit outcomes remembered per agent (enough for every switching/boost window)


def snapshot_shares(compensation: Mapping[str, Any]) -> list[Share]:
    return [Share(s["party"]["type"], s["party"].get("id"), int(s["amount_minor"]))
            for s in compensation.get("liability", [])]


def _shares_json(shares: Sequence[Share]) -> list[dict[str, Any]]:
    return [{"party": {"type": s.party_type, "id": s.party_id}, "amount_minor": s.amount_minor} for s in shares]


def correction_event(*, correction_id: str, item: Mapping[str, Any], audit_id: str, auditor: str,
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
                         runtime: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """Record the verdict; a money error enqueues the ledger correction in the same transaction."""
    require_role(principal, *AUDIT_ROLES)
    rt = runtime
    at = now_or(now)
    async with engine.begin() as conn:
        item = await db.item_for_update(conn, item_id)
        if item is None:
            raise not_found("item", item_id)
        require_region(principal, item["region"])
        if item["status"] == "done":
            raise Conflict(f"item {item_id} already has a verdict")
        if item["status"] != "claimed" or item["claimed_by"] != principal.subject:
            raise Conflict(f"item {item_id} is not claimed by {principal.subject}; claim it first")
        policy = rt.policies.for_region(item["region"])
        comp = item["compensation"]
        amount = int(comp["amount"]["amount_minor"])
        try:
            validate(verdict, original_amount_minor=amount, categories=policy.error_categories)
        except VerdictError as exc:
            raise Invalid(str(exc), title="Invalid verdict",
                          errors=[{"field": f, "message": m} for f, m in exc.errors]) from exc
        gold_correct = None
        if item["item_kind"] == "gold":
            agreement = gold_agreement(item["gold_expected"], verdict.attributes)
            gold_correct = all(agreement.values())
        correction = None
        if item["item_kind"] == "sample":
            correction = correction_for(verdict, original_amount_minor=amount, currency=comp["amount"]["currency"],
                                        original_liability=snapshot_shares(comp))
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
            await enqueue_records(conn, [correction_event(
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


async def rebuild_agent_results(conn: AsyncConnection, policy: Policy, verdict: Mapping[str, Any]) -> None:
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
