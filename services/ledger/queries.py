"""Read side and budget administration: usage, balances, statements, lineage, breakage, budget changes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.ledger.domain.budget import BudgetState
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from shared.outbox import enqueue


class LimitBelowCommitted(ValueError):
    """A new limit below what automatic compensation already reserved or spent this period."""


@dataclass(frozen=True)
class BudgetChange:
    old_limit: int | None
    new_limit: int
    actor: str
    via: str
    reason: str
    changed_at: datetime


async def set_budget(conn: AsyncConnection, *, region: str, period: str, currency: str, limit: int,
                     actor: str, via: str, reason: str) -> BudgetState:
    """Set a budget's limit and record who changed what, under the same row lock consumers take."""
    await conn.execute(text(
        "INSERT INTO budgets (region, period, currency) VALUES (:r, :p, :c) ON CONFLICT DO NOTHING"),
        {"r": region, "p": period, "c": currency})
    row = (await conn.execute(text(
        "SELECT limit_minor, reserved_minor + posted_auto_minor FROM budgets WHERE region = :r AND period = :p "
        "FOR UPDATE"), {"r": region, "p": period})).one()
    old, committed = row[0], row[1]
    if limit < committed:
        raise LimitBelowCommitted(
            f"limit {limit} is below the {committed} already reserved or posted by automatic compensation")
    await conn.execute(text(
        "UPDATE budgets SET limit_minor = :l, updated_at = now() WHERE region = :r AND period = :p"),
        {"l": limit, "r": region, "p": period})
    change = (await conn.execute(text(
        "INSERT INTO budget_changes (region, period, currency, old_limit_minor, new_limit_minor, actor, via, reason) "
        "VALUES (:r, :p, :c, :o, :l, :a, :v, :why) RETURNING id, changed_at"),
        {"r": region, "p": period, "c": currency, "o": old, "l": limit, "a": actor, "v": via, "why": reason})).one()
    # Announced in the same transaction (outbox): insights draws the burn-down against the limit in force.
    payload = ev.BudgetLimitSet(
        budget_period=period, limit=ev.NonNegativeMoney(amount_minor=limit, currency=currency),
        previous_limit=None if old is None else ev.NonNegativeMoney(amount_minor=old, currency=currency),
        actor=_identifier(actor), reason=reason or None)
    await enqueue(conn, [make_envelope("budget.limit_set", payload, source="ledger", region=region,
                                       occurred_at=change[1], event_id=f"budget-limit-{region}-{period}-{change[0]}")])
    budget = await get_budget(conn, region, period)
    assert budget is not None
    return budget


def _identifier(actor: str) -> str:
    """The actor as an event Identifier (a token subject may hold characters identifiers do not)."""
    cleaned = re.sub(r"[^A-Za-z0-9._:@\-]", "_", actor)[:128]
    return cleaned or "unknown"


async def get_budget(conn: AsyncConnection, region: str, period: str) -> BudgetState | None:
    r = (await conn.execute(text(
        "SELECT region, period, currency, limit_minor, reserved_minor, posted_auto_minor, posted_manual_minor, "
        "released_minor, breakage_minor, thresholds_fired FROM budgets WHERE region = :r AND period = :p"),
        {"r": region, "p": period})).one_or_none()
    if r is None:
        return None
    return BudgetState(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], set(r[9]))


async def budget_changes(conn: AsyncConnection, region: str, period: str, limit: int = 100) -> list[BudgetChange]:
    rows = (await conn.execute(text(
        "SELECT old_limit_minor, new_limit_minor, actor, via, reason, changed_at FROM budget_changes "
        "WHERE region = :r AND period = :p ORDER BY changed_at DESC, id DESC LIMIT :n"),
        {"r": region, "p": period, "n": limit})).all()
    return [BudgetChange(*r) for r in rows]


async def overrun_count(conn: AsyncConnection, region: str, period: str) -> int:
    return int((await conn.execute(text(
        "SELECT count(*) FROM budget_overruns WHERE region = :r AND period = :p"),
        {"r": region, "p": period})).scalar_one())


async def account_balance(conn: AsyncConnection, region: str, account: str) -> dict[str, Any] | None:
    r = (await conn.execute(text(
        "SELECT currency, sum(debits_minor), sum(credits_minor), sum(entries) FROM account_balances "
        "WHERE region = :r AND account_key = :a GROUP BY currency"), {"r": region, "a": account})).first()
    if r is None:
        return None
    return {"currency": r[0], "debits_minor": int(r[1]), "credits_minor": int(r[2]),
            "balance_minor": int(r[1]) - int(r[2]), "entries": int(r[3])}


async def statement_lines(conn: AsyncConnection, region: str, account: str, start: datetime,
                          end: datetime) -> tuple[int, list[dict[str, Any]]]:
    """(opening balance, lines of the period) of an account, by business time (the event's occurred_at)."""
    opening = (await conn.execute(text(
        "SELECT coalesce(sum(amount_minor), 0) FROM journal_entries WHERE region = :r AND account_key = :a "
        "AND occurred_at < :s"), {"r": region, "a": account, "s": start})).scalar_one()
    rows = (await conn.execute(text(
        "SELECT e.occurred_at, e.tx_id, t.kind, t.compensation_id, t.correction_id, t.reverses_tx_id, "
        "t.corrects_tx_id, e.currency, e.amount_minor FROM journal_entries e JOIN journal_transactions t "
        "ON t.tx_id = e.tx_id WHERE e.region = :r AND e.account_key = :a AND e.occurred_at >= :s "
        "AND e.occurred_at < :e ORDER BY e.occurred_at, e.tx_id, e.line_no"),
        {"r": region, "a": account, "s": start, "e": end})).all()
    keys = ("occurred_at", "tx_id", "kind", "compensation_id", "correction_id", "reverses_tx_id", "corrects_tx_id",
            "currency", "amount_minor")
    return int(opening), [dict(zip(keys, r, strict=True)) for r in rows]


async def lineage(conn: AsyncConnection, compensation_id: str) -> dict[str, Any] | None:
    comp = (await conn.execute(text(
        "SELECT compensation_id, region, origin, kind, amount_minor, currency, period, buyer_id, reservation_id, "
        "issued_event_id, issued_at, current_charge_tx, current_amount_minor, current_shares, last_correction_id "
        "FROM compensations WHERE compensation_id = :c"), {"c": compensation_id})).mappings().one_or_none()
    reservations = (await conn.execute(text(
        "SELECT reservation_id, region, period, currency, kind, status, requested_minor, decided_minor, "
        "amount_minor, denial_reason, issued_minor, posted_minor, released_minor, breakage_minor, closed_by, "
        "expires_at, valid_until, requested_event_id, created_at, updated_at FROM reservations "
        "WHERE compensation_id = :c ORDER BY created_at"), {"c": compensation_id})).mappings().all()
    if comp is None and not reservations:
        return None
    txs = (await conn.execute(text(
        "SELECT t.tx_id, t.kind, t.source_event_id, t.reverses_tx_id, t.corrects_tx_id, t.correction_id, "
        "t.occurred_at, t.recorded_at, t.currency, (SELECT json_agg(json_build_object('account', e.account_key, "
        "'amount_minor', e.amount_minor) ORDER BY e.line_no) FROM journal_entries e WHERE e.tx_id = t.tx_id) "
        "AS entries FROM journal_transactions t WHERE t.compensation_id = :c ORDER BY t.recorded_at, t.tx_id"),
        {"c": compensation_id})).mappings().all()
    corrections = (await conn.execute(text(
        "SELECT correction_id, corrects_correction_id, reversal_tx_id, charge_tx_id, corrected_amount_minor, "
        "source_event_id, occurred_at, auditor_id, dispute_raised_by, disputed_auditor_id FROM corrections "
        "WHERE compensation_id = :c ORDER BY recorded_at"), {"c": compensation_id})).mappings().all()
    flags = (await conn.execute(text(
        "SELECT flag, reservation_id, event_id, correlation_id, valid_until, reported_at, early_by_seconds, "
        "recorded_at FROM lifecycle_flags WHERE compensation_id = :c ORDER BY recorded_at"),
        {"c": compensation_id})).mappings().all()
    parked = (await conn.execute(text(
        "SELECT event_id, event_type, parked_at FROM parked_events WHERE compensation_id = :c ORDER BY parked_at"),
        {"c": compensation_id})).mappings().all()
    region = comp["region"] if comp is not None else reservations[0]["region"]
    return {"compensation_id": compensation_id, "region": region,
            "compensation": dict(comp) if comp is not None else None,
            "reservations": [dict(r) for r in reservations], "transactions": [dict(t) for t in txs],
            "corrections": [dict(c) for c in corrections], "waiting_events": [dict(p) for p in parked],
            "flags": [dict(f) for f in flags]}


async def parked_events(conn: AsyncConnection, regions: list[str] | None, park_seconds: int, *,
                        limit: int = 100) -> list[dict[str, Any]]:
    """Events waiting for their compensation, oldest first; ``regions`` None means every region.

    ``dead_letter_at`` is when the housekeeper dead-letters the event if its compensation still has not
    arrived (LEDGER_PARK_SECONDS after it was parked).
    """
    rows = (await conn.execute(text(
        'SELECT event_id, compensation_id, event_type, region, topic, partition, "offset", consumer_group, '
        "parked_at, parked_at + make_interval(secs => :s) AS dead_letter_at, "
        "EXTRACT(EPOCH FROM now() - parked_at)::bigint AS age_seconds FROM parked_events "
        "WHERE CAST(:r AS text[]) IS NULL OR region = ANY(CAST(:r AS text[])) "
        "ORDER BY parked_at, event_id LIMIT :n"),
        {"s": park_seconds, "r": regions, "n": limit})).mappings().all()
    return [dict(r) for r in rows]


async def breakage_report(conn: AsyncConnection, region: str, period: str) -> list[dict[str, Any]]:
    rows = (await conn.execute(text(
        "SELECT kind, count(*) FILTER (WHERE breakage_minor > 0) AS expired, "
        "CAST(coalesce(sum(breakage_minor), 0) AS bigint) AS breakage_minor, "
        "count(*) FILTER (WHERE closed_by = 'redeemed' AND released_minor > 0) AS partly_redeemed, "
        "CAST(coalesce(sum(released_minor) FILTER (WHERE closed_by = 'redeemed'), 0) AS bigint) "
        "AS unredeemed_remainder_minor, CAST(coalesce(sum(issued_minor), 0) AS bigint) AS issued_minor "
        "FROM reservations WHERE region = :r AND period = :p AND issued_minor IS NOT NULL GROUP BY kind ORDER BY kind"),
        {"r": region, "p": period})).mappings().all()
    return [dict(r) for r in rows]
