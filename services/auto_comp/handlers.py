"""Batch handlers: tickets -> decisions (+ budget reservation requests); budget answers -> vouchers.

The budget saga: a proposed compensation is written as ``pending`` with its reservation request in the
outbox, in the decision's transaction. The ledger answers once per reservation id; the answer is applied
under a row lock and only to a still-pending compensation, so a re-delivered or re-sent answer changes
nothing and a ticket can never get a second voucher. A crash anywhere leaves either the pending row with
its request (re-sent by ``SagaTimeouts``) or the settled row with its event in the outbox.

A reservation has an expiry (``expires_at``), when the ledger releases it if unused. A compensation still
pending then is expired by ``SagaTimeouts`` (or by the answer handler, if the answer comes late): issue,
denial and expiry are each one conditional ``UPDATE ... WHERE status = 'pending'``, so exactly one wins,
and ``compensation.issued`` is published only for a compensation issued before its expiry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.auto_comp import metrics, outgoing, persistence
from services.auto_comp.domain.engine import (
    Evaluation,
    Granted,
    Outcome,
    PartyShare,
    Verdict,
    evaluate_ticket,
    settle,
    split_liability,
)
from services.auto_comp.domain.model import StrategySet
from services.auto_comp.store import StrategyStore
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import make_envelope
from shared.kafka import Delivered, PermanentError
from shared.logging import log_event
from shared.money import Money
from shared.outbox import Record, enqueue, enqueue_records
from shared.regions import region as region_of

log = logging.getLogger(__name__)


def _cid(answers: dict[str, tuple[Envelope, Any]], comp: dict[str, Any]) -> str:
    """The correlation id of the ticket a budget answer settles (the ledger answers under the request's)."""
    return answers[comp["reservation_id"]][0].correlation_id

SOURCE = outgoing.SOURCE
_NAMESPACE = uuid.UUID("6f1c3f5e-2a7b-4b8e-9d0c-5a1e7c3b9f42")


_NAMESPACE_BYTES = _NAMESPACE.bytes
_UUID5_CLEAR = ~((0xc000 << 48) | (0xf000 << 64))
_UUID5_SET = (0x8000 << 48) | (5 << 76)


def compensation_id_for(ticket_id: str, strategy_id: str) -> str:
    """Deterministic, so a ticket replayed after a crash maps to the same compensation and reservation.

    ``"ac-" + str(uuid.uuid5(_NAMESPACE, ticket_id + "\\x1f" + strategy_id))``, written out (a unit test
    proves they are equal): the hot path makes one per proposal."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + f"{ticket_id}\x1f{strategy_id}".encode(), usedforsecurity=False).digest()
    x = f"{int.from_bytes(digest[:16]) & _UUID5_CLEAR | _UUID5_SET:032x}"
    return f"ac-{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def new_voucher_code() -> str:
    """120 random bits in Crockford-free base32: unguessable, and safe in any Identifier field."""
    return "V" + base64.b32encode(secrets.token_bytes(15)).decode()


class TicketHandler:
    """Decides every new ticket of a batch; proposals go to the ledger through the outbox."""

    def __init__(self, store: StrategyStore, reservation_hold_days: int = 7) -> None:
        self.store = store
        self.hold = timedelta(days=reservation_hold_days)

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        started = time.perf_counter()
        strategies = self.store.current
        batch: dict[str, tuple[Envelope, ev.TicketOpened]] = {}
        for d in events:
            if isinstance(d.payload, ev.TicketOpened):
                batch.setdefault(d.payload.ticket_id, (d.envelope, d.payload))
        if not batch:
            return
        await persistence.lock_buyers(conn, ((env.region, t.buyer_id) for env, t in batch.values()))
        # Under the buyers' locks: a ticket another consumer decided meanwhile keeps its decision.
        for ticket_id in await persistence.decided_tickets(conn, list(batch)):
            del batch[ticket_id]
        if not batch:
            return
        items = sorted(batch.values(), key=lambda x: (x[0].occurred_at, x[1].ticket_id))
        window = timedelta(days=max((s.abuse_guard.window_days for s in strategies.strategies
                                     if s.abuse_guard), default=1))
        history = await persistence.buyer_history(
            conn, ((env.region, t.buyer_id) for env, t in items),
            min(env.occurred_at for env, _ in items) - window, max(env.occurred_at for env, _ in items) + window)
        taken = await persistence.taken_orders(conn, [t.order_id for _, t in items])
        decisions: list[dict[str, Any]] = []
        shadows: list[dict[str, Any]] = []
        comps: list[dict[str, Any]] = []
        requests: list[Record] = []
        now = datetime.now(UTC)
        recorded: list[Record] = []
        for env, ticket in items:
            verdict, shadow_evaluations = self._evaluate(strategies, env, ticket, history, taken)
            # Shadows are judged against the buyer's history before this ticket's own compensation.
            ticket_shadows = self._shadows(shadow_evaluations, env, ticket, history, taken)
            shadows.extend(ticket_shadows)
            decision, comp, request = self._decide(strategies, verdict, env, ticket, history, taken, now)
            decisions.append(decision)
            if comp is not None and request is not None:
                comps.append(comp)
                requests.append(request)
            # Final decisions are announced with them (a pending one when the budget answer settles it).
            recorded.extend(_decided_at_intake(env, ticket, decision, verdict, ticket_shadows, shadow_evaluations,
                                               now))
        await persistence.insert_decisions(conn, decisions)
        await persistence.insert_shadow_decisions(conn, shadows)
        await persistence.insert_compensations(conn, comps)
        await enqueue_records(conn, requests + recorded)
        counts: Counter[tuple[str, str, str, str]] = Counter()
        latency: dict[str, Any] = {}
        for (env, _), row in zip(items, decisions, strict=True):
            # A pending decision is counted when the ledger's answer settles it, so each ticket counts once.
            if row["outcome"] != Outcome.PENDING_BUDGET:
                counts[(env.region, row["strategy_id"] or "none", row["outcome"], "active")] += 1
            hist = latency.get(env.region)
            if hist is None:
                hist = latency[env.region] = metrics.DECISION_LATENCY.labels(env.region)
            hist.observe(max(0.0, (now - env.produced_at).total_seconds()))
            log_event(log, "ticket decided", env.correlation_id, ticket_id=row["ticket_id"], region=env.region,
                      reason=row["reason"], outcome=row["outcome"], strategy_id=row["strategy_id"],
                      failed_rule=row["failed_rule"], proposed_minor=row["proposed_minor"],
                      currency=row["currency"], compensation_id=row["compensation_id"])
        for s in shadows:
            counts[(s["region"], s["strategy_id"], s["outcome"], "shadow")] += 1
        for labels, n in counts.items():
            metrics.DECISIONS.labels(*labels).inc(n)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    def _evaluate(self, strategies: StrategySet, env: Envelope, ticket: ev.TicketOpened,
                  history: dict[tuple[str, str], list[Granted]], taken: set[tuple[str, str]]
                  ) -> tuple[Verdict, tuple[Evaluation, ...]]:
        reg = region_of(env.region)
        result = evaluate_ticket(strategies, ticket, reg, env.occurred_at)
        p = result.live.proposal
        verdict = settle(result.live, buyer_id=ticket.buyer_id, occurred_at=env.occurred_at,
                         order_taken=p is not None and (ticket.order_id, p.scenario) in taken,
                         history=history.get((env.region, ticket.buyer_id), []))
        return verdict, result.shadows

    def _decide(self, strategies: StrategySet, verdict: Verdict, env: Envelope, ticket: ev.TicketOpened,
                history: dict[tuple[str, str], list[Granted]], taken: set[tuple[str, str]], now: datetime
                ) -> tuple[dict[str, Any], dict[str, Any] | None, Record | None]:
        e = verdict.evaluation
        p = e.proposal
        s = e.strategy
        decision: dict[str, Any] = {
            "ticket_id": ticket.ticket_id, "region": env.region, "order_id": ticket.order_id,
            "buyer_id": ticket.buyer_id, "reason": ticket.reason.value, "outcome": verdict.outcome.value,
            "failed_rule": verdict.failed_rule, "detail": verdict.detail,
            "strategy_id": s.id if s else None, "strategy_version": s.version if s else None,
            "config_version": strategies.version, "scenario": p.scenario if p else None,
            "tier": p.tier if p else None, "currency": ticket.order_amount.currency,
            "proposed_minor": p.amount.minor if p else None, "compensation_id": None,
            "inputs": {**e.inputs, "ticket_occurred_at": env.occurred_at.isoformat(),
                       "liability_rule": p.liability_rule.value if p else None,
                       "seller_id": ticket.seller_id, "carrier_id": ticket.carrier_id},
            "event_id": env.event_id, "ticket_occurred_at": env.occurred_at,
        }
        if verdict.outcome is not Outcome.PENDING_BUDGET or p is None:
            return decision, None, None
        comp_id = compensation_id_for(ticket.ticket_id, p.strategy.id)
        reservation_id = "res-" + comp_id.removeprefix("ac-")
        expires = now + (timedelta(days=p.validity_days) if p.validity_days else self.hold)
        fallback_minor = [m.minor for m in p.fallback_amounts]
        # The engine's proposal: positive, in the strategy's currency (= the order's), fallbacks descending.
        request = outgoing.reservation_requested(
            reservation_id=reservation_id, compensation_id=comp_id, ticket_id=ticket.ticket_id,
            buyer_id=ticket.buyer_id, strategy_id=p.strategy.id, strategy_version=p.strategy.version,
            kind=p.kind.value, amount_minor=p.amount.minor, currency=p.amount.currency,
            fallback_minor=fallback_minor, pacing_allowance_percent=p.strategy.budget.pacing_allowance_percent,
            expires_at=expires)
        record = outgoing.reservation_requested_record(
            request, region=env.region, event_id=f"{reservation_id}.1", occurred_at=now, produced_at=now,
            correlation_id=env.correlation_id, causation_id=env.event_id, traceparent=env.traceparent)
        decision["compensation_id"] = comp_id
        history.setdefault((env.region, ticket.buyer_id), []).append(Granted(env.occurred_at, p.amount))
        taken.add((ticket.order_id, p.scenario))
        comp = {
            "compensation_id": comp_id, "reservation_id": reservation_id, "ticket_id": ticket.ticket_id,
            "strategy_id": p.strategy.id, "strategy_version": p.strategy.version, "order_id": ticket.order_id,
            "scenario": p.scenario, "buyer_id": ticket.buyer_id, "region": env.region,
            "reason": ticket.reason.value, "kind": p.kind.value, "currency": p.amount.currency,
            "status": "pending", "requested_minor": p.amount.minor,
            "fallback_minor": fallback_minor, "liability_rule": p.liability_rule.value,
            "shares": [{"party": x.party.value, "id": x.party_id, "percent": x.percent} for x in p.shares],
            "min_spend_minor": p.min_spend.minor if p.min_spend is not None else None, "expires_at": expires,
            "request": request, "correlation_id": env.correlation_id,
            "ticket_occurred_at": env.occurred_at,
        }
        return decision, comp, record

    @staticmethod
    def _shadows(evaluations: Sequence[Evaluation], env: Envelope, ticket: ev.TicketOpened,
                 history: dict[tuple[str, str], list[Granted]], taken: set[tuple[str, str]]
                 ) -> list[dict[str, Any]]:
        """Shadow strategies: the full decision against the buyer's real history, recorded, never issued."""
        out = []
        for e in evaluations:
            assert e.strategy is not None
            p = e.proposal
            v = settle(e, buyer_id=ticket.buyer_id, occurred_at=env.occurred_at,
                       order_taken=p is not None and (ticket.order_id, p.scenario) in taken,
                       history=history.get((env.region, ticket.buyer_id), []))
            out.append({"ticket_id": ticket.ticket_id, "strategy_id": e.strategy.id,
                        "strategy_version": e.strategy.version, "region": env.region, "outcome": v.outcome.value,
                        "failed_rule": v.failed_rule, "detail": v.detail, "tier": p.tier if p else None,
                        "currency": ticket.order_amount.currency, "proposed_minor": p.amount.minor if p else None,
                        "inputs": e.inputs})
        return out


class BudgetResultHandler:
    """Applies the ledger's answers: reserved -> issue the compensation; denied -> budget_denied / paced.

    A reserved answer that arrives after the reservation expired (the sweeper may or may not have got
    there first) issues nothing: the compensation becomes ``expired`` and the ledger voids the unused
    reservation after its expiry plus grace; a denial with reason ``reservation_expired`` (the ledger
    voided it already) ends the same way. Each transition is conditional on the compensation still being
    pending, so exactly one of issue, denial and expiry happens to it."""

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        answers: dict[str, tuple[Envelope, ev.BudgetReservationDecided]] = {}
        for d in events:
            if isinstance(d.payload, ev.BudgetReservationDecided):
                answers.setdefault(d.payload.reservation_id, (d.envelope, d.payload))
        pending = await persistence.lock_pending(conn, list(answers))
        issued: list[dict[str, Any]] = []
        denied: list[dict[str, Any]] = []
        late: list[str] = []
        out: dict[str, Record] = {}
        now = datetime.now(UTC)
        for reservation_id, comp in pending.items():
            env, answer = answers[reservation_id]
            if answer.denial_reason is ev.DenialReason.RESERVATION_EXPIRED:
                # The ledger already voided the hold (a re-sent request answered after expiry + grace):
                # the same terminal state as a late "reserved", not a budget shortfall.
                late.append(comp["compensation_id"])
                continue
            if answer.outcome is ev.ReservationOutcome.DENIED:
                paced = answer.denial_reason is ev.DenialReason.PACED
                denied.append({
                    "compensation_id": comp["compensation_id"], "ticket_id": comp["ticket_id"],
                    "outcome": (Outcome.PACED if paced else Outcome.BUDGET_DENIED).value,
                    "denial_reason": answer.denial_reason.value if answer.denial_reason else None,
                    "budget_period": answer.budget_period,
                    "detail": f"ledger denied {answer.budget_period}: "
                              f"{answer.denial_reason.value if answer.denial_reason else 'denied'}"})
                continue
            if comp["expired"]:
                late.append(comp["compensation_id"])
                continue
            row, record = self._issue(comp, env, answer, now)
            issued.append(row)
            out[comp["compensation_id"]] = record
        won = await persistence.mark_issued(conn, issued)
        denied_ids = await persistence.mark_denied(conn, denied)
        # An issue that lost (the expiry passed between the read and the update) is late too.
        late.extend(row["compensation_id"] for row in issued if row["compensation_id"] not in won)
        expired = await persistence.expire_pending(conn, compensation_ids=late) if late else []
        issued = [row for row in issued if row["compensation_id"] in won]
        denied = [row for row in denied if row["compensation_id"] in denied_ids]
        liabilities = {row["compensation_id"]: row["liability"] for row in issued}
        settled = [row["compensation_id"] for row in issued] + [row["compensation_id"] for row in denied]
        settled += [row["compensation_id"] for row in expired]
        # Only the compensations this transaction issued are announced: never one the sweeper expired.
        await enqueue_records(conn, [out[cid] for cid in out if cid in won]
                              + await settled_decision_records(conn, settled, liabilities, env_of=answers, now=now))
        count_expired(expired, "late_answer")
        by_id = {c["compensation_id"]: c for c in pending.values()}
        decided: Counter[tuple[str, str, str, str]] = Counter()
        kinds: Counter[tuple[str, str, str]] = Counter()
        amounts: Counter[tuple[str, str]] = Counter()
        for row in denied:
            comp = by_id[row["compensation_id"]]
            decided[(comp["region"], comp["strategy_id"], row["outcome"], "active")] += 1
            log_event(log, "compensation denied by the budget", _cid(answers, comp), ticket_id=comp["ticket_id"],
                      compensation_id=comp["compensation_id"], region=comp["region"], outcome=row["outcome"],
                      denial_reason=row["denial_reason"], budget_period=row["budget_period"])
        end_to_end: dict[str, Any] = {}
        for row in issued:
            comp = by_id[row["compensation_id"]]
            decided[(comp["region"], comp["strategy_id"], Outcome.ISSUED.value, "active")] += 1
            log_event(log, "compensation issued", _cid(answers, comp), ticket_id=comp["ticket_id"],
                      compensation_id=comp["compensation_id"], region=comp["region"], kind=comp["kind"],
                      issued_minor=row["issued_minor"], currency=comp["currency"])
            kinds[(comp["region"], comp["strategy_id"], comp["kind"])] += 1
            amounts[(comp["region"], comp["currency"])] += row["issued_minor"]
            hist = end_to_end.get(comp["region"])
            if hist is None:
                hist = end_to_end[comp["region"]] = metrics.END_TO_END.labels(comp["region"])
            hist.observe(max(0.0, (now - comp["ticket_occurred_at"]).total_seconds()))
        for labels, n in decided.items():
            metrics.DECISIONS.labels(*labels).inc(n)
        for kind_labels, n in kinds.items():
            metrics.ISSUED.labels(*kind_labels).inc(n)
        for amount_labels, minor in amounts.items():
            metrics.ISSUED_AMOUNT.labels(*amount_labels).inc(minor)

    @staticmethod
    def _issue(comp: dict[str, Any], env: Envelope, answer: ev.BudgetReservationDecided, now: datetime
               ) -> tuple[dict[str, Any], Record]:
        assert answer.reserved_amount is not None
        amount = Money(answer.reserved_amount.amount_minor, answer.reserved_amount.currency)
        offered = [comp["requested_minor"], *comp["fallback_minor"]]
        if amount.currency != comp["currency"] or amount.minor not in offered:
            raise PermanentError(f"ledger reserved {amount} for {comp['reservation_id']}, which is not one of "
                                 f"the offered amounts {offered} {comp['currency']}")
        shares = [PartyShare(ev.PartyType(s["party"]), s["id"], s["percent"]) for s in comp["shares"]]
        # Parts sum exactly to the amount (largest remainder); the parties were unique in the strategy.
        liability = [(s.party.value, s.party_id, m.minor) for s, m in split_liability(amount, shares) if m.minor > 0]
        voucher = comp["kind"] == ev.CompensationKind.VOUCHER.value
        code = new_voucher_code() if voucher else None
        min_spend = comp["min_spend_minor"]
        issued = outgoing.compensation_issued(
            compensation_id=comp["compensation_id"], reservation_id=comp["reservation_id"],
            ticket_id=comp["ticket_id"], order_id=comp["order_id"], buyer_id=comp["buyer_id"],
            strategy_id=comp["strategy_id"], strategy_version=comp["strategy_version"], reason=comp["reason"],
            kind=comp["kind"], amount_minor=amount.minor, currency=amount.currency, liability=liability,
            voucher_code=code, min_spend_minor=min_spend if voucher else None,
            valid_until=comp["expires_at"] if voucher else None)
        record = outgoing.compensation_issued_record(
            issued, region=comp["region"], event_id=f"{comp['compensation_id']}.issued", occurred_at=now,
            produced_at=now, correlation_id=comp["correlation_id"] or env.correlation_id,
            causation_id=env.event_id, traceparent=env.traceparent)
        degraded = amount.minor != comp["requested_minor"]
        detail = f"issued {amount.format()}"
        if degraded:
            detail += f" (degraded from {Money(comp['requested_minor'], amount.currency).format()} by the budget)"
        row = {"compensation_id": comp["compensation_id"], "ticket_id": comp["ticket_id"],
               "issued_minor": amount.minor, "voucher_code": code, "budget_period": answer.budget_period,
               "detail": detail, "liability": liability}
        return row, record


def _decided_at_intake(env: Envelope, ticket: ev.TicketOpened, decision: dict[str, Any], verdict: Verdict,
                       shadows: Sequence[dict[str, Any]], shadow_evaluations: Sequence[Evaluation], now: datetime
                       ) -> list[Record]:
    """``decision.recorded`` for a ticket's live decision when it is already final, and for each shadow."""
    out: list[Record] = []
    envelope = {"region": env.region, "occurred_at": now, "produced_at": now, "correlation_id": env.correlation_id,
                "causation_id": env.event_id, "traceparent": env.traceparent}
    facts: dict[str, Any] = {"ticket_id": ticket.ticket_id, "order_id": ticket.order_id, "buyer_id": ticket.buyer_id,
             "seller_id": ticket.seller_id, "carrier_id": ticket.carrier_id, "reason": ticket.reason.value,
             "ticket_occurred_at": env.occurred_at, "currency": ticket.order_amount.currency}
    if decision["outcome"] != Outcome.PENDING_BUDGET.value:
        p = verdict.evaluation.proposal
        payload = outgoing.decision_recorded(
            **facts, shadow=False, outcome=decision["outcome"], failed_rule=decision["failed_rule"],
            detail=decision["detail"], strategy_id=decision["strategy_id"],
            strategy_version=decision["strategy_version"], tier=decision["tier"],
            kind=p.kind.value if p else None, amount_minor=decision["proposed_minor"])
        out.append(outgoing.decision_recorded_record(
            payload, event_id=outgoing.decision_event_id(ticket.ticket_id, decision["strategy_id"], False),
            **envelope))
    for shadow, evaluation in zip(shadows, shadow_evaluations, strict=True):
        p = evaluation.proposal
        payload = outgoing.decision_recorded(
            **facts, shadow=True, outcome=shadow["outcome"], failed_rule=shadow["failed_rule"],
            detail=shadow["detail"], strategy_id=shadow["strategy_id"], strategy_version=shadow["strategy_version"],
            tier=shadow["tier"], kind=p.kind.value if p else None, amount_minor=shadow["proposed_minor"])
        out.append(outgoing.decision_recorded_record(
            payload, event_id=outgoing.decision_event_id(ticket.ticket_id, shadow["strategy_id"], True),
            **envelope))
    return out


async def settled_decision_records(conn: AsyncConnection, compensation_ids: Sequence[str],
                                   liabilities: dict[str, Any], *,
                                   env_of: dict[str, tuple[Envelope, ev.BudgetReservationDecided]], now: datetime
                                   ) -> list[Record]:
    """``decision.recorded`` for pending decisions this transaction settled (issued, denied, paced, expired),
    read back from the decisions it just updated. ``liabilities``: the issued ones' split."""
    if not compensation_ids:
        return []
    by_reservation = {answer.compensation_id: env for env, answer in env_of.values()}
    out: list[Record] = []
    for row in await persistence.settled_decisions(conn, compensation_ids):
        inputs = row["inputs"] or {}
        cid = row["compensation_id"]
        issued = row["outcome"] == Outcome.ISSUED.value
        payload = outgoing.decision_recorded(
            ticket_id=row["ticket_id"], order_id=row["order_id"], buyer_id=row["buyer_id"],
            seller_id=inputs.get("seller_id"), carrier_id=inputs.get("carrier_id"), reason=row["reason"],
            ticket_occurred_at=row["ticket_occurred_at"], shadow=False, outcome=row["outcome"],
            failed_rule=row["failed_rule"], detail=row["detail"], strategy_id=row["strategy_id"],
            strategy_version=row["strategy_version"], tier=row["tier"], kind=row["kind"],
            amount_minor=row["issued_minor"] if issued else row["proposed_minor"], currency=row["currency"],
            liability=liabilities.get(cid, ()) if issued else (), compensation_id=cid)
        cause = by_reservation.get(cid)
        out.append(outgoing.decision_recorded_record(
            payload, event_id=outgoing.decision_event_id(row["ticket_id"], row["strategy_id"], False),
            region=row["region"], occurred_at=now, produced_at=now,
            correlation_id=row["correlation_id"] or (cause.correlation_id if cause else cid),
            causation_id=cause.event_id if cause else None, traceparent=cause.traceparent if cause else None))
    return out


def count_expired(expired: Sequence[dict[str, Any]], by: str) -> None:
    """Metrics and a log line for compensations that expired (``persistence.expire_pending`` rows)."""
    if not expired:
        return
    decided: Counter[tuple[str, str]] = Counter()
    for row in expired:
        decided[(row["region"], row["strategy_id"])] += 1
    for (region, strategy), n in decided.items():
        metrics.DECISIONS.labels(region, strategy, Outcome.RESERVATION_EXPIRED.value, "active").inc(n)
        metrics.RESERVATIONS_EXPIRED.labels(region, by).inc(n)
    log.warning("budget reservations expired before an answer was applied; nothing issued",
                extra={"count": len(expired), "by": by,
                       "compensation_ids": [r["compensation_id"] for r in expired[:20]]})


class SagaTimeouts:
    """The saga's sweeper. Expires pending compensations whose reservation expired (nothing issued, no more
    re-sends; the ledger voids the unused reservation after that expiry plus its grace), then re-sends
    reservation requests the ledger has not answered within the timeout (same reservation id, new event id:
    the ledger answers a repeat from the reservation's current state, denied ``reservation_expired`` once
    it voided the hold)."""

    def __init__(self, engine: AsyncEngine, timeout_seconds: float, interval_seconds: float,
                 batch: int = 500, on_enqueued: Any = None) -> None:
        self.engine = engine
        self.timeout = timeout_seconds
        self.interval = interval_seconds
        self.batch = batch
        self.on_enqueued = on_enqueued
        self.last_expired: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One pass; returns how many requests it re-sent (``last_expired`` holds what it expired)."""
        async with self.engine.begin() as conn:
            self.last_expired = await persistence.expire_pending(conn, limit=self.batch)
            rows = await persistence.claim_unanswered(conn, self.timeout, self.batch)
            envelopes = []
            for r in rows:
                request = ev.BudgetReservationRequested.model_validate(r["request"])
                envelopes.append(make_envelope(
                    "budget.reservation_requested", request, source=SOURCE, region=r["region"],
                    occurred_at=datetime.now(UTC), event_id=f"{r['reservation_id']}.{r['attempts']}",
                    correlation_id=r["correlation_id"] or r["reservation_id"]))
            await enqueue(conn, envelopes)
            await enqueue_records(conn, await settled_decision_records(
                conn, [r["compensation_id"] for r in self.last_expired], {}, env_of={}, now=datetime.now(UTC)))
            pending, oldest = await persistence.saga_backlog(conn)
        metrics.SAGA_PENDING.set(pending)
        metrics.SAGA_OLDEST.set(oldest)
        count_expired(self.last_expired, "sweeper")
        if envelopes:
            metrics.SAGA_RESENDS.inc(len(envelopes))
            log.warning("re-sent unanswered budget reservations", extra={"count": len(envelopes)})
            if self.on_enqueued is not None:
                self.on_enqueued()
        return len(envelopes)

    async def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.run_once()
                except Exception:
                    log.exception("saga timeout check failed; retrying next interval")

        self._task = asyncio.create_task(loop(), name="auto_comp-saga-timeouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
