"""SQL against the ledger schema. Reads load exactly what a batch touches; writes are one statement (or
one COPY) per table per batch, never one per event."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.ledger.domain import journal
from services.ledger.domain.allowance import Allowance
from services.ledger.domain.book import (
    Book,
    Compensation,
    CorrectionRecord,
    Hold,
    HoldStatus,
    ParkedEvent,
)
from services.ledger.domain.budget import BudgetState
from shared.contracts import events as ev
from shared.contracts.registry import decode_envelope, encode_envelope
from shared.db import raw_connection
from shared.kafka import DeadLetter, Delivered, PermanentError, write_dead_letters
from shared.regions import region as region_of

# Advisory lock class for per-compensation serialisation (two-int form: a key space of its own, apart
# from the outbox relay's single-bigint leader lock).
_COMPENSATION_LOCK_CLASS = 5005


@dataclass(frozen=True)
class Source:
    """Where a parked event came from, to dead-letter it like the consumer runner would."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    group: str  # the consumer group that received it, as the dead letter records it


# ------------------------------------------------------------------ locks and loads


async def lock_compensations(conn: AsyncConnection, compensation_ids: Iterable[str]) -> None:
    """Serialise work on the same compensations across consumers (issue vs. redemption vs. correction)."""
    ids = sorted(set(compensation_ids))
    if ids:
        await conn.execute(text(
            "SELECT pg_advisory_xact_lock(:c, h) FROM (SELECT DISTINCT hashtext(x) AS h "
            "FROM unnest(CAST(:ids AS text[])) AS x ORDER BY 1) s"), {"c": _COMPENSATION_LOCK_CLASS, "ids": ids})


async def lock_budgets(conn: AsyncConnection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], BudgetState]:
    """Create missing budget rows (no limit yet), then lock every budget of the batch, in key order.

    One lock per budget per batch: the micro-batch decides all its requests in memory under it.
    """
    keys = sorted(set(keys))
    if not keys:
        return {}
    regions, periods = [k[0] for k in keys], [k[1] for k in keys]
    currencies = [region_of(r).currency for r in regions]
    await conn.execute(text(
        "INSERT INTO budgets (region, period, currency) SELECT * FROM unnest(CAST(:r AS text[]), "
        "CAST(:p AS text[]), CAST(:c AS text[])) ORDER BY 1, 2 ON CONFLICT DO NOTHING"),
        {"r": regions, "p": periods, "c": currencies})
    rows = (await conn.execute(text(
        f"SELECT {BUDGET_COLUMNS} FROM budgets b "
        "JOIN unnest(CAST(:r AS text[]), CAST(:p AS text[])) AS k(region, period) "
        "ON b.region = k.region AND b.period = k.period ORDER BY b.region, b.period FOR UPDATE OF b"),
        {"r": regions, "p": periods})).all()
    return {(r[0], r[1]): budget_state(r) for r in rows}


BUDGET_COLUMNS = ("b.region, b.period, b.currency, b.limit_minor, b.reserved_minor, b.posted_auto_minor, "
                  "b.posted_manual_minor, b.released_minor, b.breakage_minor, b.allotted_minor, b.thresholds_fired")


def budget_state(r: Sequence[Any]) -> BudgetState:
    """A row of ``BUDGET_COLUMNS``."""
    return BudgetState(r[0], r[1], r[2], r[3], reserved=r[4], posted_auto=r[5], posted_manual=r[6], released=r[7],
                       breakage=r[8], allotted=r[9], thresholds_fired=set(r[10]))


_ALLOWANCE_COLUMNS = (
    "allowance_id, region, period, currency, pacing_percent, owner, status, granted_minor, charged_minor, "
    "charged_count, released_minor, spent_reported_minor, count_reported, expires_at, last_seq, return_reason, "
    "returned_at")


async def load_allowances(conn: AsyncConnection, allowance_ids: Iterable[str], *, lock: bool,
                          answers_for: Iterable[tuple[str, int]] = ()) -> dict[str, Allowance]:
    """The allowances a batch touches, locked in id order (``lock``: request and return batches, after their
    budget rows) or read as they are (charge batches, which add their charges under the lock at the end),
    with the answers already given to the (allowance id, request seq) pairs of ``answers_for``."""
    ids = sorted(set(allowance_ids))
    if not ids:
        return {}
    rows = (await conn.execute(text(
        f"SELECT {_ALLOWANCE_COLUMNS} FROM allowances WHERE allowance_id = ANY(CAST(:ids AS text[])) "
        f"ORDER BY allowance_id" + (" FOR UPDATE" if lock else "")), {"ids": ids})).all()
    out = {r[0]: Allowance(r[0], r[1], r[2], r[3], r[4], r[5], r[6] == "returned", r[7], r[8], r[9], r[10], r[11],
                           r[12], r[13], r[14], r[15], r[16]) for r in rows}
    pairs = sorted({(a, s) for a, s in answers_for if a in out})
    if pairs:
        answered = (await conn.execute(text(
            "SELECT g.allowance_id, g.request_seq, g.answer FROM allowance_grants g "
            "JOIN unnest(CAST(:a AS text[]), CAST(:s AS int[])) AS k(a, s) "
            "ON g.allowance_id = k.a AND g.request_seq = k.s"),
            {"a": [p[0] for p in pairs], "s": [p[1] for p in pairs]})).all()
        for allowance_id, seq, answer in answered:
            out[allowance_id].answers[seq] = ev.BudgetAllowanceDecided.model_validate(answer)
    return out


_HOLD_COLUMNS = (
    "reservation_id, compensation_id, region, period, currency, kind, ticket_id, buyer_id, status, "
    "requested_minor, decided_minor, amount_minor, expires_at, denial_reason, issued_minor, valid_until, "
    "posted_minor, released_minor, breakage_minor, closed_by, allowance_id, posting_tx_id")


_HOLD_COLUMN_LIST = [c.strip() for c in _HOLD_COLUMNS.split(",")]


def _hold(r: Sequence[Any]) -> Hold:
    return Hold(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], HoldStatus(r[8]), r[9], r[10], r[11], r[12],
                r[13], r[14], r[15], r[16], r[17], r[18], r[19], allowance_id=r[20], posting_tx_id=r[21])


async def load_holds(conn: AsyncConnection, reservation_ids: Iterable[str]) -> dict[str, Hold]:
    ids = sorted(set(reservation_ids))
    if not ids:
        return {}
    rows = (await conn.execute(text(
        f"SELECT {_HOLD_COLUMNS} FROM reservations WHERE reservation_id = ANY(CAST(:ids AS text[]))"),
        {"ids": ids})).all()
    return {r[0]: _hold(r) for r in rows}


async def load_compensations(conn: AsyncConnection, compensation_ids: Iterable[str]) -> dict[str, Compensation]:
    ids = sorted(set(compensation_ids))
    if not ids:
        return {}
    rows = (await conn.execute(text(
        "SELECT compensation_id, region, origin, kind, amount_minor, currency, period, buyer_id, "
        "reservation_id, issued_event_id, issued_at, charge_seq, current_charge_tx, current_shares, "
        "current_amount_minor, last_correction_id, posting_tx_id FROM compensations "
        "WHERE compensation_id = ANY(CAST(:ids AS text[]))"), {"ids": ids})).all()
    return {r[0]: Compensation(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
                               [(k, a) for k, a in r[13]], r[14], r[15], r[16]) for r in rows}


async def load_corrections(conn: AsyncConnection, compensation_ids: Iterable[str]) -> dict[str, CorrectionRecord]:
    ids = sorted(set(compensation_ids))
    if not ids:
        return {}
    rows = (await conn.execute(text(
        "SELECT correction_id, compensation_id, corrects_correction_id, reversal_tx_id, charge_tx_id, "
        "corrected_amount_minor, source_event_id, occurred_at, auditor_id, dispute_raised_by, "
        "disputed_auditor_id FROM corrections "
        "WHERE compensation_id = ANY(CAST(:ids AS text[]))"), {"ids": ids})).all()
    return {r[0]: CorrectionRecord(*r) for r in rows}


async def load_parked(conn: AsyncConnection, compensation_ids: Iterable[str] | None = None, *,
                      known_only: bool = False, limit: int = 1000) -> list[ParkedEvent]:
    """Parked events of the given compensations (or, with known_only, of any compensation known now)."""
    if known_only:
        rows = (await conn.execute(text(
            'SELECT event_id, value, topic, partition, "offset", key, consumer_group FROM parked_events p '
            "WHERE EXISTS (SELECT 1 FROM compensations c WHERE c.compensation_id = p.compensation_id) "
            "ORDER BY parked_at, event_id LIMIT :n"), {"n": limit})).all()
    else:
        ids = sorted(set(compensation_ids or []))
        if not ids:
            return []
        rows = (await conn.execute(text(
            'SELECT event_id, value, topic, partition, "offset", key, consumer_group FROM parked_events '
            "WHERE compensation_id = ANY(CAST(:ids AS text[])) ORDER BY parked_at, event_id"),
            {"ids": ids})).all()
    parked = []
    for r in rows:
        envelope, payload = decode_envelope(bytes(r[1]))
        parked.append(ParkedEvent(r[0], payload.compensation_id, envelope, payload,  # type: ignore[attr-defined]
                                  Source(r[2], r[3], r[4], r[5], bytes(r[1]), r[6])))
    return parked


# ------------------------------------------------------------------ writes


BalanceDeltas = dict[tuple[str, str, str], list[int]]  # (region, account, currency) -> [debits, credits, entries]


async def save_books(conn: AsyncConnection, book: Book, *, consumer_group: str) -> BalanceDeltas:
    """Write what the book decided apart from budget rows and balances: journal, reservations,
    compensations, corrections, parked events. A fixed number of statements whatever the batch size.

    Nothing written here is a row another compensation's writer touches (journal rows are new, and a
    compensation's own rows are only written under its advisory lock), so it may come before the budget
    lock. The balance deltas it returns go to the hot stripe rows, which are locked last: ``save_balances``.
    """
    await _save_holds(conn, list(book.holds.values()))
    await _save_compensations(conn, list(book.compensations.values()))
    if not book.deltas:
        await _save_allowances(conn, book)
    balances = await _save_journal(conn, book)
    if book.out.corrections:
        c = book.out.corrections
        await conn.execute(text(
            "INSERT INTO corrections (correction_id, compensation_id, corrects_correction_id, reversal_tx_id, "
            "charge_tx_id, corrected_amount_minor, source_event_id, occurred_at, auditor_id, dispute_raised_by, "
            "disputed_auditor_id) SELECT * FROM unnest("
            "CAST(:a AS text[]), CAST(:b AS text[]), CAST(:c AS text[]), CAST(:d AS text[]), CAST(:e AS text[]), "
            "CAST(:f AS bigint[]), CAST(:g AS text[]), CAST(:h AS timestamptz[]), CAST(:i AS text[]), "
            "CAST(:j AS text[]), CAST(:k AS text[]))"),
            {"a": [x.correction_id for x in c], "b": [x.compensation_id for x in c],
             "c": [x.corrects_correction_id for x in c], "d": [x.reversal_tx_id for x in c],
             "e": [x.charge_tx_id for x in c], "f": [x.corrected_amount for x in c],
             "g": [x.source_event_id for x in c], "h": [x.applied_at for x in c],
             "i": [x.auditor_id for x in c], "j": [x.dispute_raised_by for x in c],
             "k": [x.disputed_auditor_id for x in c]})
    if book.out.early_expiries:
        f = book.out.early_expiries
        # One flag per compensation (a voucher expires once); a redelivered expiry finds it there.
        await conn.execute(text(
            "INSERT INTO lifecycle_flags (compensation_id, flag, region, reservation_id, event_id, "
            "correlation_id, valid_until, reported_at, early_by_seconds) SELECT * FROM unnest("
            "CAST(:c AS text[]), CAST(:f AS text[]), CAST(:r AS text[]), CAST(:h AS text[]), CAST(:e AS text[]), "
            "CAST(:k AS text[]), CAST(:v AS timestamptz[]), CAST(:t AS timestamptz[]), CAST(:s AS bigint[])) "
            "ON CONFLICT DO NOTHING"),
            {"c": [x.compensation_id for x in f], "f": ["expired_early"] * len(f), "r": [x.region for x in f],
             "h": [x.reservation_id for x in f], "e": [x.event_id for x in f],
             "k": [x.correlation_id for x in f], "v": [x.valid_until for x in f], "t": [x.expired_at for x in f],
             "s": [int(x.early_by.total_seconds()) for x in f]})
    await _save_parked(conn, book, consumer_group)
    return balances


async def save_budget_effects(conn: AsyncConnection, book: Book) -> None:
    """Budget rows (already locked by this transaction) and the overruns recorded against them."""
    await _save_budgets(conn, [b for b in book.budgets.values() if b.dirty])
    if book.out.overruns:
        o = book.out.overruns
        await conn.execute(text(
            "INSERT INTO budget_overruns (region, period, compensation_id, limit_minor, used_minor, occurred_at) "
            "SELECT * FROM unnest(CAST(:r AS text[]), CAST(:p AS text[]), CAST(:c AS text[]), "
            "CAST(:l AS bigint[]), CAST(:u AS bigint[]), CAST(:t AS timestamptz[])) ON CONFLICT DO NOTHING"),
            {"r": [x.region for x in o], "p": [x.period for x in o], "c": [x.compensation_id for x in o],
             "l": [x.limit for x in o], "u": [x.used for x in o], "t": [x.at for x in o]})


async def _save_budgets(conn: AsyncConnection, budgets: list[BudgetState]) -> None:
    if not budgets:
        return
    await conn.execute(text(
        "UPDATE budgets b SET reserved_minor = u.reserved, posted_auto_minor = u.posted_auto, "
        "posted_manual_minor = u.posted_manual, released_minor = u.released, breakage_minor = u.breakage, "
        "allotted_minor = u.allotted, thresholds_fired = CAST(u.thresholds AS int[]), updated_at = now() "
        "FROM unnest(CAST(:r AS text[]), CAST(:p AS text[]), CAST(:res AS bigint[]), CAST(:pa AS bigint[]), "
        "CAST(:pm AS bigint[]), CAST(:rel AS bigint[]), CAST(:brk AS bigint[]), CAST(:al AS bigint[]), "
        "CAST(:th AS text[])) "
        "AS u(region, period, reserved, posted_auto, posted_manual, released, breakage, allotted, thresholds) "
        "WHERE b.region = u.region AND b.period = u.period"),
        {"r": [b.region for b in budgets], "p": [b.period for b in budgets],
         "res": [b.reserved for b in budgets], "pa": [b.posted_auto for b in budgets],
         "pm": [b.posted_manual for b in budgets], "rel": [b.released for b in budgets],
         "brk": [b.breakage for b in budgets], "al": [b.allotted for b in budgets],
         "th": ["{" + ",".join(map(str, sorted(b.thresholds_fired))) + "}" for b in budgets]})


_HOLD_ARRAYS = (
    "CAST(:rid AS text[]), CAST(:cid AS text[]), CAST(:region AS text[]), CAST(:period AS text[]), "
    "CAST(:cur AS text[]), CAST(:kind AS text[]), CAST(:ticket AS text[]), CAST(:buyer AS text[]), "
    "CAST(:status AS text[]), CAST(:requested AS bigint[]), CAST(:decided AS bigint[]), "
    "CAST(:amount AS bigint[]), CAST(:expires AS timestamptz[]), CAST(:denial AS text[]), "
    "CAST(:issued AS bigint[]), CAST(:valid AS timestamptz[]), CAST(:posted AS bigint[]), "
    "CAST(:released AS bigint[]), CAST(:breakage AS bigint[]), CAST(:closed AS text[]), CAST(:allowance AS text[]), "
    "CAST(:posting AS text[])")


def _hold_params(holds: list[Hold]) -> dict[str, list[Any]]:
    return {"rid": [h.reservation_id for h in holds], "cid": [h.compensation_id for h in holds],
            "region": [h.region for h in holds], "period": [h.period for h in holds],
            "cur": [h.currency for h in holds], "kind": [h.kind for h in holds],
            "ticket": [h.ticket_id for h in holds], "buyer": [h.buyer_id for h in holds],
            "status": [h.status.value for h in holds], "requested": [h.requested for h in holds],
            "decided": [h.decided for h in holds], "amount": [h.amount for h in holds],
            "expires": [h.expires_at for h in holds], "denial": [h.denial_reason for h in holds],
            "issued": [h.issued_amount for h in holds], "valid": [h.valid_until for h in holds],
            "posted": [h.posted for h in holds], "released": [h.released for h in holds],
            "breakage": [h.breakage for h in holds], "closed": [h.closed_by for h in holds],
            "allowance": [h.allowance_id for h in holds], "posting": [h.posting_tx_id for h in holds]}


async def _save_holds(conn: AsyncConnection, holds: list[Hold]) -> None:
    new = [h for h in holds if h.new]
    if new:
        # COPY has no ON CONFLICT: a reservation decided concurrently elsewhere fails this batch (it is
        # then retried and answers from the stored decision), never is decided twice.
        raw = await raw_connection(conn)
        await raw.copy_records_to_table("reservations", columns=[*_HOLD_COLUMN_LIST, "requested_event_id"], records=[
            (h.reservation_id, h.compensation_id, h.region, h.period, h.currency, h.kind, h.ticket_id, h.buyer_id,
             h.status.value, h.requested, h.decided, h.amount, h.expires_at, h.denial_reason, h.issued_amount,
             h.valid_until, h.posted, h.released, h.breakage, h.closed_by, h.allowance_id, h.posting_tx_id,
             h.requested_event_id) for h in new])
    changed = [h for h in holds if h.dirty and not h.new]
    if changed:
        await conn.execute(text(
            f"UPDATE reservations r SET status = u.status, amount_minor = u.amount_minor, "
            f"issued_minor = u.issued_minor, valid_until = u.valid_until, posted_minor = u.posted_minor, "
            f"released_minor = u.released_minor, breakage_minor = u.breakage_minor, closed_by = u.closed_by, "
            f"posting_tx_id = u.posting_tx_id, updated_at = now() FROM unnest({_HOLD_ARRAYS}) AS u({_HOLD_COLUMNS}) "
            f"WHERE r.reservation_id = u.reservation_id"), _hold_params(changed))


async def _save_allowances(conn: AsyncConnection, book: Book) -> None:
    """Locked mode (the rows are locked, or new): allowances as the book left them, and the answers given."""
    new = [a for a in book.allowances.values() if a.new]
    changed = [a for a in book.allowances.values() if a.dirty and not a.new]
    for rows, sql in ((new, _INSERT_ALLOWANCES), (changed, _UPDATE_ALLOWANCES)):
        if rows:
            await conn.execute(text(sql), {
                "id": [a.allowance_id for a in rows], "region": [a.region for a in rows],
                "period": [a.period for a in rows], "cur": [a.currency for a in rows],
                "pace": [a.pacing_percent for a in rows], "owner": [a.owner for a in rows],
                "status": ["returned" if a.returned else "open" for a in rows],
                "granted": [a.granted for a in rows], "charged": [a.charged for a in rows],
                "count": [a.charged_count for a in rows], "released": [a.released for a in rows],
                "spent": [a.spent_reported for a in rows], "reported": [a.count_reported for a in rows],
                "expires": [a.expires_at for a in rows], "seq": [a.last_seq for a in rows],
                "reason": [a.return_reason for a in rows], "returned_at": [a.returned_at for a in rows]})
    grants = book.out.new_grants
    if grants:
        await conn.execute(text(
            "INSERT INTO allowance_grants (allowance_id, request_seq, request_event_id, outcome, granted_minor, "
            "answer) SELECT * FROM unnest(CAST(:a AS text[]), CAST(:s AS int[]), CAST(:e AS text[]), "
            "CAST(:o AS text[]), CAST(:g AS bigint[]), CAST(:j AS jsonb[]))"),
            {"a": [g[0] for g in grants], "s": [g[1] for g in grants], "e": [g[2] for g in grants],
             "o": [g[3].outcome.value for g in grants], "g": [g[3].granted.amount_minor for g in grants],
             "j": [g[3].model_dump_json() for g in grants]})


_ALLOWANCE_ARRAYS = (
    "CAST(:id AS text[]), CAST(:region AS text[]), CAST(:period AS text[]), CAST(:cur AS text[]), "
    "CAST(:pace AS smallint[]), CAST(:owner AS text[]), CAST(:status AS text[]), CAST(:granted AS bigint[]), "
    "CAST(:charged AS bigint[]), CAST(:count AS int[]), CAST(:released AS bigint[]), CAST(:spent AS bigint[]), "
    "CAST(:reported AS int[]), CAST(:expires AS timestamptz[]), CAST(:seq AS int[]), CAST(:reason AS text[]), "
    "CAST(:returned_at AS timestamptz[])")
_INSERT_ALLOWANCES = (
    f"INSERT INTO allowances ({_ALLOWANCE_COLUMNS}) SELECT * FROM unnest({_ALLOWANCE_ARRAYS})")
_UPDATE_ALLOWANCES = (
    f"UPDATE allowances a SET status = u.status, granted_minor = u.granted_minor, charged_minor = u.charged_minor, "
    f"charged_count = u.charged_count, released_minor = u.released_minor, "
    f"spent_reported_minor = u.spent_reported_minor, count_reported = u.count_reported, expires_at = u.expires_at, "
    f"last_seq = u.last_seq, return_reason = u.return_reason, returned_at = u.returned_at, updated_at = now() "
    f"FROM unnest({_ALLOWANCE_ARRAYS}) AS u({_ALLOWANCE_COLUMNS}) WHERE a.allowance_id = u.allowance_id")


async def add_allowance_charges(conn: AsyncConnection, book: Book) -> None:
    """Delta mode: add this batch's charges to their allowances, under the row locks this statement takes
    (after the budget rows: the lock order of ``handlers``). The book checked them against the rows as it
    read them; the guard checks again against the rows as they are now (a return may have committed in
    between), so nothing is ever charged beyond what was granted or reported spent."""
    charged = sorted((a for a in book.allowances.values() if a.count_delta), key=lambda a: a.allowance_id)
    if not charged:
        return
    ids = [a.allowance_id for a in charged]
    done = set((await conn.execute(text(
        "WITH x AS (SELECT * FROM unnest(CAST(:id AS text[]), CAST(:d AS bigint[]), CAST(:n AS int[])) "
        "AS x(id, d, n) ORDER BY id) "
        "UPDATE allowances a SET charged_minor = a.charged_minor + x.d, charged_count = a.charged_count + x.n, "
        "updated_at = now() FROM x WHERE a.allowance_id = x.id "
        "AND a.charged_minor + x.d <= coalesce(a.spent_reported_minor, a.granted_minor) "
        "AND a.charged_count + x.n <= coalesce(a.count_reported, a.charged_count + x.n) "
        "RETURNING a.allowance_id"),
        {"id": ids, "d": [a.charged_delta for a in charged], "n": [a.count_delta for a in charged]})).scalars())
    refused = [i for i in ids if i not in done]
    if refused:
        raise PermanentError(f"charges would exceed what allowance(s) {', '.join(refused)} granted or were "
                             f"reported to have spent")


async def _save_compensations(conn: AsyncConnection, comps: list[Compensation]) -> None:
    def params(rows: list[Compensation]) -> dict[str, list[Any]]:
        return {"cid": [c.compensation_id for c in rows], "region": [c.region for c in rows],
                "origin": [c.origin for c in rows], "kind": [c.kind for c in rows],
                "amount": [c.amount for c in rows], "cur": [c.currency for c in rows],
                "period": [c.period for c in rows], "buyer": [c.buyer_id for c in rows],
                "rid": [c.reservation_id for c in rows], "event": [c.issued_event_id for c in rows],
                "at": [c.issued_at for c in rows], "seq": [c.charge_seq for c in rows],
                "tx": [c.current_charge_tx for c in rows],
                "shares": [orjson.dumps(c.current_shares).decode() for c in rows],
                "current": [c.current_amount for c in rows], "corr": [c.last_correction_id for c in rows],
                "posting": [c.posting_tx_id for c in rows]}

    arrays = ("CAST(:cid AS text[]), CAST(:region AS text[]), CAST(:origin AS text[]), CAST(:kind AS text[]), "
              "CAST(:amount AS bigint[]), CAST(:cur AS text[]), CAST(:period AS text[]), CAST(:buyer AS text[]), "
              "CAST(:rid AS text[]), CAST(:event AS text[]), CAST(:at AS timestamptz[]), CAST(:seq AS int[]), "
              "CAST(:tx AS text[]), CAST(:shares AS jsonb[]), CAST(:current AS bigint[]), CAST(:corr AS text[]), "
              "CAST(:posting AS text[])")
    columns = ("compensation_id, region, origin, kind, amount_minor, currency, period, buyer_id, reservation_id, "
               "issued_event_id, issued_at, charge_seq, current_charge_tx, current_shares, current_amount_minor, "
               "last_correction_id, posting_tx_id")
    new = [c for c in comps if c.new]
    if new:
        # COPY has no ON CONFLICT: a second charge for the same compensation fails loudly, never slips in.
        raw = await raw_connection(conn)
        await raw.copy_records_to_table("compensations", columns=[c.strip() for c in columns.split(",")], records=[
            (c.compensation_id, c.region, c.origin, c.kind, c.amount, c.currency, c.period, c.buyer_id,
             c.reservation_id, c.issued_event_id, c.issued_at, c.charge_seq, c.current_charge_tx,
             orjson.dumps(c.current_shares).decode(), c.current_amount, c.last_correction_id, c.posting_tx_id)
            for c in new])
    changed = [c for c in comps if c.dirty and not c.new]
    if changed:
        await conn.execute(text(
            f"UPDATE compensations c SET charge_seq = u.charge_seq, current_charge_tx = u.current_charge_tx, "
            f"current_shares = u.current_shares, current_amount_minor = u.current_amount_minor, "
            f"last_correction_id = u.last_correction_id, posting_tx_id = u.posting_tx_id, updated_at = now() "
            f"FROM unnest({arrays}) AS u({columns}) WHERE c.compensation_id = u.compensation_id"),
            params(changed))


_TRANSFER_COLUMNS = ["tx_id", "line_no", "line_count", "kind", "region", "currency", "debit_account",
                     "credit_account", "amount_minor", "compensation_id", "source_event_id", "reverses_tx_id",
                     "corrects_tx_id", "correction_id", "occurred_at"]


async def _save_journal(conn: AsyncConnection, book: Book) -> BalanceDeltas:
    """The batch's transactions as transfer rows, in one COPY (ADR 0013); returns the balance deltas."""
    txs = book.out.transactions
    if not txs:
        return {}
    rows = []
    balances: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in txs:
        lines = journal.transfers(t)
        count, currency, kind, region = len(lines), t.entries[0].currency, t.kind.value, t.region
        for line, (debit, credit, amount) in enumerate(lines, start=1):
            rows.append((t.tx_id, line, count, kind, region, currency, debit, credit, amount, t.compensation_id,
                         t.source_event_id, t.reverses_tx_id, t.corrects_tx_id, t.correction_id, t.occurred_at))
            d = balances[(region, debit, currency)]
            d[0] += amount
            d[2] += 1
            c = balances[(region, credit, currency)]
            c[1] += amount
            c[2] += 1
    raw = await raw_connection(conn)
    await raw.copy_records_to_table("journal_transfers", columns=_TRANSFER_COLUMNS, records=rows)
    return balances


async def save_balances(conn: AsyncConnection, balances: BalanceDeltas, stripe: int) -> None:
    """Add a batch's aggregated debits and credits to this writer's stripe: one upsert per batch.

    The last lock a writer takes (after its budget rows; see the lock order in ``handlers``). The rows are
    upserted in key order, the same for every writer, so writers sharing a stripe never deadlock here.
    """
    if not balances:
        return
    keys = sorted(balances)
    await conn.execute(text(
        "INSERT INTO account_balances AS a (region, account_key, currency, stripe, debits_minor, credits_minor, "
        "entries) SELECT r, k, c, :s, d, cr, n FROM unnest(CAST(:r AS text[]), CAST(:k AS text[]), "
        "CAST(:c AS text[]), CAST(:d AS bigint[]), CAST(:cr AS bigint[]), CAST(:n AS bigint[])) "
        "AS x(r, k, c, d, cr, n) ON CONFLICT (region, account_key, currency, stripe) DO UPDATE SET "
        "debits_minor = a.debits_minor + EXCLUDED.debits_minor, "
        "credits_minor = a.credits_minor + EXCLUDED.credits_minor, entries = a.entries + EXCLUDED.entries, "
        "updated_at = now()"),
        {"s": stripe, "r": [k[0] for k in keys], "k": [k[1] for k in keys], "c": [k[2] for k in keys],
         "d": [balances[k][0] for k in keys], "cr": [balances[k][1] for k in keys],
         "n": [balances[k][2] for k in keys]})


async def _save_parked(conn: AsyncConnection, book: Book, consumer_group: str) -> None:
    new = book.new_parked()
    if new:
        sources = [_source_of(p, consumer_group) for p in new]
        await conn.execute(text(
            'INSERT INTO parked_events (event_id, compensation_id, event_type, region, value, topic, partition, '
            '"offset", key, consumer_group) SELECT *, :g FROM unnest(CAST(:e AS text[]), CAST(:c AS text[]), '
            "CAST(:t AS text[]), CAST(:r AS text[]), CAST(:v AS bytea[]), CAST(:tp AS text[]), CAST(:p AS int[]), "
            "CAST(:o AS bigint[]), CAST(:k AS bytea[])) ON CONFLICT DO NOTHING"),
            {"e": [p.event_id for p in new], "c": [p.compensation_id for p in new],
             "t": [p.envelope.event_type for p in new], "r": [p.envelope.region for p in new],
             "v": [s.value for s in sources], "tp": [s.topic for s in sources],
             "p": [s.partition for s in sources], "o": [s.offset for s in sources],
             "k": [s.key for s in sources], "g": consumer_group})
    gone = book.out.parked_done + [p.event_id for p, _ in book.out.parked_rejected]
    if gone:
        await conn.execute(text("DELETE FROM parked_events WHERE event_id = ANY(CAST(:e AS text[]))"),
                           {"e": gone})
    if book.out.parked_rejected:
        await dead_letter(conn, [(_source_of(p, consumer_group), reason) for p, reason in book.out.parked_rejected])


def _source_of(parked: ParkedEvent, consumer_group: str) -> Source:
    ref = parked.ref
    if isinstance(ref, Source):
        return ref
    if isinstance(ref, Delivered):  # keep the runner's coordinates, re-encode the envelope it carried
        return Source(ref.topic, ref.partition, ref.offset, ref.key, encode_envelope(parked.envelope),
                      consumer_group)
    return Source("unknown", 0, 0, None, encode_envelope(parked.envelope), consumer_group)


async def dead_letter(conn: AsyncConnection, items: list[tuple[Source, str]]) -> None:
    """Dead-letter events the ledger held back (parked), the way the consumer runner does."""
    await write_dead_letters(conn, [
        DeadLetter(src.group, src.topic, src.partition, src.offset, src.key, src.value, [], f"rejected: {reason}")
        for src, reason in items])


# ------------------------------------------------------------------ housekeeping queries


async def stale_reservations(conn: AsyncConnection, now: datetime, grace_seconds: int,
                             limit: int = 500) -> list[tuple[str, str]]:
    rows = (await conn.execute(text(
        "SELECT reservation_id, compensation_id FROM reservations WHERE status = 'pending' AND ("
        "(issued_minor IS NULL AND expires_at + make_interval(secs => :g) <= :now) OR "
        "(valid_until IS NOT NULL AND valid_until + make_interval(secs => :g) <= :now)) "
        "ORDER BY expires_at LIMIT :n"), {"now": now, "g": grace_seconds, "n": limit})).all()
    return [(r[0], r[1]) for r in rows]


async def stale_parked(conn: AsyncConnection, now: datetime, park_seconds: int,
                       limit: int = 500) -> list[tuple[str, Source]]:
    rows = (await conn.execute(text(
        'SELECT event_id, topic, partition, "offset", key, value, consumer_group FROM parked_events '
        "WHERE parked_at + make_interval(secs => :s) <= :now ORDER BY parked_at LIMIT :n FOR UPDATE SKIP LOCKED"),
        {"now": now, "s": park_seconds, "n": limit})).all()
    return [(r[0], Source(r[1], r[2], r[3], r[4], bytes(r[5]), r[6])) for r in rows]


async def delete_parked(conn: AsyncConnection, event_ids: list[str]) -> None:
    await conn.execute(text("DELETE FROM parked_events WHERE event_id = ANY(CAST(:e AS text[]))"),
                       {"e": event_ids})
