"""auto_comp's batch handlers: tickets -> decisions, issued from budget allowances in the same transaction;
the ledger's grants; and the allowance keeper (ADR 0012).

A ticket is decided and, when it qualifies and its allowance covers it, issued in ONE transaction: the
allowance row is locked and spent from (a conditional update: open, granted covers it, ``close_at`` ahead),
the voucher is issued, the decision recorded and ``compensation.issued`` (naming the allowance) put in the
outbox. A ticket whose allowance cannot cover it yet waits: its decision is ``pending_budget`` and its
compensation ``pending`` in its allowance key's queue; the ledger's answer (``GrantHandler``) or the keeper
finishes it, first come first served. Nothing lives only in process memory: a killed consumer's allowance
and waiting tickets are taken over by the partition's next owner or by any replica's keeper.

Lock order of every writer: buyer guard rows (tickets only) -> allowance rows (by id) -> waiting
compensation rows.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.auto_comp import metrics, outgoing, persistence
from services.auto_comp.domain.allowance import (
    Allowance,
    Take,
    TakeKind,
    apply_answer,
    close_reason,
    plan_request,
    take,
)
from services.auto_comp.domain.engine import (
    Evaluation,
    Granted,
    Outcome,
    PartyShare,
    Proposal,
    TicketEvaluation,
    Verdict,
    evaluate_ticket,
    settle,
    split_liability,
)
from services.auto_comp.domain.model import Mode, StrategySet
from services.auto_comp.store import StrategyStore
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.kafka import Delivered
from shared.logging import log_event
from shared.money import Money
from shared.outbox import Record, enqueue_records
from shared.periodic import PeriodicTask
from shared.periods import period_bounds, period_of
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

LEGACY_PARTITION = -1  # the queue of compensations left pending by the per-voucher saga (migration 0006)


def compensation_id_for(ticket_id: str, strategy_id: str) -> str:
    """Deterministic, so a ticket replayed after a crash maps to the same compensation.

    ``"ac-" + str(uuid.uuid5(_NAMESPACE, ticket_id + "\\x1f" + strategy_id))``, written out (a unit test
    proves they are equal): the hot path makes one per proposal."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + f"{ticket_id}\x1f{strategy_id}".encode(), usedforsecurity=False).digest()
    x = f"{int.from_bytes(digest[:16]) & _UUID5_CLEAR | _UUID5_SET:032x}"
    return f"ac-{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_CODES: list[str] = []  # drawn ahead, in blocks
_CODE_BLOCK = 256
os.register_at_fork(after_in_child=_CODES.clear)  # a forked process never hands out its parent's codes


def new_voucher_code() -> str:
    """120 random bits in Crockford-free base32: unguessable, and safe in any Identifier field.

    Drawn a block at a time (one random read and one encoding per 256 codes: 15 bytes encode to exactly
    24 characters, so the block splits into independent codes); each is handed out once."""
    while True:
        try:
            return _CODES.pop()  # atomic: no two callers get the same code, whatever thread they run on
        except IndexError:
            block = base64.b32encode(secrets.token_bytes(15 * _CODE_BLOCK)).decode()
            _CODES.extend("V" + block[i:i + 24] for i in range(0, len(block), 24))


@dataclass(frozen=True)
class Rules:
    """How auto_comp spends allowances (settings, ADR 0012)."""

    group: str  # consumer group of the tickets: allowances are owned per partition of it
    granularity: str = "month"  # budget period, as the ledger's LEDGER_BUDGET_PERIOD
    safety: timedelta = timedelta(seconds=5)  # spending stops this long before an allowance expires
    horizon: timedelta = timedelta(seconds=30)  # a request asks for this long's spend at the current rate

    def period(self, region: str, now: datetime) -> tuple[str, datetime]:
        """The budget period spends go to now, and its end. Within ``safety`` of a period's end, the next
        one: its allowance cannot be spent any more."""
        reg = region_of(region)
        period = period_of(now + self.safety, reg, self.granularity)
        return period, period_bounds(period, reg)[1]

    def owner(self, partition: int) -> str:
        return f"{self.group}:{partition}" if partition >= 0 else f"{self.group}:saga-upgrade"


Key = tuple[str, str, int, int]
Queue = tuple[str, int, int]  # region, partition, pacing percent


def pacing_of(p: Proposal) -> int:
    """The pacing percent of a proposal's strategy; 100 (the pace line never binds) when not paced."""
    pct = p.strategy.budget.pacing_allowance_percent
    return 100 if pct is None else pct


class Budget:
    """The allowances one transaction holds (locked), and the events their changes produce."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.now = datetime.now(UTC)
        self.by_id: dict[str, Allowance] = {}
        self.by_key: dict[Key, Allowance] = {}
        self.records: list[Record] = []  # allowance requests and returns, for the outbox
        self.returned: list[dict[str, Any]] = []

    def _add(self, rows: dict[str, Allowance]) -> None:
        for a in rows.values():
            self.by_id[a.allowance_id] = a
            if a.open:
                self.by_key[a.key] = a

    async def lock(self, conn: AsyncConnection, keys: Iterable[Key] = (), ids: Iterable[str] = ()) -> Budget:
        """Lock the open allowances of ``keys`` and the allowances named by ``ids``; ``now`` is the
        database's clock from here on (the one the spend's condition uses)."""
        self.now, rows = await persistence.lock_allowances(conn, keys=keys, ids=ids)
        self._add(rows)
        return self

    async def ensure(self, conn: AsyncConnection, keys: Iterable[Key]) -> None:
        """Every key has an open, unexpired allowance: expired ones are closed (whoever touches a key first
        closes it), missing ones opened and locked."""
        keys = set(keys)
        await self.close(conn, [a for a in self.by_key.values() if a.key in keys and a.expired(self.now)], None)
        missing = {k for k in keys if k not in self.by_key}
        if missing:
            await persistence.open_allowances(conn, [self._new(k) for k in sorted(missing)])
            _, more = await persistence.lock_allowances(conn, keys=missing)
            self._add(more)

    def _new(self, key: Key) -> Allowance:
        region, period, partition, pacing = key
        end = period_bounds(period, region_of(region))[1]
        return Allowance(f"al-{region}-{period}-p{partition}-{uuid.uuid4().hex[:12]}", region, period, partition,
                         pacing, region_of(region).currency, self.rules.owner(partition),
                         close_at=end - self.rules.safety, new=True)

    async def close(self, conn: AsyncConnection, allowances: Sequence[Allowance], reason: str | None) -> None:
        """Close allowances now (no spend can follow: the spend's condition is an open row) and report
        exactly what each spent to the ledger."""
        closing = [a for a in allowances if a.open]
        if not closing:
            return
        reasons = [reason or close_reason(a, self.now, period_bounds(a.period, region_of(a.region))[1],
                                          self.rules.safety) or "expired" for a in closing]
        await persistence.save_allowances(conn, closing)  # what it learnt first (an answer applied just now)
        rows = await persistence.close_allowances(conn, [a.allowance_id for a in closing], reasons)
        for r in rows:
            self.returned.append(r)
            self.records.append(outgoing.allowance_returned_record(
                allowance_id=r["allowance_id"], region=r["region"], period=r["period"], currency=r["currency"],
                spent_minor=r["spent_minor"], spent_count=r["spent_count"], reason=r["close_reason"],
                closed_at=r["closed_at"]))
        for a in closing:
            a.open = False
            if self.by_key.get(a.key) is a:
                del self.by_key[a.key]

    async def write(self, conn: AsyncConnection) -> None:
        """Requests the allowances need now, then their spends, requests and answers in one statement."""
        for a in self.by_id.values():
            if a.open and plan_request(a, self.now, horizon=self.rules.horizon):
                self.records.append(_request_record(a, self.now))
        await persistence.save_allowances(conn, [a for a in self.by_id.values() if a.open])

    def count(self) -> None:
        for a in self.by_id.values():
            if a.request_now:
                why = "waiting" if a.waiting else ("first" if a.request_seq == 1 else "ahead")
                metrics.ALLOWANCE_REQUESTS.labels(a.region, why).inc()
        for r in self.returned:
            metrics.ALLOWANCE_RETURNS.labels(r["region"], r["close_reason"]).inc()


def _request_record(a: Allowance, now: datetime) -> Record:
    return outgoing.allowance_requested_record(
        allowance_id=a.allowance_id, seq=a.request_seq, attempt=a.request_attempts, region=a.region,
        period=a.period, pacing_percent=a.pacing_percent, at_least_minor=a.request_at_least,
        wanted_minor=a.request_wanted, currency=a.currency, owner=a.owner, occurred_at=now)


# ------------------------------------------------------------------ issuing


def _issue(*, comp_id: str, ticket_id: str, order_id: str, buyer_id: str, region: str, strategy_id: str,
           strategy_version: int, reason: str, kind: str, amount: int, currency: str, shares: Sequence[PartyShare],
           min_spend_minor: int | None, valid_until: datetime | None, allowance: Allowance, now: datetime,
           correlation_id: str, causation_id: str | None, traceparent: str | None
           ) -> tuple[str | None, Record, list[tuple[str, str | None, int]]]:
    """The voucher (or other kind) issued now for ``amount``: its code, the ``compensation.issued`` record
    and the liability split (party type, party id, minor)."""
    money = Money(amount, currency)
    # Parts sum exactly to the amount (largest remainder); the parties were unique in the strategy.
    liability = [(s.party.value, s.party_id, m.minor) for s, m in split_liability(money, shares) if m.minor > 0]
    voucher = kind == ev.CompensationKind.VOUCHER.value
    code = new_voucher_code() if voucher else None
    issued = outgoing.compensation_issued(
        compensation_id=comp_id, reservation_id=comp_id, ticket_id=ticket_id, order_id=order_id, buyer_id=buyer_id,
        strategy_id=strategy_id, strategy_version=strategy_version, reason=reason, kind=kind, amount_minor=amount,
        currency=currency, liability=liability, voucher_code=code,
        min_spend_minor=min_spend_minor if voucher else None, valid_until=valid_until,
        allowance_id=allowance.allowance_id)
    record = outgoing.compensation_issued_record(
        issued, region=region, event_id=f"{comp_id}.issued", occurred_at=now, produced_at=now,
        correlation_id=correlation_id, causation_id=causation_id, traceparent=traceparent)
    return code, record, liability


def _valid_until(kind: str, validity_days: int | None, now: datetime) -> datetime | None:
    """A voucher is valid for its strategy's days from the moment it is issued."""
    if kind != ev.CompensationKind.VOUCHER.value or not validity_days:
        return None
    return now + timedelta(days=validity_days)


def _issued_detail(amount: int, preferred: int, currency: str, a: Allowance) -> str:
    detail = f"issued {Money(amount, currency).format()} from budget allowance {a.allowance_id}"
    if amount != preferred:
        detail += (f" (degraded from {Money(preferred, currency).format()} by the budget: "
                   f"{a.detail or a.limited_by})")
    return detail


def _denied(t: Take, a: Allowance) -> tuple[Outcome, str]:
    assert t.reason is not None
    outcome = Outcome.PACED if t.reason is ev.AllowanceLimit.PACED else Outcome.BUDGET_DENIED
    until = f" until {a.retry_after.isoformat()}" if a.retry_after else ""
    return outcome, f"ledger {a.period}: {a.detail or t.reason.value}{until}"


class TicketHandler:
    """Decides every new ticket of a batch and issues what its allowance covers, in the batch's transaction.

    Deciding for a buyer is serialised by the buyer guard rows (the abuse guard), spending from an
    allowance by its row: a partition's allowance is normally touched by its owner alone."""

    consumes = frozenset({"ticket.opened"})

    def __init__(self, store: StrategyStore, rules: Rules) -> None:
        self.store = store
        self.rules = rules

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        started = time.perf_counter()
        strategies = self.store.current
        batch: dict[str, tuple[Envelope, ev.TicketOpened, int]] = {}
        for d in events:
            if isinstance(d.payload, ev.TicketOpened):
                batch.setdefault(d.payload.ticket_id, (d.envelope, d.payload, d.partition))
        if not batch:
            return
        await persistence.lock_buyers(conn, ((env.region, t.buyer_id) for env, t, _ in batch.values()))
        # Under the buyers' locks: a ticket another consumer decided meanwhile keeps its decision.
        for ticket_id in await persistence.decided_tickets(conn, list(batch)):
            del batch[ticket_id]
        if not batch:
            return
        items = sorted(batch.values(), key=lambda x: (x[0].occurred_at, x[1].ticket_id))
        window = timedelta(days=max((s.abuse_guard.window_days for s in strategies.strategies
                                     if s.abuse_guard), default=1))
        history = await persistence.buyer_history(
            conn, ((env.region, t.buyer_id) for env, t, _ in items),
            min(env.occurred_at for env, _, _ in items) - window, max(env.occurred_at for env, _, _ in items) + window)
        taken = await persistence.taken_orders(conn, [t.order_id for _, t, _ in items])
        own = await self._shadow_own_results(conn, strategies, items, window)
        evaluated = [(env, t, partition, evaluate_ticket(strategies, t, region_of(env.region), env.occurred_at))
                     for env, t, partition in items]
        clock = datetime.now(UTC)
        periods = {region: self.rules.period(region, clock)[0] for region in {env.region for env, *_ in items}}
        # The allowances this batch may spend from: of the tickets that pass every rule but the budget on
        # the history as loaded (a superset: one may still be capped by an earlier ticket of the batch).
        first = [self._verdict(r, env, t, history, taken) for env, t, _, r in evaluated]
        keys = {self._key(env.region, periods, partition, v.evaluation.proposal) for (env, _, partition, _), v
                in zip(evaluated, first, strict=True) if v.outcome is Outcome.PENDING_BUDGET}
        budget = await Budget(self.rules).lock(conn, keys=keys)
        await budget.ensure(conn, keys)
        now = budget.now
        # Tickets of these keys still wait although their allowance can move (no request in flight: a grant
        # applied, a shortage answer standing): finish them first, in order, so that nobody jumps the queue
        # and no queue depends on the keeper alone.
        stuck = [a for a in budget.by_key.values() if a.key in keys and a.waiting and not a.in_flight]
        if stuck:
            await finish_waiting(conn, budget, {(a.region, a.partition, a.pacing_percent) for a in stuck}, clock)
        decisions: list[dict[str, Any]] = []
        shadows: list[dict[str, Any]] = []
        comps: list[dict[str, Any]] = []
        # The outbox records of this batch, in its transaction: every compensation.issued, and the
        # decision.recorded of every final decision (live and shadow; a waiting one when it settles).
        out: list[Record] = []
        counts: Counter[tuple[str, str, str, str]] = Counter()
        issued_kinds: Counter[tuple[str, str, str]] = Counter()
        issued_amounts: Counter[tuple[str, str]] = Counter()
        # Buyers and orders an earlier ticket of the batch compensated: only their verdicts can have changed.
        touched_buyers: set[tuple[str, str]] = set()
        touched_orders: set[str] = set()
        for (env, ticket, partition, result), verdict in zip(evaluated, first, strict=True):
            if (env.region, ticket.buyer_id) in touched_buyers or ticket.order_id in touched_orders:
                verdict = self._verdict(result, env, ticket, history, taken)
            ticket_shadows = self._shadows(result.shadows, env, ticket, own)
            shadows.extend(ticket_shadows)
            out.extend(_shadow_records(env, ticket, ticket_shadows, result.shadows, now))
            decision = self._decision(strategies, verdict, env, ticket)
            decisions.append(decision)
            p = verdict.evaluation.proposal
            if verdict.outcome is not Outcome.PENDING_BUDGET or p is None:
                s = verdict.evaluation.strategy
                counts[(env.region, s.id if s else "none", decision["outcome"], "active")] += 1
                out.append(_decision_record(env, ticket, decision, p.kind.value if p else None, (), now))
                continue
            a = budget.by_key[self._key(env.region, periods, partition, p)]
            tiers = [p.amount.minor, *(m.minor for m in p.fallback_amounts)]
            t = take(a, tiers, now)
            comp = self._compensation(p, env, ticket, partition, a)
            decision["compensation_id"] = comp["compensation_id"]
            if t.kind is TakeKind.DENY:
                outcome, detail = _denied(t, a)
                decision.update(outcome=outcome.value, failed_rule="budget", detail=detail)
                comp.update(status="denied", budget_period=a.period)
                comp["denial_reason"] = t.reason.value if t.reason else None
                counts[(env.region, p.strategy.id, outcome.value, "active")] += 1
                comps.append(comp)
                out.append(_decision_record(env, ticket, decision, p.kind.value, (), now))
                continue
            history.setdefault((env.region, ticket.buyer_id), []).append(Granted(env.occurred_at, p.amount))
            taken.add((ticket.order_id, p.scenario))
            touched_buyers.add((env.region, ticket.buyer_id))
            touched_orders.add(ticket.order_id)
            if t.kind is TakeKind.WAIT:
                decision["detail"] = f"waiting for budget: {p.amount.format()} from the {a.period} allowance"
                comps.append(comp)
                continue
            valid_until = _valid_until(p.kind.value, p.validity_days, now)
            code, record, liability = _issue(
                comp_id=comp["compensation_id"], ticket_id=ticket.ticket_id, order_id=ticket.order_id,
                buyer_id=ticket.buyer_id, region=env.region, strategy_id=p.strategy.id,
                strategy_version=p.strategy.version, reason=ticket.reason.value, kind=p.kind.value,
                amount=t.amount, currency=p.amount.currency, shares=p.shares,
                min_spend_minor=comp["min_spend_minor"], valid_until=valid_until, allowance=a, now=now,
                correlation_id=env.correlation_id, causation_id=env.event_id, traceparent=env.traceparent)
            out.append(record)
            comp.update(status="issued", issued_minor=t.amount, voucher_code=code, budget_period=a.period,
                        allowance_id=a.allowance_id, expires_at=valid_until, settled_at=now)
            comps.append(comp)
            decision.update(outcome=Outcome.ISSUED.value, issued_minor=t.amount,
                            detail=_issued_detail(t.amount, tiers[0], p.amount.currency, a))
            out.append(_decision_record(env, ticket, decision, p.kind.value, liability, now))
            counts[(env.region, p.strategy.id, Outcome.ISSUED.value, "active")] += 1
            issued_kinds[(env.region, p.strategy.id, p.kind.value)] += 1
            issued_amounts[(env.region, p.amount.currency)] += t.amount
        await budget.write(conn)
        await persistence.insert_decisions(conn, decisions)
        await persistence.insert_shadow_decisions(conn, shadows)
        await persistence.insert_compensations(conn, comps)
        await enqueue_records(conn, [*out, *budget.records])
        budget.count()
        # One INFO line per decision (sampled by correlation id, LOG_EVENTS_PERCENT): `make logs` follows a ticket.
        for (env, _, _, _), decision in zip(evaluated, decisions, strict=True):
            log_event(log, "ticket decided", env.correlation_id, ticket_id=decision["ticket_id"], region=env.region,
                      outcome=decision["outcome"], strategy_id=decision.get("strategy_id"),
                      failed_rule=decision.get("failed_rule"), issued_minor=decision.get("issued_minor"),
                      compensation_id=decision.get("compensation_id"))
        latency: dict[str, Any] = {}
        for env, _, _, _ in evaluated:
            hist = latency.get(env.region)
            if hist is None:
                hist = latency[env.region] = metrics.DECISION_LATENCY.labels(env.region)
            hist.observe(max(0.0, (now - env.produced_at).total_seconds()))
        for sh in shadows:
            counts[(sh["region"], sh["strategy_id"], sh["outcome"], "shadow")] += 1
        _count(counts, issued_kinds, issued_amounts)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    @staticmethod
    def _key(region: str, periods: dict[str, str], partition: int, p: Proposal | None) -> Key:
        assert p is not None
        return region, periods[region], partition, pacing_of(p)

    @staticmethod
    def _verdict(result: TicketEvaluation, env: Envelope, ticket: ev.TicketOpened,
                 history: dict[tuple[str, str], list[Granted]], taken: set[tuple[str, str]]) -> Verdict:
        p = result.live.proposal
        return settle(result.live, buyer_id=ticket.buyer_id, occurred_at=env.occurred_at,
                      order_taken=p is not None and (ticket.order_id, p.scenario) in taken,
                      history=history.get((env.region, ticket.buyer_id), []))

    @staticmethod
    def _decision(strategies: StrategySet, verdict: Verdict, env: Envelope, ticket: ev.TicketOpened
                  ) -> dict[str, Any]:
        e = verdict.evaluation
        p = e.proposal
        s = e.strategy
        return {
            "ticket_id": ticket.ticket_id, "region": env.region, "order_id": ticket.order_id,
            "buyer_id": ticket.buyer_id, "reason": ticket.reason.value, "outcome": verdict.outcome.value,
            "failed_rule": verdict.failed_rule, "detail": verdict.detail,
            "strategy_id": s.id if s else None, "strategy_version": s.version if s else None,
            "config_version": strategies.version, "scenario": p.scenario if p else None,
            "tier": p.tier if p else None, "currency": ticket.order_amount.currency,
            "proposed_minor": p.amount.minor if p else None, "compensation_id": None, "issued_minor": None,
            "inputs": {**e.inputs, "ticket_occurred_at": env.occurred_at.isoformat(),
                       "liability_rule": p.liability_rule.value if p else None,
                       "seller_id": ticket.seller_id, "carrier_id": ticket.carrier_id},
            "event_id": env.event_id, "ticket_occurred_at": env.occurred_at,
        }

    @staticmethod
    def _compensation(p: Proposal, env: Envelope, ticket: ev.TicketOpened, partition: int, a: Allowance
                      ) -> dict[str, Any]:
        return {
            "compensation_id": compensation_id_for(ticket.ticket_id, p.strategy.id), "ticket_id": ticket.ticket_id,
            "strategy_id": p.strategy.id, "strategy_version": p.strategy.version, "order_id": ticket.order_id,
            "scenario": p.scenario, "buyer_id": ticket.buyer_id, "region": env.region,
            "reason": ticket.reason.value, "kind": p.kind.value, "currency": p.amount.currency,
            "status": "pending", "requested_minor": p.amount.minor,
            "fallback_minor": [m.minor for m in p.fallback_amounts], "liability_rule": p.liability_rule.value,
            "shares": [{"party": x.party.value, "id": x.party_id, "percent": x.percent} for x in p.shares],
            "min_spend_minor": p.min_spend.minor if p.min_spend is not None else None, "expires_at": None,
            "correlation_id": env.correlation_id, "ticket_occurred_at": env.occurred_at, "allowance_id": None,
            "partition": partition, "pacing_percent": a.pacing_percent, "validity_days": p.validity_days,
            "issued_minor": None, "voucher_code": None, "budget_period": None, "settled_at": None,
        }

    @staticmethod
    async def _shadow_own_results(conn: AsyncConnection, strategies: StrategySet,
                                  items: Sequence[tuple[Envelope, ev.TicketOpened, int]], window: timedelta
                                  ) -> _ShadowResults:
        """The shadow strategies' own earlier would-issue results for this batch's buyers and orders (read
        only when a shadow strategy exists: the live path pays nothing for them otherwise)."""
        if not any(s.mode is Mode.SHADOW for s in strategies.strategies):
            return _ShadowResults({}, set())
        history = await persistence.shadow_history(
            conn, ((env.region, t.buyer_id) for env, t, _ in items),
            min(env.occurred_at for env, _, _ in items) - window, max(env.occurred_at for env, _, _ in items) + window)
        return _ShadowResults(history,
                              await persistence.shadow_taken_orders(conn, [t.order_id for _, t, _ in items]))

    @staticmethod
    def _shadows(evaluations: Sequence[Evaluation], env: Envelope, ticket: ev.TicketOpened, own: _ShadowResults
                 ) -> list[dict[str, Any]]:
        """Shadow strategies: the full decision, recorded, never issued. Each shadow's abuse guard and
        one-per-order rule count its own earlier would-issue results (not the live compensations, which it
        would have replaced), exactly as the backtest does, so the two agree on the same tickets."""
        out = []
        for e in evaluations:
            assert e.strategy is not None
            p = e.proposal
            sid = e.strategy.id
            mine = own.history.setdefault((env.region, ticket.buyer_id, sid), [])
            v = settle(e, buyer_id=ticket.buyer_id, occurred_at=env.occurred_at,
                       order_taken=(ticket.order_id, sid) in own.orders, history=mine)
            if v.outcome is Outcome.WOULD_ISSUE and p is not None:
                # Later tickets of this batch see it too, as later batches will through the table.
                mine.append(Granted(env.occurred_at, p.amount))
                own.orders.add((ticket.order_id, sid))
            out.append({"ticket_id": ticket.ticket_id, "strategy_id": sid,
                        "strategy_version": e.strategy.version, "region": env.region, "outcome": v.outcome.value,
                        "failed_rule": v.failed_rule, "detail": v.detail, "tier": p.tier if p else None,
                        "currency": ticket.order_amount.currency, "proposed_minor": p.amount.minor if p else None,
                        "inputs": e.inputs, "buyer_id": ticket.buyer_id, "order_id": ticket.order_id,
                        "scenario": p.scenario if p else e.strategy.scenario,
                        "ticket_occurred_at": env.occurred_at})
        return out


@dataclass(slots=True)
class _ShadowResults:
    """Would-issue results per (region, buyer, shadow strategy) and the (order, shadow strategy) pairs."""

    history: dict[tuple[str, str, str], list[Granted]]
    orders: set[tuple[str, str]]


def _count(counts: Counter[tuple[str, str, str, str]], kinds: Counter[tuple[str, str, str]],
           amounts: Counter[tuple[str, str]]) -> None:
    for labels, n in counts.items():
        metrics.DECISIONS.labels(*labels).inc(n)
    for kind_labels, n in kinds.items():
        metrics.ISSUED.labels(*kind_labels).inc(n)
    for amount_labels, minor in amounts.items():
        metrics.ISSUED_AMOUNT.labels(*amount_labels).inc(minor)


# ------------------------------------------------------------------ decision.recorded


def _facts(env: Envelope, ticket: ev.TicketOpened) -> dict[str, Any]:
    return {"ticket_id": ticket.ticket_id, "order_id": ticket.order_id, "buyer_id": ticket.buyer_id,
            "seller_id": ticket.seller_id, "carrier_id": ticket.carrier_id, "reason": ticket.reason.value,
            "ticket_occurred_at": env.occurred_at, "currency": ticket.order_amount.currency,
            "order_minor": ticket.order_amount.amount_minor}


def _decision_record(env: Envelope, ticket: ev.TicketOpened, decision: dict[str, Any], kind: str | None,
                     liability: Sequence[tuple[str, str | None, int]], now: datetime) -> Record:
    """``decision.recorded`` of a live decision final in its ticket's own transaction."""
    issued = decision["outcome"] == Outcome.ISSUED.value
    payload = outgoing.decision_recorded(
        **_facts(env, ticket), shadow=False, outcome=decision["outcome"], failed_rule=decision["failed_rule"],
        detail=decision["detail"], strategy_id=decision["strategy_id"],
        strategy_version=decision["strategy_version"], tier=decision["tier"], kind=kind,
        amount_minor=decision["issued_minor"] if issued else decision["proposed_minor"],
        liability=liability if issued else (), compensation_id=decision["compensation_id"])
    return outgoing.decision_recorded_record(
        payload, event_id=outgoing.decision_event_id(ticket.ticket_id, decision["strategy_id"], False),
        region=env.region, occurred_at=now, produced_at=now, correlation_id=env.correlation_id,
        causation_id=env.event_id, traceparent=env.traceparent)


def _shadow_records(env: Envelope, ticket: ev.TicketOpened, shadows: Sequence[dict[str, Any]],
                    evaluations: Sequence[Evaluation], now: datetime) -> list[Record]:
    """``decision.recorded`` of each shadow strategy's would-be decision (never issued)."""
    out = []
    for shadow, evaluation in zip(shadows, evaluations, strict=True):
        p = evaluation.proposal
        payload = outgoing.decision_recorded(
            **_facts(env, ticket), shadow=True, outcome=shadow["outcome"], failed_rule=shadow["failed_rule"],
            detail=shadow["detail"], strategy_id=shadow["strategy_id"], strategy_version=shadow["strategy_version"],
            tier=shadow["tier"], kind=p.kind.value if p else None, amount_minor=shadow["proposed_minor"])
        out.append(outgoing.decision_recorded_record(
            payload, event_id=outgoing.decision_event_id(ticket.ticket_id, shadow["strategy_id"], True),
            region=env.region, occurred_at=now, produced_at=now, correlation_id=env.correlation_id,
            causation_id=env.event_id, traceparent=env.traceparent))
    return out


async def settled_decision_records(conn: AsyncConnection, compensation_ids: Sequence[str],
                                   liabilities: dict[str, list[tuple[str, str | None, int]]], now: datetime
                                   ) -> list[Record]:
    """``decision.recorded`` for waiting decisions this transaction settled (issued or denied from their
    allowance), read back from the decisions it just updated. ``liabilities``: the issued ones' split."""
    if not compensation_ids:
        return []
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
            liability=liabilities.get(cid, ()) if issued else (), compensation_id=cid,
            order_minor=inputs.get("order_amount_minor"))
        out.append(outgoing.decision_recorded_record(
            payload, event_id=outgoing.decision_event_id(row["ticket_id"], row["strategy_id"], False),
            region=row["region"], occurred_at=now, produced_at=now, correlation_id=row["correlation_id"] or cid,
            causation_id=None, traceparent=None))
    return out


# ------------------------------------------------------------------ waiting tickets


async def settle_waiting(conn: AsyncConnection, rules: Rules, queues: Iterable[Queue] = (),
                         answers: Sequence[ev.BudgetAllowanceDecided] = ()) -> dict[str, int]:
    """Apply the ledger's answers, then finish the waiting tickets of the affected queues (and of
    ``queues``) in ticket order: issue what the allowances now cover, deny what the ledger said cannot be
    had, ask for more for the rest. Returns counts (issued, denied, still waiting)."""
    clock = datetime.now(UTC)
    queues = set(queues)
    answered_ids = {a.allowance_id for a in answers}
    if answered_ids:
        _, answered = await persistence.lock_allowances(conn, ids=answered_ids)
        queues |= {(a.region, a.partition, a.pacing_percent) for a in answered.values()}
    keys = {(r, rules.period(r, clock)[0], n, c) for r, n, c in queues}
    budget = await Budget(rules).lock(conn, keys=keys, ids=answered_ids)
    now = budget.now
    for answer in answers:
        a = budget.by_id.get(answer.allowance_id)
        if a is None:
            continue  # not ours (another deployment on the same topic), or long gone
        end = period_bounds(a.period, region_of(a.region))[1]
        applied = apply_answer(
            a, seq=answer.request_seq, granted=answer.granted.amount_minor,
            granted_total=answer.granted_total.amount_minor, expires_at=answer.expires_at,
            limited_by=answer.limited_by, retry_after=answer.retry_after, detail=answer.detail, now=now,
            safety=rules.safety, period_end=end)
        metrics.ALLOWANCE_ANSWERS.labels(a.region, answer.outcome.value,
                                         answer.limited_by.value if answer.limited_by else "").inc()
        if applied and a.granted and a.expired(now):
            await budget.close(conn, [a], None)  # granted too late to be spent: straight back
    await budget.ensure(conn, keys)
    done = await finish_waiting(conn, budget, queues, clock)
    await budget.write(conn)
    await enqueue_records(conn, budget.records)
    budget.count()
    return done


async def finish_waiting(conn: AsyncConnection, budget: Budget, queues: Iterable[Queue], clock: datetime,
                         chunk: int = 2_000) -> dict[str, int]:
    """Finish the waiting tickets of ``queues`` in ticket order from the allowances ``budget`` holds (locked):
    issue what they cover, deny what the ledger said cannot be had, leave the rest waiting (its allowance
    asks for more when the budget is written). The whole queue, chunk by chunk, until a ticket has to wait.
    Writes the tickets' rows and ``compensation.issued`` events; the allowances are the caller's to write."""
    rules = budget.rules
    queues = set(queues)
    queued_keys = {(r, rules.period(r, clock)[0], n, c) for r, n, c in queues}
    for a in budget.by_key.values():
        if a.key in queued_keys:
            a.waiting = False  # the queue is worked now, in order: take() queues whoever cannot go yet
    done = {"issued": 0, "denied": 0, "waiting": 0}
    while True:
        waiting = await persistence.lock_waiting(conn, queues, limit=chunk)
        counted = await _finish(conn, budget, waiting, clock)
        for k, v in counted.items():
            done[k] += v
        if counted["waiting"] or len(waiting) < chunk:
            return done


async def _finish(conn: AsyncConnection, budget: Budget, waiting: list[dict[str, Any]], clock: datetime
                  ) -> dict[str, int]:
    rules, now = budget.rules, budget.now
    issued: list[dict[str, Any]] = []
    denied: list[dict[str, Any]] = []
    out: list[Record] = []
    liabilities: dict[str, list[tuple[str, str | None, int]]] = {}
    counts: Counter[tuple[str, str, str, str]] = Counter()
    kinds: Counter[tuple[str, str, str]] = Counter()
    amounts: Counter[tuple[str, str]] = Counter()
    still = 0
    for c in waiting:
        a = budget.by_key.get((c["region"], rules.period(c["region"], clock)[0], c["partition"], c["pacing_percent"]))
        if a is None or a.currency != c["currency"]:
            still += 1
            continue
        tiers = [c["requested_minor"], *c["fallback_minor"]]
        t = take(a, tiers, now)
        if t.kind is TakeKind.WAIT:
            still += 1
            continue
        if t.kind is TakeKind.DENY:
            outcome, detail = _denied(t, a)
            denied.append({"compensation_id": c["compensation_id"], "ticket_id": c["ticket_id"],
                           "outcome": outcome.value, "denial_reason": t.reason.value if t.reason else None,
                           "budget_period": a.period, "detail": detail})
            counts[(c["region"], c["strategy_id"], outcome.value, "active")] += 1
            continue
        shares = [PartyShare(ev.PartyType(s["party"]), s["id"], s["percent"]) for s in c["shares"]]
        valid_until = _valid_until(c["kind"], c["validity_days"], now)
        if valid_until is None and c["validity_days"] is None and c["kind"] == ev.CompensationKind.VOUCHER.value:
            valid_until = c["expires_at"]  # left pending by the saga: the validity it was decided with
        code, record, liability = _issue(
            comp_id=c["compensation_id"], ticket_id=c["ticket_id"], order_id=c["order_id"], buyer_id=c["buyer_id"],
            region=c["region"], strategy_id=c["strategy_id"], strategy_version=c["strategy_version"],
            reason=c["reason"], kind=c["kind"], amount=t.amount, currency=c["currency"], shares=shares,
            min_spend_minor=c["min_spend_minor"], valid_until=valid_until, allowance=a, now=now,
            correlation_id=c["correlation_id"] or c["compensation_id"], causation_id=None, traceparent=None)
        out.append(record)
        liabilities[c["compensation_id"]] = liability
        issued.append({"compensation_id": c["compensation_id"], "ticket_id": c["ticket_id"], "issued_minor": t.amount,
                       "voucher_code": code, "budget_period": a.period, "allowance_id": a.allowance_id,
                       "valid_until": valid_until,
                       "detail": _issued_detail(t.amount, tiers[0], c["currency"], a)})
        counts[(c["region"], c["strategy_id"], Outcome.ISSUED.value, "active")] += 1
        kinds[(c["region"], c["strategy_id"], c["kind"])] += 1
        amounts[(c["region"], c["currency"])] += t.amount
        metrics.END_TO_END.labels(c["region"]).observe(max(0.0, (now - c["ticket_occurred_at"]).total_seconds()))
    won = await persistence.mark_issued(conn, issued)
    lost = [row["compensation_id"] for row in issued if row["compensation_id"] not in won]
    if lost:  # rows were locked above: nothing else can have settled them
        raise RuntimeError(f"waiting compensations {lost[:5]} changed under their row locks")
    denied_ids = await persistence.mark_denied(conn, denied)
    # Each decision this settled is announced with it (decision.recorded), read back as recorded now.
    settled = [row["compensation_id"] for row in issued] + [r["compensation_id"] for r in denied
                                                             if r["compensation_id"] in denied_ids]
    await enqueue_records(conn, out + await settled_decision_records(conn, settled, liabilities, now))
    _count(counts, kinds, amounts)
    # The final outcome of a ticket that waited (its first line said pending_budget): `make logs` follows a
    # ticket to the end whether it was issued at decision time or later from its allowance.
    by_id = {c["compensation_id"]: c for c in waiting}
    for row, outcome in [*((r, Outcome.ISSUED.value) for r in issued),
                         *((r, r["outcome"]) for r in denied if r["compensation_id"] in denied_ids)]:
        c = by_id[row["compensation_id"]]
        log_event(log, "ticket decided", c["correlation_id"] or c["compensation_id"], ticket_id=c["ticket_id"],
                  region=c["region"], outcome=outcome, strategy_id=c["strategy_id"],
                  failed_rule=None if outcome == Outcome.ISSUED.value else "budget",
                  issued_minor=row.get("issued_minor"), compensation_id=c["compensation_id"],
                  settled="from_allowance")
    return {"issued": len(issued), "denied": len(denied), "waiting": still}


class GrantHandler:
    """Applies the ledger's answers to allowance requests and finishes the tickets waiting for them."""

    consumes = frozenset({"budget.allowance_decided"})

    def __init__(self, rules: Rules) -> None:
        self.rules = rules

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        answers = [d.payload for d in events if isinstance(d.payload, ev.BudgetAllowanceDecided)]
        if answers:
            await settle_waiting(conn, self.rules, answers=answers)


# ------------------------------------------------------------------ closing and the keeper


async def close_partitions(engine: AsyncEngine, rules: Rules, partitions: Sequence[int], reason: str) -> int:
    """Close the open allowances of these partitions (revoked, or the consumer stops) and report what each
    spent. The next owner opens its own; tickets waiting in them wait for it (or for the keeper)."""
    if not partitions:
        return 0
    async with engine.begin() as conn:
        ids = await persistence.open_of_partitions(conn, partitions)
        if not ids:
            return 0
        budget = await Budget(rules).lock(conn, ids=ids)
        await budget.close(conn, list(budget.by_id.values()), reason)
        await enqueue_records(conn, budget.records)
        budget.count()
    log.info("budget allowances closed", extra={"count": len(ids), "reason": reason, "partitions": list(partitions)})
    return len(ids)


class AllowanceKeeper(PeriodicTask):
    """Every replica, every AUTO_COMP_ALLOWANCE_CHECK_SECONDS: close allowances past their ``close_at``
    (whoever owned them: a killed consumer's come back to the ledger this way), re-send requests the
    ledger has not answered in time (same request, new event id), finish waiting tickets the handlers left
    (a safety net), and refresh the waiting gauges. Rows a batch holds are skipped, never waited for."""

    def __init__(self, engine: AsyncEngine, rules: Rules, *, interval: float, grant_timeout: float,
                 on_enqueued: Any = None) -> None:
        super().__init__("auto_comp-allowance-keeper", interval, self.run_once)
        self.engine, self.rules, self.grant_timeout, self.on_enqueued = engine, rules, grant_timeout, on_enqueued

    async def run_once(self) -> dict[str, int]:
        done = {"closed": 0, "resent": 0, "issued": 0, "denied": 0, "waiting": 0}
        async with self.engine.begin() as conn:
            due = await persistence.due_to_close(conn)
            if due:
                budget = await Budget(self.rules).lock(conn, ids=due)
                await budget.close(conn, [a for a in budget.by_id.values() if a.expired(budget.now)], None)
                await enqueue_records(conn, budget.records)
                budget.count()
                done["closed"] = len(budget.returned)
        async with self.engine.begin() as conn:
            late = await persistence.unanswered(conn, self.grant_timeout)
            if late:
                now, rows = await persistence.lock_allowances(conn, ids=late)
                records = []
                for a in rows.values():
                    if a.open and a.in_flight:
                        a.request_attempts += 1
                        a.requested_at = now
                        a.request_now = True
                        records.append(_request_record(a, now))
                        metrics.ALLOWANCE_REQUESTS.labels(a.region, "resend").inc()
                await persistence.save_allowances(conn, [a for a in rows.values() if a.request_now])
                await enqueue_records(conn, records)
                done["resent"] = len(records)
                if records:
                    log.warning("re-sent unanswered allowance requests", extra={"count": len(records)})
        async with self.engine.begin() as conn:
            queues = await persistence.waiting_queues(conn)
            if queues:
                done.update(await settle_waiting(conn, self.rules, queues))
            waiting, oldest = await persistence.waiting_backlog(conn)
        metrics.WAITING.set(waiting)
        metrics.WAITING_OLDEST.set(oldest)
        if any(done[k] for k in ("closed", "resent", "issued", "denied")) and self.on_enqueued is not None:
            self.on_enqueued()
        return done
