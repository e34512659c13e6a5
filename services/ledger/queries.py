"""Read side and budget administration: usage, balances, statements, lineage, breakage, budget changes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.ledger.domain import journal
from services.ledger.domain.budget import BudgetState
from services.ledger.persistence import BUDGET_COLUMNS, budget_state
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
        "SELECT limit_minor, allotted_minor + reserved_minor + posted_auto_minor FROM budgets "
        "WHERE region = :r AND period = :p FOR UPDATE"), {"r": region, "p": period})).one()
    old, committed = row[0], row[1]
    if limit < committed:
        raise LimitBelowCommitted(
            f"limit {limit} is below the {committed} already allotted, reserved or posted by automatic "
            f"compensation")
    await conn.execute(text(
        "UPDATE budgets SET limit_minor = :l, updated_at = now() WHERE region = :r AND period = :p"),
        {"l": limit, "r": region, "p": period})
    change = (await conn.execute(text(
        "INSERT INTO budget_changes (region, period, currency, old_limit_minor, new_limit_minor, actor, via, reason) "
        "VALUES (:r, :p, :c, :o, :l, :a, :v, :why) RETURNING id, changed_at"),
        {"r": region, "p": period, "c": currency, "o": old, "l": limit, "a": actor, "v": via, "why": reason})).one()
    # Announced in the same transaction (outbox): insights draws the burn-down against the limit in force.
    payload = ev.BudgetLimitSet(
        budget_period=period, limit=ev.MoneyTotal(amount_minor=limit, currency=currency),
        previous_limit=None if old is None else ev.MoneyTotal(amount_minor=old, currency=currency),
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
        f"SELECT {BUDGET_COLUMNS} FROM budgets b WHERE b.region = :r AND b.period = :p"),
        {"r": region, "p": period})).one_or_none()
    return None if r is None else budget_state(r)


async def allowances(conn: AsyncConnection, region: str, period: str, *, open_only: bool,
                     limit: int = 200) -> list[dict[str, Any]]:
    """The budget's allowances, newest first: what each was granted, charged, released, reported spent."""
    rows = (await conn.execute(text(
        "SELECT allowance_id, owner, status, pacing_percent, granted_minor, charged_minor, charged_count, "
        "released_minor, spent_reported_minor, count_reported, granted_minor - released_minor - charged_minor "
        "AS outstanding_minor, expires_at, last_seq AS requests, return_reason, returned_at, created_at "
        "FROM allowances WHERE region = :r AND period = :p AND (NOT :o OR status = 'open') "
        "ORDER BY created_at DESC, allowance_id LIMIT :n"),
        {"r": region, "p": period, "o": open_only, "n": limit})).mappings().all()
    return [dict(r) for r in rows]


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


# A liable party's lines: charges debit it, reversals of charges credit it (nothing else touches a party
# account), each through its partial index (ADR 0013).
_PARTY_LINES = (
    "SELECT occurred_at, tx_id, line_no, kind, compensation_id, correction_id, reverses_tx_id, corrects_tx_id, "
    "currency, amount_minor FROM journal_transfers WHERE kind = 'charge' AND region = :r AND debit_account = :a "
    "AND occurred_at >= :s AND occurred_at < :e "
    "UNION ALL "
    "SELECT occurred_at, tx_id, line_no, kind, compensation_id, correction_id, reverses_tx_id, corrects_tx_id, "
    "currency, -amount_minor FROM journal_transfers WHERE kind = 'reversal' AND region = :r AND credit_account = :a "
    "AND occurred_at >= :s AND occurred_at < :e")


async def statement_lines(conn: AsyncConnection, region: str, account: str, start: datetime,
                          end: datetime) -> tuple[int, list[dict[str, Any]]]:
    """(opening balance, lines of the period) of a liable party's account, by business time (the event's
    occurred_at): what it was charged (+) and what was reversed (-)."""
    floor = datetime(1970, 1, 1, tzinfo=start.tzinfo)
    opening = (await conn.execute(text(f"SELECT coalesce(sum(amount_minor), 0) FROM ({_PARTY_LINES}) x"),
                                  {"r": region, "a": account, "s": floor, "e": start})).scalar_one()
    rows = (await conn.execute(text(f"SELECT * FROM ({_PARTY_LINES}) x ORDER BY occurred_at, tx_id, line_no"),
                               {"r": region, "a": account, "s": start, "e": end})).all()
    keys = ("occurred_at", "tx_id", "kind", "compensation_id", "correction_id", "reverses_tx_id", "corrects_tx_id",
            "currency", "amount_minor")
    return int(opening), [dict(zip(keys, (r[0], r[1], *r[3:]), strict=True)) for r in rows]


async def lineage(conn: AsyncConnection, compensation_id: str) -> dict[str, Any] | None:
    comp = (await conn.execute(text(
        "SELECT compensation_id, region, origin, kind, amount_minor, currency, period, buyer_id, reservation_id, "
        "issued_event_id, issued_at, current_charge_tx, current_amount_minor, current_shares, last_correction_id, "
        "posting_tx_id FROM compensations WHERE compensation_id = :c"),
        {"c": compensation_id})).mappings().one_or_none()
    reservations = (await conn.execute(text(
        "SELECT reservation_id, region, period, currency, kind, status, requested_minor, decided_minor, "
        "amount_minor, denial_reason, issued_minor, posted_minor, released_minor, breakage_minor, closed_by, "
        "expires_at, valid_until, allowance_id, posting_tx_id, requested_event_id, created_at, updated_at "
        "FROM reservations WHERE compensation_id = :c ORDER BY created_at"), {"c": compensation_id})).mappings().all()
    if comp is None and not reservations:
        return None
    # Its own transactions, and the budget postings that carry its posted part (a batch's posting carries
    # several compensations: ``share_minor`` is this one's part of it).
    shares: dict[str, int] = {}
    if comp is not None and comp["posting_tx_id"] and comp["origin"] == "manual":
        shares[comp["posting_tx_id"]] = comp["amount_minor"]
    for r in reservations:
        if r["posting_tx_id"]:
            shares[r["posting_tx_id"]] = shares.get(r["posting_tx_id"], 0) + r["posted_minor"]
    lines = (await conn.execute(text(
        "SELECT tx_id, line_no, kind, source_event_id, reverses_tx_id, corrects_tx_id, correction_id, occurred_at, "
        "recorded_at, currency, debit_account, credit_account, amount_minor FROM journal_transfers "
        "WHERE tx_id IN (SELECT tx_id FROM journal_transfers WHERE compensation_id = :c AND line_no = 1) "
        "OR tx_id = ANY(CAST(:p AS text[])) ORDER BY recorded_at, tx_id, line_no"),
        {"c": compensation_id, "p": sorted(shares)})).mappings().all()
    txs: dict[str, dict[str, Any]] = {}
    for line in lines:
        tx = txs.get(line["tx_id"])
        if tx is None:
            tx = txs[line["tx_id"]] = {k: line[k] for k in (
                "tx_id", "kind", "source_event_id", "reverses_tx_id", "corrects_tx_id", "correction_id", "occurred_at",
                "recorded_at", "currency")}
            tx["transfers"] = []
            if line["tx_id"] in shares:
                tx["share_minor"] = shares[line["tx_id"]]
        tx["transfers"].append(journal.Transfer(line["debit_account"], line["credit_account"], line["amount_minor"]))
    for tx in txs.values():
        tx["entries"] = [{"account": a, "amount_minor": m} for a, m in journal.entries_of(tx["transfers"])]
        tx["transfers"] = [{"debit": t.debit, "credit": t.credit, "amount_minor": t.amount} for t in tx["transfers"]]
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
            "reservations": [dict(r) for r in reservations], "transactions": list(txs.values()),
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
