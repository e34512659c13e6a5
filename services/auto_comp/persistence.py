"""SQL against the auto_comp schema. Batches travel as one JSON document per statement
(``jsonb_to_recordset``) so a whole batch costs a handful of round trips."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.auto_comp.domain.engine import Granted
from shared.money import Money


def _json(rows: Any) -> str:
    return orjson.dumps(rows, default=_default).decode()


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


async def lock_buyers(conn: AsyncConnection, buyers: Iterable[tuple[str, str]]) -> None:
    """Serialise deciding for these buyers across consumers until the transaction ends.

    Sorted order on both statements, so two batches sharing buyers queue instead of deadlocking.
    """
    keys = sorted(set(buyers))
    if not keys:
        return
    params = {"r": [k[0] for k in keys], "b": [k[1] for k in keys]}
    await conn.execute(text(
        "INSERT INTO buyer_guards (region, buyer_id) SELECT r, b FROM unnest(CAST(:r AS text[]), "
        "CAST(:b AS text[])) AS x(r, b) ORDER BY r, b ON CONFLICT DO NOTHING"), params)
    await conn.execute(text(
        "SELECT 1 FROM buyer_guards g JOIN unnest(CAST(:r AS text[]), CAST(:b AS text[])) AS x(r, b) "
        "ON g.region = x.r AND g.buyer_id = x.b ORDER BY g.region, g.buyer_id FOR UPDATE OF g"), params)


async def decided_tickets(conn: AsyncConnection, ticket_ids: Sequence[str]) -> set[str]:
    if not ticket_ids:
        return set()
    rows = await conn.execute(text("SELECT ticket_id FROM decisions WHERE ticket_id = ANY(CAST(:ids AS text[]))"),
                              {"ids": list(ticket_ids)})
    return set(rows.scalars())


async def buyer_history(conn: AsyncConnection, buyers: Iterable[tuple[str, str]], since: datetime,
                        until: datetime) -> dict[tuple[str, str], list[Granted]]:
    """Pending and issued compensations of these buyers whose tickets occurred in [since, until] (denied and
    expired ones issued nothing, so they do not count)."""
    keys = sorted(set(buyers))
    out: dict[tuple[str, str], list[Granted]] = {k: [] for k in keys}
    if not keys:
        return out
    # One index probe per buyer (compensations_buyer), whatever the table's statistics say. As a plain join
    # the planner, with statistics older than the table's growth, read every compensation in the time
    # window and hashed it, once per batch: the table's size per batch, most of the PostgreSQL CPU of a
    # decision under load. ``OFFSET 0`` keeps the lateral subquery from being flattened into that join.
    rows = await conn.execute(text(
        "SELECT c.region, c.buyer_id, c.ticket_occurred_at, coalesce(c.issued_minor, c.requested_minor), "
        "c.currency FROM unnest(CAST(:r AS text[]), CAST(:b AS text[])) AS x(r, b) CROSS JOIN LATERAL ("
        "SELECT region, buyer_id, ticket_occurred_at, issued_minor, requested_minor, currency "
        "FROM compensations WHERE region = x.r AND buyer_id = x.b AND status IN ('pending', 'issued') "
        "AND ticket_occurred_at BETWEEN :since AND :until OFFSET 0) AS c"),
        {"r": [k[0] for k in keys], "b": [k[1] for k in keys], "since": since, "until": until})
    for region, buyer, at, minor, currency in rows:
        out[(region, buyer)].append(Granted(at, Money(int(minor), currency)))
    return out


async def taken_orders(conn: AsyncConnection, order_ids: Sequence[str]) -> set[tuple[str, str]]:
    if not order_ids:
        return set()
    rows = await conn.execute(text(
        "SELECT order_id, scenario FROM compensations WHERE order_id = ANY(CAST(:ids AS text[])) "
        "AND status IN ('pending', 'issued')"), {"ids": list(set(order_ids))})
    return {(r[0], r[1]) for r in rows}


_DECISION_COLS = (
    "ticket_id text, region text, order_id text, buyer_id text, reason text, outcome text, failed_rule text, "
    "detail text, strategy_id text, strategy_version int, config_version text, scenario text, tier text, "
    "currency text, proposed_minor bigint, compensation_id text, inputs jsonb, event_id text, "
    "ticket_occurred_at timestamptz")


def _names(cols: str) -> str:
    return ", ".join(c.strip().split(" ")[0] for c in cols.split(","))


async def insert_decisions(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(
            f"INSERT INTO decisions ({_names(_DECISION_COLS)}) SELECT {_names(_DECISION_COLS)} "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({_DECISION_COLS})"), {"rows": _json(rows)})


_SHADOW_COLS = ("ticket_id text, strategy_id text, strategy_version int, region text, outcome text, "
                "failed_rule text, detail text, tier text, currency text, proposed_minor bigint, inputs jsonb")


async def insert_shadow_decisions(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(
            f"INSERT INTO shadow_decisions ({_names(_SHADOW_COLS)}) SELECT {_names(_SHADOW_COLS)} "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({_SHADOW_COLS}) ON CONFLICT DO NOTHING"),
            {"rows": _json(rows)})


_COMP_COLS = (
    "compensation_id text, reservation_id text, ticket_id text, strategy_id text, strategy_version int, "
    "order_id text, scenario text, buyer_id text, region text, reason text, kind text, currency text, "
    "status text, requested_minor bigint, fallback_minor bigint[], liability_rule text, shares jsonb, "
    "min_spend_minor bigint, expires_at timestamptz, request jsonb, correlation_id text, "
    "ticket_occurred_at timestamptz")


async def insert_compensations(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(
            f"INSERT INTO compensations ({_names(_COMP_COLS)}) SELECT {_names(_COMP_COLS)} "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({_COMP_COLS})"), {"rows": _json(rows)})


# What applying an answer reads (not the stored request document, which only re-sends need).
_PENDING_COLS = (
    "compensation_id, reservation_id, ticket_id, strategy_id, strategy_version, order_id, scenario, buyer_id, "
    "region, reason, kind, currency, status, requested_minor, fallback_minor, liability_rule, shares, "
    "min_spend_minor, expires_at, correlation_id, attempts, ticket_occurred_at")


async def lock_pending(conn: AsyncConnection, reservation_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The still-pending compensations of these reservations, locked (an answer already applied is gone).

    ``expired`` says the reservation's expiry has passed (the database's clock, the one the sweeper uses):
    such a compensation may no longer be issued, whatever the answer."""
    if not reservation_ids:
        return {}
    rows = await conn.execute(text(
        f"SELECT {_PENDING_COLS}, expires_at <= now() AS expired FROM compensations "
        "WHERE reservation_id = ANY(CAST(:ids AS text[])) "
        "AND status = 'pending' ORDER BY reservation_id FOR UPDATE"), {"ids": sorted(set(reservation_ids))})
    # Keys zipped onto plain tuples: a RowMapping recomputes its keys for each row (about 4% of the
    # service's CPU under load, for this one statement).
    keys = tuple(rows.keys())
    at = keys.index("reservation_id")
    return {r[at]: dict(zip(keys, r, strict=True)) for r in rows}


# Every transition out of 'pending' below is conditional on the row still being pending (and, for an
# issue, on its reservation not having expired), in the statement that makes it: whichever of issue,
# denial and expiry reaches a compensation first wins, and the others change nothing and learn so from
# what the statement returns. The row locks of ``lock_pending`` make the answer path wait less, but
# correctness does not depend on a caller having taken them.
#
# The answer paths find their rows by primary key. ``status IS NOT DISTINCT FROM 'pending'`` (status is NOT
# NULL: the same test as ``=``) keeps the partial indexes on pending rows out of reach: with statistics
# taken before the pending backlog grew, the planner read every pending compensation through one of them
# and hashed it, once per batch of answers.


async def mark_issued(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    """rows: compensation_id, ticket_id, issued_minor, voucher_code, budget_period, detail.

    Returns the compensation ids this call issued: still pending and before their expiry. The caller
    publishes ``compensation.issued`` for those only."""
    if not rows:
        return set()
    cols = ("compensation_id text, ticket_id text, issued_minor bigint, voucher_code text, "
            "budget_period text, detail text")
    # Both tables in one statement: one round trip and one parse of the batch.
    result = await conn.execute(text(
        f"WITH x AS MATERIALIZED (SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({cols})), "
        f"c AS (UPDATE compensations c SET status = 'issued', issued_minor = x.issued_minor, "
        f"voucher_code = x.voucher_code, budget_period = x.budget_period, settled_at = now() "
        f"FROM x WHERE c.compensation_id = x.compensation_id AND c.status IS NOT DISTINCT FROM 'pending' "
        f"AND c.expires_at > now() RETURNING c.compensation_id), "
        f"d AS (UPDATE decisions d SET outcome = 'issued', issued_minor = x.issued_minor, detail = x.detail, "
        f"failed_rule = NULL, updated_at = now() FROM x JOIN c ON c.compensation_id = x.compensation_id "
        f"WHERE d.ticket_id = x.ticket_id AND d.compensation_id = x.compensation_id) "
        f"SELECT compensation_id FROM c"), {"rows": _json(rows)})
    return set(result.scalars())


async def mark_denied(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    """rows: compensation_id, ticket_id, outcome (budget_denied | paced), denial_reason, budget_period, detail.

    Returns the compensation ids this call denied (those still pending)."""
    if not rows:
        return set()
    cols = "compensation_id text, ticket_id text, outcome text, denial_reason text, budget_period text, detail text"
    result = await conn.execute(text(
        f"WITH x AS MATERIALIZED (SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({cols})), "
        f"c AS (UPDATE compensations c SET status = 'denied', denial_reason = x.denial_reason, "
        f"budget_period = x.budget_period, settled_at = now() "
        f"FROM x WHERE c.compensation_id = x.compensation_id AND c.status IS NOT DISTINCT FROM 'pending' "
        f"RETURNING c.compensation_id), "
        f"d AS (UPDATE decisions d SET outcome = x.outcome, failed_rule = 'budget', detail = x.detail, "
        f"updated_at = now() FROM x JOIN c ON c.compensation_id = x.compensation_id "
        f"WHERE d.ticket_id = x.ticket_id AND d.compensation_id = x.compensation_id) "
        f"SELECT compensation_id FROM c"), {"rows": _json(rows)})
    return set(result.scalars())


async def expire_pending(conn: AsyncConnection, *, compensation_ids: Sequence[str] | None = None,
                         limit: int = 500) -> list[dict[str, Any]]:
    """Pending compensations whose reservation has expired become ``expired`` (decision
    ``reservation_expired``); returns those this call expired (compensation_id, ticket_id, region,
    strategy_id, reservation_id, expires_at).

    ``compensation_ids`` limits it to those (an answer that arrived too late); without it, it is the
    sweeper's pass over the oldest due ones. Rows another transaction holds (an answer being applied) are
    skipped: that transaction settles them, and if it does not, the next pass does."""
    result = await conn.execute(text(
        "WITH due AS (SELECT compensation_id FROM compensations WHERE status = 'pending' AND expires_at <= now() "
        "AND (CAST(:ids AS text[]) IS NULL OR compensation_id = ANY(CAST(:ids AS text[]))) "
        "ORDER BY expires_at LIMIT :n FOR UPDATE SKIP LOCKED), "
        "c AS (UPDATE compensations c SET status = 'expired', settled_at = now() FROM due "
        "WHERE c.compensation_id = due.compensation_id AND c.status = 'pending' AND c.expires_at <= now() "
        "RETURNING c.compensation_id, c.ticket_id, c.region, c.strategy_id, c.reservation_id, c.expires_at), "
        "d AS (UPDATE decisions d SET outcome = 'reservation_expired', failed_rule = 'budget', "
        "detail = 'no budget answer before the reservation expired at ' "
        "|| to_char(c.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
        "|| '; nothing issued', updated_at = now() FROM c "
        "WHERE d.ticket_id = c.ticket_id AND d.compensation_id = c.compensation_id) "
        "SELECT * FROM c ORDER BY expires_at, compensation_id"),
        {"ids": None if compensation_ids is None else sorted(set(compensation_ids)),
         "n": limit if compensation_ids is None else max(1, len(set(compensation_ids)))})
    return [dict(r) for r in result.mappings()]


async def settled_decisions(conn: AsyncConnection, compensation_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The (final) decisions of these compensations as recorded now, with the compensation's kind and the
    correlation id of its ticket, for ``decision.recorded``."""
    rows = await conn.execute(text(
        "SELECT d.ticket_id, d.region, d.order_id, d.buyer_id, d.reason, d.outcome, d.failed_rule, d.detail, "
        "d.strategy_id, d.strategy_version, d.tier, d.currency, d.proposed_minor, d.issued_minor, "
        "d.compensation_id, d.inputs, d.ticket_occurred_at, c.kind, c.correlation_id "
        "FROM decisions d JOIN compensations c ON c.compensation_id = d.compensation_id "
        "WHERE d.compensation_id = ANY(CAST(:ids AS text[])) ORDER BY d.ticket_id"),
        {"ids": sorted(set(compensation_ids))})
    return [dict(r) for r in rows.mappings()]


async def claim_unanswered(conn: AsyncConnection, older_than_seconds: float, limit: int) -> list[dict[str, Any]]:
    """Pending reservations not answered in time, locked so two replicas never re-send the same one at once;
    their clock restarts and their attempt count goes up in the same statement. An expired reservation is
    never re-sent (the sweeper settles it)."""
    rows = await conn.execute(text(
        "WITH due AS (SELECT compensation_id FROM compensations WHERE status = 'pending' "
        "AND last_sent_at < now() - make_interval(secs => :age) AND expires_at > now() "
        "ORDER BY last_sent_at LIMIT :n FOR UPDATE SKIP LOCKED) "
        "UPDATE compensations c SET attempts = c.attempts + 1, last_sent_at = now() FROM due "
        "WHERE c.compensation_id = due.compensation_id AND c.status = 'pending' "
        "RETURNING c.compensation_id, c.reservation_id, c.region, c.request, c.attempts, c.correlation_id"),
        {"age": older_than_seconds, "n": limit})
    return [dict(r) for r in rows.mappings()]


async def saga_backlog(conn: AsyncConnection) -> tuple[int, float]:
    row = (await conn.execute(text(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(requested_at)), 0) FROM compensations "
        "WHERE status = 'pending'"))).one()
    return int(row[0]), float(row[1])


# ------------------------------------------------------------------ reads for the API


async def get_decision(conn: AsyncConnection, ticket_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        "SELECT d.*, c.status AS compensation_status, c.kind, c.voucher_code, c.expires_at AS valid_until, "
        "c.min_spend_minor, c.shares, c.liability_rule, c.reservation_id, c.denial_reason, c.budget_period, "
        "c.attempts AS reservation_attempts, v.state AS voucher_state, v.occurred_at AS voucher_closed_at, "
        "v.event_id AS voucher_event_id, v.expired_early_by_seconds FROM decisions d LEFT JOIN compensations c "
        "ON c.compensation_id = d.compensation_id LEFT JOIN voucher_lifecycle v "
        "ON v.compensation_id = d.compensation_id WHERE d.ticket_id = :t"), {"t": ticket_id})).mappings().first()
    if row is None:
        return None
    shadows = (await conn.execute(text(
        "SELECT strategy_id, strategy_version, outcome, failed_rule, detail, tier, proposed_minor, inputs, "
        "decided_at FROM shadow_decisions WHERE ticket_id = :t ORDER BY strategy_id"),
        {"t": ticket_id})).mappings().all()
    return {**dict(row), "shadow": [dict(s) for s in shadows]}


async def list_decisions(conn: AsyncConnection, *, regions: Sequence[str], outcome: str | None,
                         strategy_id: str | None, since: datetime | None, until: datetime | None,
                         after: tuple[datetime, str] | None, limit: int) -> list[dict[str, Any]]:
    where = ["region = ANY(CAST(:regions AS text[]))"]
    params: dict[str, Any] = {"regions": list(regions), "limit": limit}
    if outcome is not None:
        where.append("outcome = :outcome")
        params["outcome"] = outcome
    if strategy_id is not None:
        where.append("strategy_id = :strategy")
        params["strategy"] = strategy_id
    if since is not None:
        where.append("decided_at >= :since")
        params["since"] = since
    if until is not None:
        where.append("decided_at < :until")
        params["until"] = until
    if after is not None:
        where.append("(decided_at, ticket_id) < (:after_at, :after_id)")
        params["after_at"], params["after_id"] = after
    rows = await conn.execute(text(
        "SELECT ticket_id, region, order_id, buyer_id, reason, outcome, failed_rule, detail, strategy_id, "
        "strategy_version, config_version, scenario, tier, currency, proposed_minor, issued_minor, "
        "compensation_id, ticket_occurred_at, decided_at, updated_at FROM decisions WHERE "
        + " AND ".join(where) + " ORDER BY decided_at DESC, ticket_id DESC LIMIT :limit"), params)
    return [dict(r) for r in rows.mappings()]
