"""The ledger's batch handler: lock what the batch touches, apply it in the book, write it in bulk.

Lock order, the same for every writer (charge and request batches, the sweeper, parked-event retries), so
parallel consumers and the housekeeper never deadlock (ADR 0005):

1. per-compensation advisory locks, sorted (``persistence.lock_compensations``); a compensation's own
   rows (reservation, compensation, its journal keys) are only written under its lock, so where they are
   written in the transaction does not matter;
2. budget rows, sorted (``persistence.lock_budgets``): up front in locked mode (request, allowance request
   and return batches, sweeper, retries), at the end in delta mode (charge batches);
3. allowance rows, sorted: right after the budget rows in locked mode, and in delta mode by the guarded
   update that adds a batch's charges to them (``persistence.add_allowance_charges``), after the budget rows;
4. balance stripes, sorted, always the last statement of the writer (``persistence.save_balances``).

Budget rows before stripes, whichever the mode: a delta batch that upserted its stripes and then waited
for the budget row deadlocked with a retry or sweep that held the budget row and waited for the stripe.
``write_books`` is the one place that takes 2 (in delta mode), 3 (in delta mode) and 4, so no path can
reorder them.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from services.ledger import metrics, persistence
from services.ledger.config import Settings
from services.ledger.contracts import CONSUMES
from services.ledger.domain import journal
from services.ledger.domain.allowance import GrantPolicy
from services.ledger.domain.book import Book, Rejected
from shared.contracts import events as ev
from shared.contracts.registry import event_types_on, make_envelope
from shared.kafka import Delivered, PermanentError
from shared.outbox import enqueue

log = logging.getLogger(__name__)

SOURCE = "ledger"


class LedgerHandler:

    consumes = event_types_on(CONSUMES)  # every topic of every ledger group
    def __init__(self, settings: Settings, group: str | None = None, stripe: int | None = None) -> None:
        self.settings = settings
        self.group = group or settings.consumer_group
        # Each consumer writes hot-account balances to its own stripe (see ADR 0005).
        self.stripe = random.randrange(settings.balance_stripes) if stripe is None else stripe

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        await apply_batch(conn, events, self.settings, self.stripe, group=self.group)


async def apply_batch(conn: AsyncConnection, events: Sequence[Delivered], settings: Settings, stripe: int,
                      now: datetime | None = None, group: str | None = None) -> Book:
    now = now or datetime.now(UTC)
    group = group or settings.consumer_group
    requests = [d for d in events if isinstance(d.payload, _LOCKED)]
    others = [d for d in events if not isinstance(d.payload, _LOCKED)]
    cids = {d.payload.compensation_id for d in others}  # type: ignore[attr-defined]
    await persistence.lock_compensations(conn, cids)
    comps = await persistence.load_compensations(conn, cids)
    arriving = {d.payload.compensation_id for d in others  # type: ignore[attr-defined]
                if isinstance(d.payload, ev.CompensationIssued | ev.ManualCompensationIssued)}
    parked = await persistence.load_parked(conn, arriving)
    corrections = await persistence.load_corrections(conn, cids)
    rids = {d.payload.reservation_id for d in events  # type: ignore[attr-defined]
            if isinstance(d.payload, ev.BudgetReservationRequested | ev.CompensationIssued)}
    rids |= {c.reservation_id for c in comps.values() if c.reservation_id}
    holds = await persistence.load_holds(conn, rids)
    allowance_ids = {d.payload.allowance_id for d in events  # type: ignore[union-attr]
                     if isinstance(d.payload, _ALLOWANCE_EVENTS) and d.payload.allowance_id}

    # A batch with budget requests locks its budget rows up front and decides in memory under that one
    # lock. A batch without (charges, redemptions, expiries, corrections) only moves budget counters in
    # ways that cannot break the hard limit, so it locks the rows at the very end, for a few milliseconds,
    # and replays its budget steps on them there (ADR 0005).
    deltas = not requests
    book = Book(now=now, granularity=settings.budget_period, park=settings.park_seconds > 0, deltas=deltas,
                grace=timedelta(seconds=settings.voucher_grace_seconds), holds=holds, compensations=comps,
                parked=parked, corrections=corrections, policy=grant_policy(settings))
    if deltas:
        # Read, not locked: charges are added to them under the row lock at the very end (write_books).
        book.allowances.update(await persistence.load_allowances(conn, allowance_ids, lock=False))
    else:
        keys = {book.budget_key_for(d.envelope) for d in requests
                if isinstance(d.payload, ev.BudgetReservationRequested)}
        keys |= {(d.envelope.region, d.payload.budget_period) for d in requests  # type: ignore[union-attr]
                 if isinstance(d.payload, ev.BudgetAllowanceRequested | ev.BudgetAllowanceReturned)}
        keys |= {book.budget_key_for(d.envelope) for d in others
                 if isinstance(d.payload, ev.ManualCompensationIssued)}
        keys |= {(h.region, h.period) for h in holds.values()}
        # Allowances read first, only to learn their budgets; then budgets, then allowances, locked in order.
        known = await persistence.load_allowances(conn, allowance_ids, lock=False)
        keys |= {(a.region, a.period) for a in known.values()}
        book.budgets.update(await persistence.lock_budgets(conn, keys))
        book.allowances.update(await persistence.load_allowances(
            conn, allowance_ids, lock=True,
            answers_for=[(d.payload.allowance_id, d.payload.request_seq) for d in requests
                         if isinstance(d.payload, ev.BudgetAllowanceRequested)]))

    for d in events:
        try:
            book.apply(d.envelope, d.payload, d)
        except Rejected as exc:
            # The runner re-runs the batch one event at a time and dead-letters this one alone.
            raise PermanentError(str(exc)) from exc

    await write_books(conn, book, stripe=stripe, consumer_group=group)
    await enqueue(conn, _outgoing(book))
    _count(book)
    return book


async def write_books(conn: AsyncConnection, book: Book, *, stripe: int, consumer_group: str) -> None:
    """Write a decided book in the lock order of this module: budget rows before balance stripes.

    Locked mode already holds its budget rows. Delta mode locks them here, after the journal COPY (the
    expensive part, done without any hot lock) and replays its budget steps on them; the stripe upsert
    comes after that in both modes, so the budget row is held for a few statements, not the whole batch.
    """
    book.finish()  # the batch's posted spend: one posting per budget account
    balances = await persistence.save_books(conn, book, consumer_group=consumer_group)
    if book.deltas and book.budget_steps:
        book.replay(await persistence.lock_budgets(conn, {step.key for step in book.budget_steps}))
    await persistence.save_budget_effects(conn, book)
    if book.deltas:
        await persistence.add_allowance_charges(conn, book)
    await persistence.save_balances(conn, balances, stripe)


# Events decided on locked budget rows (locked mode): per-voucher requests (retired, still drained) and
# allowance requests and returns. Everything else only moves budget counters in safe directions (deltas).
_LOCKED = (ev.BudgetReservationRequested, ev.BudgetAllowanceRequested, ev.BudgetAllowanceReturned)
_ALLOWANCE_EVENTS = (ev.BudgetAllowanceRequested, ev.BudgetAllowanceReturned, ev.CompensationIssued)


def grant_policy(settings: Settings) -> GrantPolicy:
    return GrantPolicy(lease=timedelta(seconds=settings.allowance_lease_seconds),
                       share_percent=settings.allowance_share_percent,
                       period_end_percent=settings.allowance_period_end_percent,
                       retry=timedelta(seconds=settings.allowance_retry_seconds),
                       min_lease=timedelta(seconds=settings.allowance_min_seconds))


def _outgoing(book: Book) -> list:  # type: ignore[type-arg]
    out = []
    for cause, answer in book.out.allowance_answers:
        out.append(make_envelope("budget.allowance_decided", answer, source=SOURCE, occurred_at=book.now,
                                 **cause.caused()))
    for cause, decision in book.out.decisions:
        out.append(make_envelope("budget.reservation_decided", decision, source=SOURCE, occurred_at=book.now,
                                 **cause.caused()))
    for alert in book.out.alerts:
        out.append(make_envelope(alert.event_type, alert.payload, source=SOURCE, occurred_at=book.now,
                                 **alert.cause.caused()))
    return out


def _count(book: Book) -> None:
    # Aggregate first: one metric update per label set per batch, not one per entry.
    txs: Counter[journal.TxKind] = Counter()
    lines: Counter[journal.TxKind] = Counter()
    charges: Counter[tuple[str, str]] = Counter()
    charged: Counter[tuple[str, str]] = Counter()
    reversed_: Counter[tuple[str, str]] = Counter()
    charge, posting = journal.TxKind.CHARGE, journal.TxKind.BUDGET_POSTING
    types: dict[str, str] = {}  # account -> party type, computed once per account per batch
    for tx in book.out.transactions:
        kind = tx.kind
        txs[kind] += 1
        lines[kind] += len(tx.entries) - 1  # transfers: each entry paired with the single opposite one
        if kind is posting:
            continue
        for account, amount, currency in tx.entries:
            if amount > 0 if kind is charge else amount < 0:
                party = types.get(account)
                if party is None:
                    party = types[account] = journal.party_type(account)
                key = (party, currency)
                if kind is charge:
                    charges[key] += 1
                    charged[key] += amount
                else:
                    reversed_[key] -= amount
    for kind, n in txs.items():
        metrics.TRANSACTIONS.labels(kind.value).inc(n)
        metrics.TRANSFERS.labels(kind.value).inc(lines[kind])
    for key, n in charges.items():
        metrics.CHARGES.labels(*key).inc(n)
        metrics.CHARGED_MINOR.labels(*key).inc(charged[key])
    for key, n in reversed_.items():
        metrics.REVERSED_MINOR.labels(*key).inc(n)
    for cause, d in book.out.decisions:
        reason = d.denial_reason.value if d.denial_reason else ""
        metrics.DECISIONS.labels(cause.region, d.outcome.value, reason).inc()
    for cause, a in book.out.allowance_answers:
        metrics.ALLOWANCE_ANSWERS.labels(cause.region, a.outcome.value,
                                         a.limited_by.value if a.limited_by else "").inc()
    for _, _, _, a in book.out.new_grants:
        if a.granted.amount_minor:
            metrics.ALLOWANCE_GRANTED.labels(book.allowances[a.allowance_id].region,
                                             a.granted.currency).inc(a.granted.amount_minor)
    for returned in book.out.returned:
        metrics.ALLOWANCE_RETURNS.labels(returned.region, returned.return_reason or "").inc()
        if returned.released:
            metrics.ALLOWANCE_RELEASED.labels(returned.region, returned.currency).inc(returned.released)
    for alert in book.out.alerts:
        if alert.event_type == "budget.exceeded":
            metrics.BUDGET_EXCEEDED.labels(alert.cause.region).inc()
        else:
            pct = str(alert.payload.threshold_percent)  # type: ignore[attr-defined]
            metrics.THRESHOLDS.labels(alert.cause.region, pct).inc()
    for parked in book.new_parked():
        metrics.PARKED.labels(parked.envelope.event_type).inc()
        # An operator sees each waiting event by its ids the moment it starts waiting, not only when it is
        # dead-lettered a park window later (issue 13): list them with `parked` or GET /v1/parked-events.
        log.warning("event parked: its compensation has not arrived yet; applied when it does, dead-lettered "
                    "after the park window", extra={
                        "event_id": parked.event_id, "compensation_id": parked.compensation_id,
                        "event_type": parked.envelope.event_type, "region": parked.envelope.region,
                        "correlation_id": parked.envelope.correlation_id})
    for _, why in book.out.ignored:
        metrics.IGNORED.labels(why).inc()
    for parked, reason in book.out.parked_rejected:
        log.warning("parked event rejected", extra={"event_id": parked.event_id, "reason": reason})
    for early in book.out.early_expiries:
        metrics.EARLY_EXPIRIES.labels(early.region).inc()
        log.warning("voucher reported expired before its validity ended; applied (budget released, charge "
                    "settled) and flagged on the lineage: check the promotion system's clock and voucher mapping",
                    extra={"compensation_id": early.compensation_id, "reservation_id": early.reservation_id,
                           "event_id": early.event_id, "correlation_id": early.correlation_id,
                           "region": early.region, "valid_until": early.valid_until.isoformat(),
                           "expired_at": early.expired_at.isoformat(),
                           "early_by_seconds": int(early.early_by.total_seconds())})


# ------------------------------------------------------------------ housekeeping (sweeper)


async def sweep_reservations(conn: AsyncConnection, settings: Settings, stripe: int, now: datetime) -> int:
    """Void reservations left pending past their expiry or their voucher's validity (plus grace)."""
    stale = await persistence.stale_reservations(conn, now, settings.voucher_grace_seconds)
    if not stale:
        return 0
    cids = [cid for _, cid in stale]
    await persistence.lock_compensations(conn, cids)
    holds = await persistence.load_holds(conn, [rid for rid, _ in stale])
    # A voucher that lapsed unused releases its liable parties' charge too, so its compensation is needed.
    comps = await persistence.load_compensations(conn, cids)
    book = Book(now=now, granularity=settings.budget_period, holds=holds, compensations=comps)
    book.budgets.update(await persistence.lock_budgets(conn, {(h.region, h.period) for h in holds.values()}))
    grace = timedelta(seconds=settings.voucher_grace_seconds)
    swept = 0
    for rid in holds:
        if book.sweep(rid, grace):
            swept += 1
            metrics.SWEPT.labels(book.holds[rid].closed_by or "").inc()
    await write_books(conn, book, stripe=stripe, consumer_group=settings.consumer_group)
    _count(book)
    return swept


async def retry_parked(conn: AsyncConnection, settings: Settings, stripe: int, now: datetime) -> int:
    """Apply parked events whose compensation has arrived meanwhile (a race between two consumers)."""
    parked = await persistence.load_parked(conn, known_only=True)
    if not parked:
        return 0
    cids = {p.compensation_id for p in parked}
    await persistence.lock_compensations(conn, cids)
    parked = await persistence.load_parked(conn, cids)  # re-read under the locks
    comps = await persistence.load_compensations(conn, cids)
    holds = await persistence.load_holds(conn, [c.reservation_id for c in comps.values() if c.reservation_id])
    book = Book(now=now, granularity=settings.budget_period, holds=holds, compensations=comps,
                parked=parked, corrections=await persistence.load_corrections(conn, cids))
    book.budgets.update(await persistence.lock_budgets(conn, {(h.region, h.period) for h in holds.values()}))
    book.apply_parked_for_known()
    await write_books(conn, book, stripe=stripe, consumer_group=settings.consumer_group)
    await enqueue(conn, _outgoing(book))
    _count(book)
    return len(book.out.parked_done)


async def expire_parked(conn: AsyncConnection, settings: Settings, now: datetime) -> int:
    """Dead-letter events still waiting for their compensation after the park window."""
    stale = await persistence.stale_parked(conn, now, settings.park_seconds)
    if not stale:
        return 0
    await persistence.dead_letter(conn, [
        (src, "no compensation with this id arrived within the park window") for _, src in stale])
    await persistence.delete_parked(conn, [eid for eid, _ in stale])
    return len(stale)

