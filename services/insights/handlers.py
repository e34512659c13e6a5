"""The rollup consumer: every business event updates insights' records and appends rollup deltas.

One batch costs a fixed handful of statements whatever its size: the tickets and compensations it touches
are created or locked with array binds (in id order, per record: consumers take turns on one ticket, never
on a table), the new state of each ticket's group is worked out in Python (``domain.rollups``), and the
batch's pre-aggregated rollup changes are appended to the delta tables with COPY. Nothing here writes a
shared rollup row, so parallel consumers never queue on one (ADR 0011).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.insights import metrics
from services.insights import persistence as db
from services.insights.contracts import CONSUMES
from services.insights.domain.rollups import (
    ActionRecord,
    ApprovalRecord,
    CompensationRecord,
    Deltas,
    Feedback,
    FlagRecord,
    RequestStep,
    TicketRecord,
    action_part,
    approval_part,
    breach_time,
    decision_contribution,
    flag_part,
    group_delta,
    local_slot,
    merge_action,
    merge_feedback,
    merge_flag,
    merge_issued,
    merge_lifecycle,
    merge_request_step,
    merge_ticket_opened,
)
from shared.contracts import events as ev
from shared.contracts.registry import event_types_on
from shared.db import raw_connection
from shared.kafka import Delivered

log = logging.getLogger(__name__)

_LIFECYCLE = (ev.VoucherRedeemed, ev.VoucherExpired, ev.VoucherRevoked)


def _liability(shares: Sequence[ev.LiabilityShare]) -> dict[str, int]:
    out: dict[str, int] = {}
    for share in shares:
        out[share.party.type.value] = out.get(share.party.type.value, 0) + share.amount_minor
    return out


def _fold(merge: Callable[[Any, Any], Any]) -> Callable[[tuple[Any, ...], Any, Sequence[Any]], Any]:
    """A record folded with the batch's records about it (``merge`` of two records, order-independent)."""
    def fold(key: tuple[Any, ...], record: Any, items: Sequence[Any]) -> Any:
        for item in items:
            record = merge(record, item)
        return record
    return fold


class RollupHandler:

    consumes = event_types_on(CONSUMES)  # the read side takes every business event
    def __init__(self, tz_of: Mapping[str, str]) -> None:
        self.tz_of = dict(tz_of)

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        started = time.perf_counter()
        # The statements below go straight through asyncpg. SQLAlchemy's asyncpg adapter begins its
        # transaction lazily, at its first statement: a batch whose first statement were one of ours would
        # run in autocommit and a failed batch would leave half its writes behind. The consumer runner's
        # deduplication statement always comes first; anyone calling the handler otherwise gets it begun here.
        if not (await raw_connection(conn)).is_in_transaction():
            await conn.execute(text("SELECT 1"))
        try:
            await self._apply(conn, events)
        except db.LostRace as exc:
            log.info("records created concurrently by another consumer; the batch will be retried",
                     extra={"what": str(exc)})
            await db.abort_as_serialization_failure(conn)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        seen: Counter[str] = Counter()
        newest: dict[str, float] = {}
        for d in events:
            seen[d.envelope.event_type] += 1
            at = d.envelope.occurred_at.timestamp()
            if at > newest.get(d.topic, 0.0):
                newest[d.topic] = at
        for event_type, n in seen.items():
            metrics.EVENTS.labels(event_type).inc(n)
        for topic, at in newest.items():
            metrics.note_newest(topic, at)

    async def _apply(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        opened: list[Delivered] = []
        issued: list[Delivered] = []
        lifecycle: list[Delivered] = []
        feedback: list[Delivered] = []
        out = Deltas()
        volumes: list[tuple[Any, ...]] = []
        limits: list[tuple[Any, ...]] = []
        sampled: list[dict[str, Any]] = []
        evicted: list[tuple[str, int, str]] = []
        verdicts: list[dict[str, Any]] = []
        requests: dict[tuple[Any, ...], list[RequestStep]] = {}
        flags: dict[tuple[Any, ...], list[FlagRecord]] = {}
        actions: dict[tuple[Any, ...], list[ActionRecord]] = {}
        for d in events:
            p, env = d.payload, d.envelope
            kind = type(p)  # exact types: isinstance on pydantic models goes through ABC checks, per event
            if kind is ev.TicketOpened:
                opened.append(d)
            elif kind is ev.CompensationIssued or kind is ev.ManualCompensationIssued:
                issued.append(d)
            elif kind in _LIFECYCLE:
                lifecycle.append(d)
            elif isinstance(p, ev.BuyerFeedbackGiven):
                if p.ticket_id is not None:  # about an order only: no ticket cohort to compare it in
                    feedback.append(d)
            elif isinstance(p, ev.DecisionRecorded):
                decision_contribution(
                    out, region=env.region, tz=self.tz_of[env.region], ticket_occurred_at=p.ticket_occurred_at,
                    strategy_id=p.strategy_id, strategy_version=p.strategy_version, outcome=p.outcome.value,
                    failed_rule=p.failed_rule, tier=p.tier, shadow=p.shadow,
                    amount_minor=p.amount.amount_minor if p.amount else None, reason=p.reason.value,
                    order_minor=p.order_amount.amount_minor if p.order_amount else None)
            elif isinstance(p, ev.OrderVolumeReported):
                volumes.append((env.region, p.day, p.orders, p.gmv.amount_minor, env.occurred_at, env.event_id))
            elif isinstance(p, ev.BudgetLimitSet):
                limits.append((env.region, p.budget_period, p.limit.currency, p.limit.amount_minor, env.occurred_at,
                               env.event_id))
            elif isinstance(p, ev.AuditItemSampled):
                sampled.append({
                    "region": env.region, "item_id": p.item_id, "compensation_id": p.compensation_id,
                    "comp_day": local_slot(p.compensation_occurred_at, self.tz_of[env.region])[0],
                    "stratum": p.stratum, "probability": p.inclusion_probability, "mandatory": p.mandatory,
                    "agent_id": p.agent_id, "team": p.team, "reason_code": p.reason_code,
                    "amount_minor": p.amount.amount_minor, "sla_due_at": p.sla_due_at})
            elif isinstance(p, ev.AuditItemEvicted):
                evicted.append((env.region, p.item_id, p.compensation_id))
            elif kind is ev.CompensationRequestDecided:
                self._request_step(requests, env.region, env.event_id, p)  # type: ignore[arg-type]
            elif kind is ev.CompensationIssueFlagged:
                self._flag(flags, env.region, p)  # type: ignore[arg-type]
            elif kind is ev.CorrectiveActionRecorded:
                self._action(actions, env.region, env.event_id, p)  # type: ignore[arg-type]
            elif isinstance(p, ev.AuditVerdictRecorded):
                verdicts.append({
                    "region": env.region, "item_id": p.item_id, "compensation_id": p.compensation_id,
                    "verdict_id": p.verdict_id, "dispute_id": p.dispute_id, "auditor_id": p.auditor_id,
                    "passed": p.passed, "error_category": p.error_category,
                    "misstated_minor": p.money_misstated.amount_minor, "audited_at": p.audited_at,
                    "audit_day": local_slot(p.audited_at, self.tz_of[env.region])[0], "within_sla": p.within_sla,
                    "attributes": dict(p.attributes)})
            # other event types on these topics (none today) are not part of any report
        if opened or issued or lifecycle or feedback:
            await self._records(conn, opened, issued, lifecycle, feedback, out)
        await db.upsert_order_volume(conn, volumes)
        await db.upsert_budget_limits(conn, limits)
        await db.upsert_sampled(conn, sampled)
        await db.mark_evicted(conn, evicted)
        await db.upsert_verdicts(conn, verdicts)
        await db.merge_records(conn, db.APPROVAL_REQUESTS, requests, self._fold_steps, approval_part, out)
        await db.merge_records(conn, db.ISSUE_FLAGS, flags, _fold(merge_flag), flag_part, out)
        await db.merge_records(conn, db.CORRECTIVE_ACTIONS, actions, _fold(merge_action), action_part, out)
        rows = await db.write_deltas(conn, out)
        metrics.DELTA_ROWS.inc(rows)

    async def _records(self, conn: AsyncConnection, opened: list[Delivered], issued: list[Delivered],
                       lifecycle: list[Delivered], feedback: list[Delivered], out: Deltas) -> None:
        region_of: dict[str, str] = {}
        for d in (*opened, *feedback):
            region_of.setdefault(d.payload.ticket_id, d.envelope.region)  # type: ignore[attr-defined]
        for d in issued:
            region_of.setdefault(d.payload.ticket_id, d.envelope.region)  # type: ignore[attr-defined]
        comp_region = {d.payload.compensation_id: d.envelope.region  # type: ignore[attr-defined]
                       for d in (*issued, *lifecycle)}
        comp_ids = sorted(comp_region)
        # Tickets the compensations already belong to (a lifecycle event names only its compensation).
        for cid, tid in (await db.referenced_tickets(conn, comp_ids)).items():
            region_of.setdefault(tid, comp_region[cid])
        by_ticket: dict[str, list[Delivered]] = {}
        for d in (*opened, *feedback):
            by_ticket.setdefault(d.payload.ticket_id, []).append(d)  # type: ignore[attr-defined]
        # What this batch would insert for a ticket with no row yet: its facts and feedback, complete.
        fresh = {tid: TicketRecord(tid, region) for tid, region in region_of.items()}
        for d in opened:
            fresh[d.payload.ticket_id] = self._open(fresh[d.payload.ticket_id], d)  # type: ignore[attr-defined]
        for d in feedback:
            fresh[d.payload.ticket_id] = self._feedback(fresh[d.payload.ticket_id], d)  # type: ignore[attr-defined]
        inserted, existing = await db.create_or_lock_tickets(conn, list(fresh.values()))
        before_t: dict[str, TicketRecord | None] = {tid: existing.get(tid) for tid in fresh}
        after_t: dict[str, TicketRecord] = {}
        for tid in fresh:
            if tid in inserted:
                after_t[tid] = fresh[tid]
                continue
            record = existing[tid]
            for d in by_ticket.get(tid, ()):
                record = self._open(record, d) if type(d.payload) is ev.TicketOpened else self._feedback(record, d)
            after_t[tid] = record
        loaded = await db.lock_compensations(conn, sorted(existing), comp_ids)
        for comp in loaded.values():
            if comp.ticket_id is not None and comp.ticket_id not in fresh:
                raise db.LostRace("compensation attached to a ticket after it was looked up")
        comps = dict(loaded)
        for d in issued:
            comps[d.payload.compensation_id] = self._issue(  # type: ignore[attr-defined]
                comps.get(d.payload.compensation_id) or CompensationRecord(  # type: ignore[attr-defined]
                    d.payload.compensation_id, d.envelope.region), d)  # type: ignore[attr-defined]
        for d in lifecycle:
            p = d.payload
            base = comps.get(p.compensation_id) or CompensationRecord(p.compensation_id, d.envelope.region)  # type: ignore[attr-defined]
            comps[p.compensation_id] = merge_lifecycle(  # type: ignore[attr-defined]
                base, event_type=d.envelope.event_type, event_id=d.envelope.event_id, at=d.envelope.occurred_at,
                discount_minor=p.discount.amount_minor if isinstance(p, ev.VoucherRedeemed) else None)
        # Each touched ticket's group, before and after: the rollups change by the difference.
        old_by_ticket: dict[str, list[CompensationRecord]] = {tid: [] for tid in fresh}
        new_by_ticket: dict[str, list[CompensationRecord]] = {tid: [] for tid in fresh}
        for comp in loaded.values():
            if comp.ticket_id is not None:
                old_by_ticket[comp.ticket_id].append(comp)
        for comp in comps.values():
            if comp.ticket_id is not None:
                new_by_ticket[comp.ticket_id].append(comp)
        for tid in fresh:
            old_comps, new_comps = old_by_ticket[tid], new_by_ticket[tid]
            if before_t[tid] == after_t[tid] and old_comps == new_comps:
                continue
            group_delta((before_t[tid], old_comps), (after_t[tid], new_comps), self.tz_of, out)
        await db.insert_compensations(conn, [c for cid, c in comps.items() if cid not in loaded])
        await db.update_compensations(conn, [c for cid, c in comps.items() if cid in loaded and c != loaded[cid]])
        await db.update_tickets(conn, [after_t[tid] for tid in existing if after_t[tid] != existing[tid]])

    # -------------------------------------------------------------- approval stage, corrective actions

    @staticmethod
    def _request_step(out: dict[tuple[Any, ...], list[RequestStep]], region: str, event_id: str,
                      p: ev.CompensationRequestDecided) -> None:
        out.setdefault((region, p.request_id), []).append(RequestStep(
            event_id, p.outcome.value, p.automatic, p.decided_by, p.decided_at, p.requested_at, p.reason_code,
            p.team, p.kind.value, p.requested_amount.amount_minor,
            p.approved_amount.amount_minor if p.approved_amount else None))

    def _fold_steps(self, key: tuple[Any, ...], record: ApprovalRecord | None, steps: Sequence[RequestStep]
                    ) -> ApprovalRecord | None:
        region, request_id = key
        for step in steps:
            record = merge_request_step(record, region, request_id, step, self.tz_of[region])
        return record

    def _flag(self, out: dict[tuple[Any, ...], list[FlagRecord]], region: str, p: ev.CompensationIssueFlagged) -> None:
        out.setdefault((region, p.compensation_id), []).append(FlagRecord(
            region, p.compensation_id, local_slot(p.issued_at, self.tz_of[region])[0], p.issued_at, p.team,
            p.reason_code, p.issued_amount.amount_minor, tuple(sorted({m.value for m in p.mismatches}))))

    def _action(self, out: dict[tuple[Any, ...], list[ActionRecord]], region: str, event_id: str,
                p: ev.CorrectiveActionRecorded) -> None:
        e = p.effect
        out.setdefault((region, p.action_id), []).append(ActionRecord(
            region, p.action_id, local_slot(p.opened_at, self.tz_of[region])[0], p.opened_at, p.kind,
            p.source.value, p.target_type.value, p.status.value, p.due_on, p.updated_at, event_id,
            p.updated_at if e else None, event_id if e else "", e.after_audits if e else None,
            e.difference if e else None, e.difference_low if e else None, e.difference_high if e else None))

    @staticmethod
    def _open(record: TicketRecord, d: Delivered) -> TicketRecord:
        p: ev.TicketOpened = d.payload  # type: ignore[assignment]
        occurred = d.envelope.occurred_at
        return merge_ticket_opened(
            record, event_id=d.envelope.event_id, occurred_at=occurred, reason=p.reason.value, seller_id=p.seller_id,
            carrier_id=p.carrier_id, raised_by=p.raised_by.value if p.raised_by else None,
            breach_at=breach_time(p.reason.value, occurred, p.promised_delivery_at, p.dispatch_due_at))

    @staticmethod
    def _feedback(record: TicketRecord, d: Delivered) -> TicketRecord:
        p: ev.BuyerFeedbackGiven = d.payload  # type: ignore[assignment]
        return merge_feedback(record, Feedback(p.feedback_id, p.kind.value, p.score, d.envelope.occurred_at))

    @staticmethod
    def _issue(record: CompensationRecord, d: Delivered) -> CompensationRecord:
        p = d.payload
        if isinstance(p, ev.CompensationIssued):
            return merge_issued(record, event_id=d.envelope.event_id, ticket_id=p.ticket_id, source="auto",
                                kind=p.kind.value, strategy_id=p.strategy_id, reason=p.reason.value, seller_id=None,
                                carrier_id=None, amount_minor=p.amount.amount_minor, liability=_liability(p.liability),
                                issued_at=d.envelope.occurred_at)
        assert isinstance(p, ev.ManualCompensationIssued)
        return merge_issued(record, event_id=d.envelope.event_id, ticket_id=p.ticket_id, source="manual",
                            kind=p.kind.value, strategy_id="", reason=p.reason_code, seller_id=p.seller_id,
                            carrier_id=p.carrier_id, amount_minor=p.amount.amount_minor,
                            liability=_liability(p.liability), issued_at=d.envelope.occurred_at)

