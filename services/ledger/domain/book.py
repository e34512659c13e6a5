"""The book: applies a batch of ledger events to in-memory state loaded for that batch.

The handler loads (and locks) exactly the budgets, allowances, reservations, compensations and parked
events the batch touches, applies every event here in delivery order (deterministic, no I/O), then writes the
result in a handful of statements. Everything a batch decides is therefore a pure function of the
loaded state and the events, which is what the property tests exercise.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from services.ledger.domain import journal
from services.ledger.domain.allowance import Allowance, GrantPolicy, size_grant
from services.ledger.domain.budget import BudgetState, crossed_thresholds, decide
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.money import Money
from shared.periods import InvalidPeriod, elapsed_fraction, period_bounds, period_of, validate_period
from shared.regions import region as region_of
from shared.vouchers import expired_early_by


class Rejected(Exception):
    """An event that can never apply; the handler dead-letters it with this reason."""


class HoldStatus(enum.StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    DENIED = "denied"


@dataclass
class Hold:
    """A budget reservation (pending transfer): state, not journal, so it may change."""

    reservation_id: str
    compensation_id: str
    region: str
    period: str
    currency: str
    kind: str
    ticket_id: str
    buyer_id: str
    status: HoldStatus
    requested: int
    decided: int  # amount granted by the decision (0 when denied); re-sent requests get this again
    amount: int  # currently held while pending; the issued amount once issued
    expires_at: datetime
    denial_reason: str | None = None
    issued_amount: int | None = None
    valid_until: datetime | None = None
    posted: int = 0
    released: int = 0
    breakage: int = 0
    closed_by: str | None = None
    requested_event_id: str = ""
    allowance_id: str | None = None  # opened from a budget allowance when its compensation was charged
    posting_tx_id: str | None = None  # the budget posting that carries its posted part
    new: bool = False
    dirty: bool = False


@dataclass
class Compensation:
    compensation_id: str
    region: str
    origin: str  # auto | manual
    kind: str
    amount: int
    currency: str
    period: str
    buyer_id: str
    reservation_id: str | None
    issued_event_id: str
    issued_at: datetime
    charge_seq: int = 0
    current_charge_tx: str | None = None
    current_shares: list[tuple[str, int]] = field(default_factory=list)
    current_amount: int = 0
    last_correction_id: str | None = None
    posting_tx_id: str | None = None  # manual compensations: the budget posting that carries it
    new: bool = False
    dirty: bool = False


class PostingItem(NamedTuple):
    """A part of a batch's budget posting: what one compensation posted, and where it is recorded."""

    key: tuple[str, str, str]  # region, period, currency
    owner: Hold | Compensation
    amount: int
    source_event_id: str
    occurred_at: datetime


@dataclass
class CorrectionRecord:
    correction_id: str
    compensation_id: str
    corrects_correction_id: str | None
    reversal_tx_id: str | None
    charge_tx_id: str | None
    corrected_amount: int
    source_event_id: str
    applied_at: datetime
    # Who decided it (the auditor, or the resolver of a dispute) and, for a dispute's resolution, who raised
    # the dispute and whose verdict it was: the lineage names everyone behind a money reversal.
    auditor_id: str | None = None
    dispute_raised_by: str | None = None
    disputed_auditor_id: str | None = None


@dataclass(frozen=True)
class EarlyExpiry:
    """A voucher reported expired before its validity ended (``shared.vouchers``): applied, and flagged."""

    compensation_id: str
    reservation_id: str
    region: str
    event_id: str
    correlation_id: str
    valid_until: datetime
    expired_at: datetime  # the expiry event's occurred_at
    early_by: timedelta


@dataclass
class ParkedEvent:
    event_id: str
    compensation_id: str
    envelope: Envelope
    payload: ev.Payload
    ref: Any = None  # where it came from (topic/partition/offset/raw), opaque here
    new: bool = False


@dataclass
class Alert:
    event_type: str  # budget.threshold_crossed | budget.exceeded
    cause: Envelope
    payload: ev.Payload


@dataclass
class Overrun:
    region: str
    period: str
    compensation_id: str
    limit: int
    used: int
    at: datetime


class BudgetStep(NamedTuple):  # immutable; a named tuple is cheap to build once per budget change
    key: tuple[str, str]
    env: Envelope | None  # the event that caused it; None for releases, which cannot raise usage
    reserved: int
    posted_auto: int
    posted_manual: int
    released: int
    breakage: int
    manual: str | None  # compensation id of a manual compensation (may overrun the budget)
    allotted: int = 0


@dataclass
class Outcome:
    transactions: list[journal.Transaction] = field(default_factory=list)
    decisions: list[tuple[Envelope, ev.BudgetReservationDecided]] = field(default_factory=list)
    # Answers to allowance requests (a repeated request gets the stored answer again), and the new ones to
    # store: (allowance id, request seq, request event id, answer).
    allowance_answers: list[tuple[Envelope, ev.BudgetAllowanceDecided]] = field(default_factory=list)
    new_grants: list[tuple[str, int, str, ev.BudgetAllowanceDecided]] = field(default_factory=list)
    returned: list[Allowance] = field(default_factory=list)  # allowances returned by this batch
    alerts: list[Alert] = field(default_factory=list)
    overruns: list[Overrun] = field(default_factory=list)
    corrections: list[CorrectionRecord] = field(default_factory=list)
    parked_done: list[str] = field(default_factory=list)
    parked_rejected: list[tuple[ParkedEvent, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (event id, why) for logs/metrics
    early_expiries: list[EarlyExpiry] = field(default_factory=list)


LIFECYCLE = (ev.VoucherRedeemed, ev.VoucherExpired, ev.VoucherRevoked)


class Book:
    def __init__(self, *, now: datetime, granularity: str = "month", park: bool = True, deltas: bool = False,
                 grace: timedelta = timedelta(0),
                 budgets: dict[tuple[str, str], BudgetState] | None = None,
                 holds: dict[str, Hold] | None = None,
                 compensations: dict[str, Compensation] | None = None,
                 parked: list[ParkedEvent] | None = None,
                 corrections: dict[str, CorrectionRecord] | None = None,
                 allowances: dict[str, Allowance] | None = None,
                 policy: GrantPolicy | None = None) -> None:
        self.now = now
        self.granularity = granularity
        self.park = park
        # The sweeper's grace (LEDGER_VOUCHER_GRACE_SECONDS): a repeated request is answered by the same rule
        # the sweeper voids by, so the answer never says "reserved" for a hold the sweeper would void.
        self.grace = grace
        self.budgets = budgets if budgets is not None else {}
        self.holds = holds if holds is not None else {}
        self.compensations = compensations if compensations is not None else {}
        self.parked: dict[str, list[ParkedEvent]] = {}
        for p in parked or []:
            self.parked.setdefault(p.compensation_id, []).append(p)
        self.corrections = corrections if corrections is not None else {}
        self.allowances = allowances if allowances is not None else {}
        self.policy = policy or GrantPolicy()
        self.out = Outcome()
        # Delta mode (no budget requests in the batch): budgets hold only this batch's changes; nothing
        # here depends on their absolute values except alerts, which ``replay`` decides later.
        self.deltas = deltas
        self.budget_steps: list[BudgetStep] = []
        self.postings: list[PostingItem] = []  # posted spend of this batch: one posting per budget at the end

    # ------------------------------------------------------------------ dispatch

    def apply(self, envelope: Envelope, payload: ev.Payload, ref: Any = None) -> None:
        """Apply one event; raises Rejected (state untouched) when it can never apply."""
        handler = _DISPATCH.get(type(payload))
        if handler is None:
            raise Rejected(f"the ledger does not handle {envelope.event_type}")
        try:
            handler(self, envelope, payload, ref)
        except (journal.UnbalancedTransaction, journal.UnknownAccount) as exc:
            raise Rejected(str(exc)) from exc

    def budget_key_for(self, envelope: Envelope) -> tuple[str, str]:
        return envelope.region, period_of(envelope.occurred_at, region_of(envelope.region), self.granularity)

    def _budget(self, region: str, period: str, currency: str) -> BudgetState:
        key = (region, period)
        b = self.budgets.get(key)
        if b is None:
            if not self.deltas:
                # Locked mode writes absolute values: a budget that was not loaded (and locked) first
                # would be overwritten with this batch's deltas. The handler loads every key it needs.
                raise RuntimeError(f"budget {region} {period} was not loaded for this batch")
            b = BudgetState(region, period, currency, None, exists=False)
            self.budgets[key] = b
        return b

    # ------------------------------------------------------------------ budget requests

    def _request(self, env: Envelope, p: ev.BudgetReservationRequested, _: Any) -> None:
        if self.deltas:
            raise RuntimeError("budget requests need the budget rows locked (not delta mode)")
        hold = self.holds.get(p.reservation_id)
        if hold is not None:
            if hold.compensation_id != p.compensation_id:
                raise Rejected(f"reservation {p.reservation_id} already exists for compensation "
                               f"{hold.compensation_id}, not {p.compensation_id}")
            self._reply_again(env, hold)  # never a second reservation
            return
        region = region_of(env.region)
        _, period = self.budget_key_for(env)
        budget = self.budgets.get((env.region, period))
        start, end = period_bounds(period, region)
        elapsed, total = elapsed_fraction(env.occurred_at, start, end)
        tiers = [p.amount.amount_minor, *(t.amount_minor for t in p.fallback_amounts)]
        decision = decide(budget, tiers, allowance_percent=p.pacing_allowance_percent,
                          elapsed=elapsed, total=total)
        granted = decision.amount or 0
        hold = Hold(p.reservation_id, p.compensation_id, env.region, period, p.amount.currency, p.kind.value,
                    p.ticket_id, p.buyer_id, HoldStatus.PENDING if granted else HoldStatus.DENIED,
                    requested=p.amount.amount_minor, decided=granted, amount=granted, expires_at=p.expires_at,
                    denial_reason=decision.denial.value if decision.denial else None,
                    requested_event_id=env.event_id, new=True)
        self.holds[hold.reservation_id] = hold
        if granted:
            assert budget is not None
            self._adjust(budget, env, reserved=granted)
        self._reply(env, hold)

    def _reply(self, env: Envelope, hold: Hold, denial: ev.DenialReason | None = None) -> None:
        if denial is None and hold.status is HoldStatus.DENIED:
            denial = ev.DenialReason(hold.denial_reason or "budget_exhausted")
        reserved = denial is None
        self.out.decisions.append((env, ev.BudgetReservationDecided(
            reservation_id=hold.reservation_id, compensation_id=hold.compensation_id,
            ticket_id=hold.ticket_id, buyer_id=hold.buyer_id,
            outcome=ev.ReservationOutcome.RESERVED if reserved else ev.ReservationOutcome.DENIED,
            denial_reason=denial,
            reserved_amount=ev.PositiveMoney(amount_minor=hold.decided, currency=hold.currency) if reserved
            else None,
            budget_period=hold.period)))

    def _reply_again(self, env: Envelope, hold: Hold) -> None:
        """Answer a repeated request (auto_comp re-sends when it had no answer) by the hold's state now.

        auto_comp issues on a "reserved" answer, so that answer must mean budget is behind the voucher:
        - issued against (pending voucher, posted, or closed since): consumed, so "reserved" with the first
          amount again; an idempotent replay, auto_comp has issued already and changes nothing;
        - pending and not issued: "reserved" while live; once past its expiry plus the grace it has lapsed
          (the sweeper voids exactly those, maybe not yet), so "denied: reservation_expired";
        - voided without an issue (the sweeper released it): "denied: reservation_expired";
        - denied: the same denial.
        The hold itself is not changed here: request batches do not take the compensation locks under which
        holds are written (ADR 0005 point 5); voiding a lapsed hold stays the sweeper's job.
        """
        if hold.status is HoldStatus.DENIED or hold.issued_amount is not None:
            self._reply(env, hold)
        elif hold.status is HoldStatus.PENDING and not lapsed_unissued(hold, self.now, self.grace):
            self._reply(env, hold)
        else:
            self._reply(env, hold, ev.DenialReason.RESERVATION_EXPIRED)

    # ------------------------------------------------------------------ budget allowances (ADR 0012)

    def _allowance_request(self, env: Envelope, p: ev.BudgetAllowanceRequested, _: Any) -> None:
        """Grant (hold against the budget at once) or deny; a repeated request gets its first answer again."""
        if self.deltas:
            raise RuntimeError("allowance requests need the budget rows locked (not delta mode)")
        a = self.allowances.get(p.allowance_id)
        currency = p.wanted.currency
        if a is None:
            a = Allowance(p.allowance_id, env.region, p.budget_period, currency, p.pacing_allowance_percent,
                          p.owner, new=True)
            self.allowances[a.allowance_id] = a
        elif (a.region, a.period, a.currency, a.pacing_percent) != (env.region, p.budget_period, currency,
                                                                    p.pacing_allowance_percent):
            raise Rejected(f"allowance {a.allowance_id} is for {a.region} {a.period} {a.currency} paced at "
                           f"{a.pacing_percent}%, not {env.region} {p.budget_period} {currency} at "
                           f"{p.pacing_allowance_percent}%")
        stored = a.answers.get(p.request_seq)
        if stored is not None:
            self.out.allowance_answers.append((env, stored))
            return
        at_least, wanted = p.at_least.amount_minor, p.wanted.amount_minor
        budget = self.budgets.get((a.region, a.period))
        pace = None
        expires: datetime | None
        limited: ev.AllowanceLimit | None
        retry: datetime | None
        if a.returned:
            amount, expires, limited, retry = 0, None, ev.AllowanceLimit.ALLOWANCE_CLOSED, self.now + self.policy.retry
            detail = f"allowance {a.allowance_id} was returned; ask under a new allowance"
        else:
            try:
                validate_period(a.period, self.granularity)
                start, end = period_bounds(a.period, region_of(a.region))
            except InvalidPeriod as exc:
                amount, expires, limited, retry = 0, None, ev.AllowanceLimit.NO_BUDGET, self.now + self.policy.retry
                detail = str(exc)
            else:
                g = size_grant(budget, at_least=at_least, wanted=wanted, pacing_percent=a.pacing_percent,
                               now=self.now, start=start, end=end, policy=self.policy)
                amount, expires, limited, retry, detail = g.amount, g.expires_at, g.limited_by, g.retry_after, g.detail
                if amount:
                    assert budget is not None
                    self._adjust(budget, env, allotted=amount)
                    a.granted += amount
                    a.expires_at = expires if a.expires_at is None or expires is None else max(a.expires_at, expires)
                if budget is not None and budget.limit is not None:
                    pace = ev.AllowancePace(
                        limit=ev.MoneyTotal(amount_minor=budget.limit, currency=currency),
                        used=ev.MoneyTotal(amount_minor=budget.used, currency=currency),
                        pacing_allowance_percent=a.pacing_percent,
                        pace_cap=ev.MoneyTotal(amount_minor=g.pace_cap, currency=currency),
                        period_start=start, period_end=end)
        answer = ev.BudgetAllowanceDecided(
            allowance_id=a.allowance_id, request_seq=p.request_seq, budget_period=a.period,
            outcome=ev.AllowanceOutcome.GRANTED if amount else ev.AllowanceOutcome.DENIED,
            granted=ev.MoneyTotal(amount_minor=amount, currency=currency),
            granted_total=ev.MoneyTotal(amount_minor=a.granted, currency=currency),
            expires_at=a.expires_at if amount else None, limited_by=limited,
            retry_after=retry if limited is not None else None, pace=pace, detail=detail)
        a.answers[p.request_seq] = answer
        a.last_seq, a.dirty = max(a.last_seq, p.request_seq), True
        self.out.allowance_answers.append((env, answer))
        self.out.new_grants.append((a.allowance_id, p.request_seq, env.event_id, answer))

    def _allowance_return(self, env: Envelope, p: ev.BudgetAllowanceReturned, _: Any) -> None:
        """auto_comp spends nothing more from it: release what it did not spend. Charges for what it spent
        may arrive before or after this; each is held to ``spent_reported`` from now on."""
        if self.deltas:
            raise RuntimeError("allowance returns need the budget rows locked (not delta mode)")
        spent, count = p.spent.amount_minor, p.spent_count
        a = self.allowances.get(p.allowance_id)
        if a is None:
            # No request of it reached the ledger (it never got a grant): nothing to release, but record it
            # as returned so that a request arriving later is refused rather than granted.
            if spent:
                raise Rejected(f"allowance {p.allowance_id} was never granted anything, yet {spent} is reported "
                               f"spent")
            a = Allowance(p.allowance_id, env.region, p.budget_period, p.spent.currency, 100, "unknown", new=True)
            self.allowances[a.allowance_id] = a
        if a.returned:
            if (a.spent_reported, a.count_reported) == (spent, count):
                self.out.ignored.append((env.event_id, "allowance already returned"))
                return
            raise Rejected(f"allowance {a.allowance_id} was returned with {a.spent_reported} spent in "
                           f"{a.count_reported}, not {spent} in {count}")
        if p.spent.currency != a.currency or p.budget_period != a.period or env.region != a.region:
            raise Rejected(f"allowance {a.allowance_id} is {a.region} {a.period} {a.currency}")
        if spent > a.granted:
            raise Rejected(f"allowance {a.allowance_id}: {spent} reported spent of {a.granted} granted")
        if spent < a.charged or count < a.charged_count:
            raise Rejected(f"allowance {a.allowance_id}: {spent} in {count} reported spent, but {a.charged} in "
                           f"{a.charged_count} already charged")
        release = a.granted - spent
        if release:
            self._adjust(self._budget(a.region, a.period, a.currency), None, allotted=-release, released=release)
        a.released, a.returned, a.spent_reported, a.count_reported = release, True, spent, count
        a.return_reason, a.returned_at, a.dirty = p.reason.value, p.closed_at, True
        self.out.returned.append(a)

    def _issued_from_allowance(self, env: Envelope, p: ev.CompensationIssued) -> None:
        """Charge a compensation spent from an allowance: allotted -> a hold for the voucher (posted at once
        for kinds spent when issued), whatever order this and the allowance's return arrive in."""
        assert p.allowance_id is not None
        a = self.allowances.get(p.allowance_id)
        if a is None:
            raise Rejected(f"unknown allowance {p.allowance_id} for compensation {p.compensation_id}")
        if a.region != env.region or a.currency != p.amount.currency:
            raise Rejected(f"allowance {a.allowance_id} is {a.region} {a.currency}, not {env.region} "
                           f"{p.amount.currency}")
        amount = p.amount.amount_minor
        if a.returned and a.count_reported is not None and a.charged_count + 1 > a.count_reported:
            raise Rejected(f"allowance {a.allowance_id} was returned with {a.count_reported} compensations, all "
                           f"charged already")
        if a.charged + amount > a.spendable_cap:
            what = "reported spent" if a.returned else "granted"
            raise Rejected(f"charging {amount} would bring allowance {a.allowance_id} to {a.charged + amount}, "
                           f"beyond the {a.spendable_cap} {what}")
        if p.reservation_id in self.holds:
            raise Rejected(f"hold {p.reservation_id} exists already; compensation {p.compensation_id} cannot "
                           f"open it again")
        hold = Hold(p.reservation_id, p.compensation_id, a.region, a.period, a.currency, p.kind.value, p.ticket_id,
                    p.buyer_id, HoldStatus.PENDING, requested=amount, decided=amount, amount=amount,
                    expires_at=p.valid_until or env.occurred_at, issued_amount=amount, valid_until=p.valid_until,
                    requested_event_id=env.event_id, allowance_id=a.allowance_id, new=True)
        self.holds[hold.reservation_id] = hold
        comp = Compensation(p.compensation_id, env.region, "auto", p.kind.value, amount, a.currency, a.period,
                            p.buyer_id, hold.reservation_id, env.event_id, env.occurred_at, new=True)
        self._charge(env.event_id, env.occurred_at, comp, [(s.party.account_key, s.amount_minor)
                                                          for s in p.liability], amount)
        budget = self._budget(a.region, a.period, a.currency)
        self._adjust(budget, env, allotted=-amount, reserved=amount)
        if p.kind.spent_when_issued:
            self._post(env, hold, budget, amount, "issued")
        a.charged += amount
        a.charged_count += 1
        a.charged_delta += amount
        a.count_delta += 1
        a.dirty = True
        self.compensations[comp.compensation_id] = comp
        self._apply_parked(comp.compensation_id)

    # ------------------------------------------------------------------ issuing

    def _issued(self, env: Envelope, p: ev.CompensationIssued, _: Any) -> None:
        if p.compensation_id in self.compensations:
            self.out.ignored.append((env.event_id, "compensation already charged"))
            return
        if p.allowance_id is not None:
            self._issued_from_allowance(env, p)
            return
        hold = self.holds.get(p.reservation_id)
        if hold is None:
            raise Rejected(f"unknown reservation {p.reservation_id} for compensation {p.compensation_id}")
        if hold.compensation_id != p.compensation_id or hold.region != env.region:
            raise Rejected(f"reservation {p.reservation_id} belongs to compensation {hold.compensation_id} "
                           f"in {hold.region}")
        if hold.status is not HoldStatus.PENDING or hold.issued_amount is not None:
            raise Rejected(f"reservation {p.reservation_id} is {hold.status.value}; nothing to issue against")
        if p.amount.currency != hold.currency:
            raise Rejected(f"currency {p.amount.currency} does not match the reservation's {hold.currency}")
        issued = p.amount.amount_minor
        if issued > hold.amount:
            raise Rejected(f"issued amount {issued} exceeds the reserved {hold.amount}")
        shares = [(s.party.account_key, s.amount_minor) for s in p.liability]
        comp = Compensation(p.compensation_id, env.region, "auto", p.kind.value, issued, hold.currency,
                            hold.period, p.buyer_id, hold.reservation_id, env.event_id, env.occurred_at,
                            new=True)
        self._charge(env.event_id, env.occurred_at, comp, shares, issued)
        budget = self._budget(hold.region, hold.period, hold.currency)
        if issued < hold.amount:
            self._release(hold, budget, hold.amount - issued)
        hold.amount, hold.issued_amount, hold.valid_until, hold.dirty = issued, issued, p.valid_until, True
        if p.kind.spent_when_issued:
            self._post(env, hold, budget, issued, "issued")
        self.compensations[comp.compensation_id] = comp
        self._apply_parked(comp.compensation_id)

    def _manual(self, env: Envelope, p: ev.ManualCompensationIssued, _: Any) -> None:
        if p.compensation_id in self.compensations:
            self.out.ignored.append((env.event_id, "compensation already charged"))
            return
        region, period = self.budget_key_for(env)
        amount, currency = p.amount.amount_minor, p.amount.currency
        comp = Compensation(p.compensation_id, region, "manual", p.kind.value, amount, currency, period,
                            p.buyer_id, None, env.event_id, env.occurred_at, new=True)
        self._charge(env.event_id, env.occurred_at, comp, [(s.party.account_key, s.amount_minor)
                                                          for s in p.liability], amount)
        self.postings.append(PostingItem((region, period, currency), comp, amount, env.event_id, env.occurred_at))
        self._adjust(self._budget(region, period, currency), env, posted_manual=amount, manual=p.compensation_id)
        self.compensations[comp.compensation_id] = comp
        self._apply_parked(comp.compensation_id)

    def _charge(self, source_event_id: str, occurred_at: datetime, comp: Compensation,
                shares: list[tuple[str, int]], amount: int, corrects: str | None = None,
                correction_id: str | None = None) -> None:
        tx_id = f"charge:{comp.compensation_id}:{comp.charge_seq}"
        self.out.transactions.append(journal.charge(
            tx_id=tx_id, region=comp.region, currency=comp.currency, compensation_id=comp.compensation_id,
            source_event_id=source_event_id, occurred_at=occurred_at, shares=shares, corrects_tx_id=corrects,
            correction_id=correction_id))
        comp.current_charge_tx, comp.current_shares, comp.current_amount = tx_id, shares, amount
        comp.dirty = True

    def _reverse_current(self, source_event_id: str, occurred_at: datetime, comp: Compensation,
                         correction_id: str | None = None) -> str | None:
        """Reverse the live charge exactly (if any); returns its id. The caller re-charges or clears it."""
        reversed_tx = comp.current_charge_tx
        if reversed_tx is None:
            return None
        self.out.transactions.append(journal.reversal(
            None, tx_id=f"reversal:{reversed_tx}", source_event_id=source_event_id, occurred_at=occurred_at,
            entries=self._charge_entries(comp), region=comp.region, compensation_id=comp.compensation_id,
            reverses_tx_id=reversed_tx, correction_id=correction_id))
        comp.charge_seq += 1
        comp.current_charge_tx, comp.current_shares, comp.current_amount = None, [], 0
        comp.dirty = True
        return reversed_tx

    def _settle(self, comp: Compensation, received: int, source_event_id: str, occurred_at: datetime) -> None:
        """An automatic voucher closed: its liable parties end up charged for what the buyer received.

        The charge at issue is the voucher's face value, because nothing else is known then. When the
        voucher is redeemed for less, expires or is revoked, the unused remainder is released from the
        liable parties the way it is released from the budget: the live charge is reversed exactly and
        the received value is charged again, split over the same parties in proportion to their shares
        (nothing is re-charged when the buyer received nothing). New journal rows only, with deterministic
        ids (``reversal:<charge>``, ``charge:<comp>:<n>``), so a redelivered event cannot post it twice;
        the re-charge links the charge it replaces (``corrects_tx_id``) and carries no correction id. A
        charge already at or below the received value (an audit correction lowered it) is left alone.
        """
        if comp.current_charge_tx is None or comp.current_amount <= received:
            return
        shares = comp.current_shares
        reversed_tx = self._reverse_current(source_event_id, occurred_at, comp)
        if received > 0:
            self._charge(source_event_id, occurred_at, comp, _scaled(shares, received, comp.currency), received,
                         corrects=reversed_tx)

    # ------------------------------------------------------------------ voucher lifecycle

    def _lifecycle(self, env: Envelope, p: Any, ref: Any) -> None:
        comp = self.compensations.get(p.compensation_id)
        if comp is None:
            self._park_or_reject(env, p, ref, "voucher event for an unknown compensation")
            return
        if comp.origin == "manual":
            self.out.ignored.append((env.event_id, "manual compensations post their full value when issued"))
            return
        assert comp.reservation_id is not None
        hold = self.holds[comp.reservation_id]
        if hold.status is not HoldStatus.PENDING:
            self.out.ignored.append((env.event_id, f"reservation already {hold.status.value}"))
            return
        if isinstance(p, ev.VoucherRedeemed):
            if p.discount.currency != hold.currency:
                raise Rejected(f"discount currency {p.discount.currency} is not {hold.currency}")
            used = p.discount.amount_minor
            if used > hold.amount:
                raise Rejected(f"discount {used} exceeds the voucher value {hold.amount}")
        budget = self._budget(hold.region, hold.period, hold.currency)
        if isinstance(p, ev.VoucherRedeemed):
            self._post(env, hold, budget, p.discount.amount_minor, "redeemed")
        elif isinstance(p, ev.VoucherExpired):
            # Applied even when it comes before the voucher's validity ends: the promotion system says the
            # voucher can no longer be used, so its budget is released (as breakage) and its parties are
            # charged only what the buyer received. It usually means an upstream clock or mapping error,
            # so it is flagged (metric, WARNING log, lineage) instead of passing silently.
            early = expired_early_by(hold.valid_until, env.occurred_at)
            if early is not None and hold.valid_until is not None:
                self.out.early_expiries.append(EarlyExpiry(
                    comp.compensation_id, hold.reservation_id, hold.region, env.event_id, env.correlation_id,
                    hold.valid_until, env.occurred_at, early))
            self._void(hold, budget, "expired", breakage=True)
        else:
            self._void(hold, budget, "revoked", breakage=False)
        # The voucher is closed now (a voucher is used once): hold.posted is what the buyer received.
        self._settle(comp, hold.posted, env.event_id, env.occurred_at)

    def _post(self, env: Envelope, hold: Hold, budget: BudgetState, amount: int, why: str) -> None:
        """Post the used part of a pending hold and release the rest."""
        unused = hold.amount - amount
        if amount:
            self.postings.append(PostingItem((hold.region, hold.period, hold.currency), hold, amount, env.event_id,
                                             env.occurred_at))
        self._adjust(budget, env, reserved=-hold.amount, posted_auto=amount, released=unused)
        hold.posted, hold.released = amount, hold.released + unused
        hold.status, hold.closed_by, hold.dirty = HoldStatus.POSTED, why, True

    def _release(self, hold: Hold, budget: BudgetState, amount: int, env: Envelope | None = None) -> None:
        self._adjust(budget, env, reserved=-amount, released=amount)
        hold.released += amount
        hold.dirty = True

    def _void(self, hold: Hold, budget: BudgetState, why: str, *, breakage: bool) -> None:
        amount = hold.amount
        if breakage:
            self._adjust(budget, None, reserved=-amount, breakage=amount)
            hold.breakage += amount
        else:
            self._adjust(budget, None, reserved=-amount, released=amount)
            hold.released += amount
        hold.status, hold.closed_by, hold.dirty = HoldStatus.VOIDED, why, True

    # ------------------------------------------------------------------ budget effects

    def finish(self) -> None:
        """Close the batch: its posted spend goes to each budget account in one posting per (region,
        period, currency), ``posting:<first source event>``, and every compensation or hold that took part
        keeps that posting's id (its own part is its posted amount). Idempotent."""
        groups: dict[tuple[str, str, str], list[PostingItem]] = {}
        for item in self.postings:
            groups.setdefault(item.key, []).append(item)
        self.postings = []
        for (region, period, currency), items in groups.items():
            tx_id = f"posting:{items[0].source_event_id}"
            self.out.transactions.append(journal.budget_posting(
                tx_id=tx_id, region=region, currency=currency, period=period,
                compensation_id=items[0].owner.compensation_id if len(items) == 1 else None,
                source_event_id=items[0].source_event_id, occurred_at=max(i.occurred_at for i in items),
                amount=sum(i.amount for i in items)))
            for item in items:
                item.owner.posting_tx_id = tx_id
                item.owner.dirty = True

    def _adjust(self, budget: BudgetState, env: Envelope | None, *, reserved: int = 0, posted_auto: int = 0,
                posted_manual: int = 0, released: int = 0, breakage: int = 0, manual: str | None = None,
                allotted: int = 0) -> None:
        """Every change to a budget goes through here.

        Locked mode: the budget is the current row (locked), so alerts are decided at once. Delta mode:
        the budget accumulates this batch's deltas only, and the steps are replayed by ``replay`` on the
        row's state once it is locked at the very end of the batch transaction (see ADR 0005).
        """
        budget.reserved += reserved
        budget.posted_auto += posted_auto
        budget.posted_manual += posted_manual
        budget.released += released
        budget.breakage += breakage
        budget.allotted += allotted
        budget.dirty = True
        step = BudgetStep((budget.region, budget.period), env, reserved, posted_auto, posted_manual, released,
                          breakage, manual, allotted)
        if self.deltas:
            self.budget_steps.append(step)
        else:
            self._announce(budget, step)

    def replay(self, current: dict[tuple[str, str], BudgetState]) -> None:
        """Delta mode: apply this batch's budget steps, in order, to the locked rows, deciding alerts."""
        for step in self.budget_steps:
            budget = current[step.key]
            budget.reserved += step.reserved
            budget.posted_auto += step.posted_auto
            budget.posted_manual += step.posted_manual
            budget.released += step.released
            budget.breakage += step.breakage
            budget.allotted += step.allotted
            budget.dirty = True
            self._announce(budget, step)
        self.budgets = current
        self.budget_steps = []

    def _announce(self, budget: BudgetState, step: BudgetStep) -> None:
        if step.env is None:
            return  # releases never cross a threshold upwards
        self._thresholds(step.env, budget)
        if step.manual is not None and budget.limit is not None and budget.used > budget.limit:
            env, currency = step.env, budget.currency
            self.out.overruns.append(Overrun(budget.region, budget.period, step.manual, budget.limit, budget.used,
                                             env.occurred_at))
            self.out.alerts.append(Alert("budget.exceeded", env, ev.BudgetExceeded(
                budget_period=budget.period,
                limit=ev.MoneyTotal(amount_minor=budget.limit, currency=currency),
                used=ev.MoneyTotal(amount_minor=budget.used, currency=currency),
                compensation_id=step.manual)))

    def sweep(self, reservation_id: str, grace: timedelta) -> bool:
        """Void a reservation left pending past its expiry (never issued) or its voucher's validity."""
        hold = self.holds.get(reservation_id)
        if hold is None or hold.status is not HoldStatus.PENDING:
            return False
        budget = self._budget(hold.region, hold.period, hold.currency)
        if lapsed_unissued(hold, self.now, grace):
            self._void(hold, budget, "reservation_expired", breakage=False)
            return True
        if hold.valid_until is not None and hold.valid_until + grace <= self.now:
            comp = self.compensations.get(hold.compensation_id)
            if comp is None:
                # An issued voucher has a compensation; without it the charge could not be released.
                raise RuntimeError(f"compensation {hold.compensation_id} was not loaded for the sweep")
            self._void(hold, budget, "validity_ended", breakage=True)
            # No event says so: the sweep is the source, and the voucher lapsed at the end of its validity.
            self._settle(comp, 0, f"sweep:{hold.reservation_id}", hold.valid_until)
            return True
        return False

    # ------------------------------------------------------------------ audit corrections

    def _correction(self, env: Envelope, p: ev.AuditCorrectionIssued, ref: Any) -> None:
        if p.correction_id in self.corrections:
            self.out.ignored.append((env.event_id, "correction already applied"))
            return
        comp = self.compensations.get(p.compensation_id)
        if comp is None:
            self._park_or_reject(env, p, ref, "correction of an unknown compensation")
            return
        if p.corrects_correction_id is not None:
            earlier = self.corrections.get(p.corrects_correction_id)
            if earlier is None:
                raise Rejected(f"correction {p.correction_id} corrects unknown correction "
                               f"{p.corrects_correction_id}")
            if earlier.compensation_id != comp.compensation_id:
                raise Rejected(f"correction {p.corrects_correction_id} belongs to compensation "
                               f"{earlier.compensation_id}")
        if p.corrected_amount.currency != comp.currency:
            raise Rejected(f"corrected amount in {p.corrected_amount.currency}, "
                           f"compensation in {comp.currency}")
        seq = comp.charge_seq
        reversed_tx = self._reverse_current(env.event_id, env.occurred_at, comp, p.correction_id)
        comp.charge_seq = seq + 1  # a new charge number even when there was no live charge to reverse
        reversal_id = None if reversed_tx is None else f"reversal:{reversed_tx}"
        charge_id = None
        corrected = p.corrected_amount.amount_minor
        amount = corrected
        shares = [(s.party.account_key, s.amount_minor) for s in p.corrected_liability]
        received = self._received(comp)
        if received is not None and amount > received:
            # The voucher is closed already: the corrected parties are charged at most what the buyer
            # received, the same rule as when a voucher closes after the correction (``_settle``).
            shares, amount = _scaled(shares, received, comp.currency), received
        if amount > 0:
            self._charge(env.event_id, env.occurred_at, comp, shares, amount, corrects=reversed_tx,
                         correction_id=p.correction_id)
            charge_id = comp.current_charge_tx
        comp.last_correction_id, comp.dirty = p.correction_id, True
        record = CorrectionRecord(p.correction_id, comp.compensation_id, p.corrects_correction_id,
                                  reversal_id, charge_id, corrected, env.event_id, env.occurred_at,
                                  p.auditor_id, p.dispute_raised_by, p.disputed_auditor_id)
        self.corrections[p.correction_id] = record
        self.out.corrections.append(record)

    def _received(self, comp: Compensation) -> int | None:
        """What the buyer received from a closed automatic compensation; None while it may still change.

        Manual compensations post their full value at issue, so their charge is never capped."""
        if comp.origin != "auto" or comp.reservation_id is None:
            return None
        hold = self.holds.get(comp.reservation_id)
        if hold is None or hold.status not in (HoldStatus.POSTED, HoldStatus.VOIDED):
            return None
        return hold.posted

    def _charge_entries(self, comp: Compensation) -> tuple[journal.Entry, ...]:
        debits = [journal.Entry(k, a, comp.currency) for k, a in comp.current_shares if a != 0]
        return (*debits, journal.Entry(journal.PAYABLE, -comp.current_amount, comp.currency))

    # ------------------------------------------------------------------ out-of-order arrivals

    def _park_or_reject(self, env: Envelope, p: ev.Payload, ref: Any, why: str) -> None:
        """Topics are consumed independently, so a redemption or correction may overtake its compensation.

        It waits (parked) until the compensation arrives; the sweeper dead-letters it after the park
        window. With no park window it is rejected at once.
        """
        if not self.park:
            raise Rejected(f"{why} {getattr(p, 'compensation_id', '?')}")
        cid = p.compensation_id  # type: ignore[attr-defined]
        self.parked.setdefault(cid, []).append(ParkedEvent(env.event_id, cid, env, p, ref, new=True))

    def _apply_parked(self, compensation_id: str) -> None:
        waiting = self.parked.pop(compensation_id, [])
        for parked in waiting:
            try:
                self.apply(parked.envelope, parked.payload, parked.ref)
            except Rejected as exc:
                self.out.parked_rejected.append((parked, str(exc)))
            else:
                self.out.parked_done.append(parked.event_id)

    def apply_parked_for_known(self) -> None:
        """Retry parked events whose compensation is known now (housekeeping safety net)."""
        for cid in [c for c in self.parked if c in self.compensations]:
            self._apply_parked(cid)

    def new_parked(self) -> list[ParkedEvent]:
        return [p for waiting in self.parked.values() for p in waiting if p.new]

    # ------------------------------------------------------------------ alerts

    def _thresholds(self, env: Envelope, budget: BudgetState) -> None:
        for pct in crossed_thresholds(budget):
            assert budget.limit is not None
            self.out.alerts.append(Alert("budget.threshold_crossed", env, ev.BudgetThresholdCrossed(
                budget_period=budget.period, threshold_percent=pct,
                limit=ev.MoneyTotal(amount_minor=budget.limit, currency=budget.currency),
                used=ev.MoneyTotal(amount_minor=budget.used, currency=budget.currency))))
            budget.dirty = True


def lapsed_unissued(hold: Hold, now: datetime, grace: timedelta) -> bool:
    """A reservation never issued against and past its expiry plus grace: nothing may be issued on it any
    more. The one rule for the sweeper (which voids it) and for answers to repeated requests."""
    return hold.issued_amount is None and hold.expires_at + grace <= now


def _scaled(shares: list[tuple[str, int]], amount: int, currency: str) -> list[tuple[str, int]]:
    """Liability shares scaled down to ``amount`` (<= their sum), exactly and deterministically.

    Largest-remainder split (``Money.allocate``): the parts sum to ``amount`` and none exceeds its share,
    so a release never turns into a charge for any party. Parties left with nothing are dropped.
    """
    parts = Money(amount, currency).allocate([a for _, a in shares])
    return [(key, part.minor) for (key, _), part in zip(shares, parts, strict=True) if part.minor]


# Payload type -> handler, on the class rather than bound methods on each Book: a Book holding its own bound
# methods is a reference cycle, so every batch's book (its transactions, entries, compensations: tens of
# thousands of objects) was freed only by the cyclic collector, in full collections that cost about a
# quarter of the consumer's CPU (ADR 0005). Without the cycle a book is freed by reference counting as soon
# as the batch is done; a unit test keeps it that way.
_DISPATCH: dict[type, Callable[[Book, Envelope, Any, Any], None]] = {
    ev.BudgetReservationRequested: Book._request, ev.CompensationIssued: Book._issued,
    ev.ManualCompensationIssued: Book._manual, ev.VoucherRedeemed: Book._lifecycle,
    ev.VoucherExpired: Book._lifecycle, ev.VoucherRevoked: Book._lifecycle,
    ev.AuditCorrectionIssued: Book._correction, ev.BudgetAllowanceRequested: Book._allowance_request,
    ev.BudgetAllowanceReturned: Book._allowance_return}
