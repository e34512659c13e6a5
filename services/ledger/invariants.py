"""The ledger's invariants, checked in SQL over the whole book. Each check counts its violations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

CHECKS: dict[str, str] = {
    # every journal transaction balances and is complete: its transfer lines (each balanced by construction,
    # amount > 0 between two accounts) are numbered 1..line_count and agree on what the transaction is
    "unbalanced_transactions": """
        SELECT count(*) FROM (
            SELECT tx_id FROM journal_transfers GROUP BY tx_id
            HAVING count(*) <> max(line_count) OR min(line_count) <> max(line_count) OR max(line_no) <> count(*)
                OR bool_or(amount_minor <= 0 OR debit_account = credit_account)
                OR count(DISTINCT (kind, region, currency, coalesce(compensation_id, ''), source_event_id,
                                   coalesce(reverses_tx_id, ''), coalesce(corrects_tx_id, ''),
                                   coalesce(correction_id, ''), occurred_at)) <> 1) v""",
    # automatic spend (reserved + posted) + outstanding allowances within every budget (ADR 0012); manual
    # compensations, always charged, only shrink what later grants may give
    "budget_overspent": """
        SELECT count(*) FROM budgets WHERE limit_minor IS NOT NULL
            AND allotted_minor + reserved_minor + posted_auto_minor > limit_minor""",
    # a budget's counters agree with its reservations and its allowances
    "budget_counters_drift": """
        SELECT count(*) FROM budgets b LEFT JOIN (
            SELECT region, period, sum(amount_minor) FILTER (WHERE status = 'pending') AS pending,
                   sum(posted_minor) AS posted FROM reservations GROUP BY region, period) r
            ON r.region = b.region AND r.period = b.period
        LEFT JOIN (
            SELECT region, period, sum(granted_minor - released_minor - charged_minor) AS outstanding
            FROM allowances GROUP BY region, period) a ON a.region = b.region AND a.period = b.period
        WHERE b.reserved_minor <> coalesce(r.pending, 0) OR b.posted_auto_minor <> coalesce(r.posted, 0)
           OR b.allotted_minor <> coalesce(a.outstanding, 0)""",
    # a batch posts the budget once per budget account (ADR 0013): every posting is exactly the parts
    # that name it (manual compensations at issue, holds as posted), and every posted part names one
    "budget_postings_drift": """
        SELECT (SELECT count(*) FROM journal_transfers t FULL JOIN (
                    SELECT posting_tx_id, sum(part) AS total FROM (
                        SELECT posting_tx_id, amount_minor AS part FROM compensations
                        WHERE origin = 'manual' AND posting_tx_id IS NOT NULL
                        UNION ALL
                        SELECT posting_tx_id, posted_minor FROM reservations WHERE posting_tx_id IS NOT NULL) p
                    GROUP BY posting_tx_id) s ON s.posting_tx_id = t.tx_id
                WHERE (t.kind = 'budget_posting' OR t.tx_id IS NULL) AND t.amount_minor IS DISTINCT FROM s.total)
             + (SELECT count(*) FROM compensations WHERE origin = 'manual' AND posting_tx_id IS NULL)
             + (SELECT count(*) FROM reservations WHERE posted_minor > 0 AND posting_tx_id IS NULL)""",
    # every granted unit is charged, released, held by the open allowance, or reported spent and on its
    # way: an allowance's charges are exactly the holds opened from it, never beyond its grant or, once
    # returned, beyond what auto_comp reported spent; what it released is the rest of its grant
    "allowance_accounting": """
        SELECT count(*) FROM allowances a LEFT JOIN (
            SELECT allowance_id, sum(decided_minor) AS charged, count(*) AS n FROM reservations
            WHERE allowance_id IS NOT NULL GROUP BY allowance_id) h ON h.allowance_id = a.allowance_id
        WHERE a.charged_minor <> coalesce(h.charged, 0) OR a.charged_count <> coalesce(h.n, 0)
           OR a.charged_minor + a.released_minor > a.granted_minor
           OR (a.status = 'returned' AND (a.charged_minor > a.spent_reported_minor
               OR a.charged_count > a.count_reported
               OR a.released_minor <> a.granted_minor - a.spent_reported_minor))
           OR (a.status = 'open' AND a.released_minor <> 0)
           OR a.granted_minor <> coalesce((SELECT sum(g.granted_minor) FROM allowance_grants g
                                           WHERE g.allowance_id = a.allowance_id), 0)""",
    # exactly one live (unreversed) charge per issued compensation, none when corrected to zero
    "charges_per_compensation": """
        SELECT count(*) FROM compensations c LEFT JOIN LATERAL (
            SELECT count(*) AS live FROM journal_transfers t
            WHERE t.compensation_id = c.compensation_id AND t.line_no = 1 AND t.kind = 'charge'
              AND NOT EXISTS (SELECT 1 FROM journal_transfers r WHERE r.reverses_tx_id = t.tx_id
                              AND r.line_no = 1)) l ON true
        WHERE l.live <> CASE WHEN c.current_amount_minor > 0 THEN 1 ELSE 0 END""",
    # a closed automatic compensation charges its liable parties no more than the buyer received: the
    # redeemed value, nothing when it expired or was revoked (charges debit the parties, reversals credit them)
    "charged_beyond_received": """
        SELECT count(*) FROM compensations c
        JOIN reservations r ON r.reservation_id = c.reservation_id AND r.status IN ('posted', 'voided')
        JOIN LATERAL (
            SELECT coalesce(sum(CASE WHEN t.kind = 'charge' THEN t.amount_minor ELSE -t.amount_minor END), 0)
                   AS charged
            FROM journal_transfers t
            WHERE t.compensation_id = c.compensation_id AND t.kind IN ('charge', 'reversal')) l ON true
        WHERE c.origin = 'auto' AND l.charged > r.posted_minor""",
    # no reservation left pending past its expiry (never issued) or its voucher's validity, plus grace
    "orphan_reservations": """
        SELECT count(*) FROM reservations WHERE status = 'pending' AND (
            (issued_minor IS NULL AND expires_at + make_interval(secs => :grace) < :now)
            OR (valid_until IS NOT NULL AND valid_until + make_interval(secs => :grace) < :now))""",
    # the striped balances agree with the journal
    "balances_drift": """
        SELECT count(*) FROM (
            SELECT region, account_key, currency, sum(amount) AS total FROM (
                SELECT region, debit_account AS account_key, currency, amount_minor AS amount FROM journal_transfers
                UNION ALL
                SELECT region, credit_account, currency, -amount_minor FROM journal_transfers) x
            GROUP BY 1, 2, 3) j
        FULL JOIN (
            SELECT region, account_key, currency, sum(debits_minor - credits_minor) AS total
            FROM account_balances GROUP BY 1, 2, 3) b USING (region, account_key, currency)
        WHERE j.total IS DISTINCT FROM b.total""",
}


async def check(conn: AsyncConnection, now: datetime, grace_seconds: int) -> dict[str, int]:
    """Violations per check; all zero when the books are sound."""
    out = {}
    for name, sql in CHECKS.items():
        params = {"now": now, "grace": grace_seconds} if ":now" in sql else {}
        out[name] = int((await conn.execute(text(sql), params)).scalar_one())
    return out
