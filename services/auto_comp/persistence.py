"""SQL against the auto_comp schema. Batches travel as one JSON document per statement
(``jsonb_to_recordset``) so a whole batch costs a handful of round trips."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.auto_comp.domain.allowance import Allowance
from services.auto_comp.domain.engine import Granted
from shared.contracts.events import AllowanceLimit
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


async def shadow_history(conn: AsyncConnection, buyers: Iterable[tuple[str, str]], since: datetime,
                         until: datetime) -> dict[tuple[str, str, str], list[Granted]]:
    """Each shadow strategy's own earlier would-issue results for these buyers, keyed (region, buyer,
    strategy): a shadow's abuse guard counts what it would have granted, as the backtest does."""
    keys = sorted(set(buyers))
    out: dict[tuple[str, str, str], list[Granted]] = {}
    if not keys:
        return out
    rows = await conn.execute(text(
        "SELECT s.region, s.buyer_id, s.strategy_id, s.ticket_occurred_at, s.proposed_minor, s.currency "
        "FROM unnest(CAST(:r AS text[]), CAST(:b AS text[])) AS x(r, b) CROSS JOIN LATERAL ("
        "SELECT region, buyer_id, strategy_id, ticket_occurred_at, proposed_minor, currency "
        "FROM shadow_decisions WHERE region = x.r AND buyer_id = x.b AND outcome = 'would_issue' "
        "AND ticket_occurred_at BETWEEN :since AND :until OFFSET 0) AS s"),
        {"r": [k[0] for k in keys], "b": [k[1] for k in keys], "since": since, "until": until})
    for region, buyer, strategy_id, at, minor, currency in rows:
        out.setdefault((region, buyer, strategy_id), []).append(Granted(at, Money(int(minor), currency)))
    return out


async def shadow_taken_orders(conn: AsyncConnection, order_ids: Sequence[str]) -> set[tuple[str, str]]:
    """(order, shadow strategy) pairs the shadow would already have compensated: its one-per-order rule."""
    if not order_ids:
        return set()
    rows = await conn.execute(text(
        "SELECT order_id, strategy_id FROM shadow_decisions WHERE order_id = ANY(CAST(:ids AS text[])) "
        "AND outcome = 'would_issue'"), {"ids": list(set(order_ids))})
    return {(r[0], r[1]) for r in rows}


_DECISION_COLS = (
    "ticket_id text, region text, order_id text, buyer_id text, reason text, outcome text, failed_rule text, "
    "detail text, strategy_id text, strategy_version int, config_version text, scenario text, tier text, "
    "currency text, proposed_minor bigint, issued_minor bigint, compensation_id text, inputs jsonb, event_id text, "
    "ticket_occurred_at timestamptz")


def _names(cols: str) -> str:
    return ", ".join(c.strip().split(" ")[0] for c in cols.split(","))


async def insert_decisions(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(
            f"INSERT INTO decisions ({_names(_DECISION_COLS)}) SELECT {_names(_DECISION_COLS)} "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({_DECISION_COLS})"), {"rows": _json(rows)})


_SHADOW_COLS = ("ticket_id text, strategy_id text, strategy_version int, region text, outcome text, "
                "failed_rule text, detail text, tier text, currency text, proposed_minor bigint, inputs jsonb, "
                "buyer_id text, order_id text, scenario text, ticket_occurred_at timestamptz")


async def insert_shadow_decisions(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(text(
            f"INSERT INTO shadow_decisions ({_names(_SHADOW_COLS)}) SELECT {_names(_SHADOW_COLS)} "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({_SHADOW_COLS}) ON CONFLICT DO NOTHING"),
            {"rows": _json(rows)})


_COMP_COLS = (
    "compensation_id text, ticket_id text, strategy_id text, strategy_version int, order_id text, scenario text, "
    "buyer_id text, region text, reason text, kind text, currency text, status text, requested_minor bigint, "
    "fallback_minor bigint[], liability_rule text, shares jsonb, min_spend_minor bigint, expires_at timestamptz, "
    "correlation_id text, ticket_occurred_at timestamptz, allowance_id text, partition int, pacing_percent smallint, "
    "validity_days int, issued_minor bigint, voucher_code text, budget_period text, settled_at timestamptz")


async def insert_compensations(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Issued ones (spent from an allowance in the decision's transaction) and pending ones (waiting for it)."""
    if rows:
        await conn.execute(text(
            f"INSERT INTO compensations ({_names(_COMP_COLS)}) SELECT {_names(_COMP_COLS)} "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({_COMP_COLS})"), {"rows": _json(rows)})


# ------------------------------------------------------------------ allowances (ADR 0012)

_ALLOWANCE_COLS = (
    "allowance_id, region, period, partition, pacing_percent, currency, owner, close_at, status, granted_minor, "
    "spent_minor, spent_count, expires_at, request_seq, answered_seq, requested_at, request_attempts, "
    "request_at_least_minor, request_wanted_minor, limited_by, retry_after, detail, last_grant_minor, "
    "last_granted_at, spent_at_last_grant_minor")

Key = tuple[str, str, int, int]  # region, period, partition, pacing percent


def _allowance(r: Any) -> Allowance:
    return Allowance(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8] == "open", r[9], r[10], r[11], r[12], r[13],
                     r[14], r[15], r[16], r[17], r[18], AllowanceLimit(r[19]) if r[19] else None, r[20], r[21],
                     r[22], r[23], r[24], waiting=bool(r[25]))


async def lock_allowances(conn: AsyncConnection, *, keys: Iterable[Key] = (), ids: Iterable[str] = ()
                          ) -> tuple[datetime, dict[str, Allowance]]:
    """The database's clock, and the open allowances of ``keys`` plus those named by ``ids`` (open or not),
    locked in id order (the one lock order of every writer: after the buyers', before compensations').

    ``waiting``: tickets of the allowance's key (region, partition, pacing) are pending."""
    key_list, id_list = sorted(set(keys)), sorted(set(ids))
    result = await conn.execute(text(
        f"SELECT {_ALLOWANCE_COLS}, EXISTS (SELECT 1 FROM compensations c WHERE c.status = 'pending' "
        "AND c.region = a.region AND c.partition = a.partition AND c.pacing_percent = a.pacing_percent), now() "
        "FROM allowances a WHERE a.allowance_id = ANY(CAST(:ids AS text[])) OR (a.status = 'open' AND "
        "(a.region, a.period, a.partition, a.pacing_percent) IN (SELECT * FROM unnest(CAST(:r AS text[]), "
        "CAST(:p AS text[]), CAST(:n AS int[]), CAST(:c AS smallint[])))) ORDER BY a.allowance_id FOR UPDATE OF a"),
        {"ids": id_list, "r": [k[0] for k in key_list], "p": [k[1] for k in key_list],
         "n": [k[2] for k in key_list], "c": [k[3] for k in key_list]})
    rows = result.all()
    now = rows[0][-1] if rows else (await conn.execute(text("SELECT now()"))).scalar_one()
    return now, {r[0]: _allowance(r) for r in rows}


async def open_allowances(conn: AsyncConnection, new: Sequence[Allowance]) -> list[str]:
    """Insert new open allowances; returns the ids inserted (none for a key another transaction opened
    meanwhile: the caller locks again and uses that one)."""
    if not new:
        return []
    result = await conn.execute(text(
        "INSERT INTO allowances (allowance_id, region, period, partition, pacing_percent, currency, owner, status, "
        "close_at) SELECT i, r, p, n, c, cur, o, 'open', at FROM unnest(CAST(:i AS text[]), CAST(:r AS text[]), "
        "CAST(:p AS text[]), CAST(:n AS int[]), CAST(:c AS smallint[]), CAST(:cur AS text[]), CAST(:o AS text[]), "
        "CAST(:at AS timestamptz[])) AS x(i, r, p, n, c, cur, o, at) ORDER BY i "
        "ON CONFLICT (region, period, partition, pacing_percent) WHERE status = 'open' DO NOTHING "
        "RETURNING allowance_id"),
        {"i": [a.allowance_id for a in new], "r": [a.region for a in new], "p": [a.period for a in new],
         "n": [a.partition for a in new], "c": [a.pacing_percent for a in new], "cur": [a.currency for a in new],
         "o": [a.owner for a in new], "at": [a.close_at for a in new]})
    return list(result.scalars())


async def save_allowances(conn: AsyncConnection, allowances: Iterable[Allowance]) -> None:
    """What a batch did to its (locked) allowances: spends added, requests sent, answers applied.

    The spend is the conditional update of ADR 0012: it only applies to an open allowance whose grant
    covers it and whose ``close_at`` is still ahead; the caller decided under the row lock, so a refusal
    means a bug, and the whole transaction (decisions, vouchers, events) is rolled back."""
    rows = [a for a in allowances if a.spent_now or a.request_now or a.answered_now]
    if not rows:
        return
    params = {
        "i": [a.allowance_id for a in rows], "d": [a.spent_now for a in rows], "n": [a.count_now for a in rows],
        "g": [a.granted for a in rows], "ca": [a.close_at for a in rows], "ex": [a.expires_at for a in rows],
        "rs": [a.request_seq for a in rows], "as": [a.answered_seq for a in rows],
        "ra": [a.requested_at for a in rows], "rn": [a.request_attempts for a in rows],
        "al": [a.request_at_least for a in rows], "w": [a.request_wanted for a in rows],
        "lb": [a.limited_by.value if a.limited_by else None for a in rows], "rt": [a.retry_after for a in rows],
        "dt": [a.detail for a in rows], "lg": [a.last_grant for a in rows], "lga": [a.last_granted_at for a in rows],
        "sl": [a.spent_at_last_grant for a in rows]}
    result = await conn.execute(text(
        "UPDATE allowances a SET spent_minor = a.spent_minor + u.d, spent_count = a.spent_count + u.n, "
        "granted_minor = u.g, close_at = u.ca, expires_at = u.ex, request_seq = u.rs, answered_seq = u.ans, "
        "requested_at = u.ra, request_attempts = u.rn, request_at_least_minor = u.al, request_wanted_minor = u.w, "
        "limited_by = u.lb, retry_after = u.rt, detail = u.dt, last_grant_minor = u.lg, last_granted_at = u.lga, "
        "spent_at_last_grant_minor = u.sl FROM unnest(CAST(:i AS text[]), CAST(:d AS bigint[]), CAST(:n AS int[]), "
        "CAST(:g AS bigint[]), CAST(:ca AS timestamptz[]), CAST(:ex AS timestamptz[]), CAST(:rs AS int[]), "
        "CAST(:as AS int[]), CAST(:ra AS timestamptz[]), CAST(:rn AS int[]), CAST(:al AS bigint[]), "
        "CAST(:w AS bigint[]), CAST(:lb AS text[]), CAST(:rt AS timestamptz[]), CAST(:dt AS text[]), "
        "CAST(:lg AS bigint[]), CAST(:lga AS timestamptz[]), CAST(:sl AS bigint[])) "
        "AS u(i, d, n, g, ca, ex, rs, ans, ra, rn, al, w, lb, rt, dt, lg, lga, sl) "
        "WHERE a.allowance_id = u.i AND a.status = 'open' AND u.g >= a.granted_minor "
        "AND a.spent_minor + u.d <= u.g AND (u.d = 0 OR u.ca > now()) RETURNING a.allowance_id"), params)
    done = set(result.scalars())
    refused = [a.allowance_id for a in rows if a.allowance_id not in done]
    if refused:
        raise RuntimeError(f"allowance(s) {', '.join(refused)} refused this batch's spend or update (closed, "
                           f"expired or not covering it): nothing of the batch is written")


async def close_allowances(conn: AsyncConnection, ids: Sequence[str], reasons: Sequence[str]
                           ) -> list[dict[str, Any]]:
    """Close open allowances: no spend is possible after this (the spend's condition is ``status = 'open'``).
    Returns what each return event reports: exactly what was spent from it."""
    if not ids:
        return []
    result = await conn.execute(text(
        "UPDATE allowances a SET status = 'closed', closed_at = now(), close_reason = x.why FROM unnest("
        "CAST(:i AS text[]), CAST(:w AS text[])) AS x(i, why) WHERE a.allowance_id = x.i AND a.status = 'open' "
        "RETURNING a.allowance_id, a.region, a.period, a.currency, a.spent_minor, a.spent_count, a.closed_at, "
        "a.close_reason, a.request_seq"), {"i": list(ids), "w": list(reasons)})
    return [dict(r) for r in result.mappings()]


async def due_to_close(conn: AsyncConnection, limit: int = 500) -> list[str]:
    """Open allowances past ``close_at`` (expiry less the margin, or the period's end), whoever owned them:
    skips rows a batch holds (that batch closes them itself if it needs the key)."""
    rows = await conn.execute(text(
        "SELECT allowance_id FROM allowances WHERE status = 'open' AND close_at <= now() ORDER BY allowance_id "
        "LIMIT :n FOR UPDATE SKIP LOCKED"), {"n": limit})
    return list(rows.scalars())


async def open_of_partitions(conn: AsyncConnection, partitions: Sequence[int]) -> list[str]:
    if not partitions:
        return []
    rows = await conn.execute(text(
        "SELECT allowance_id FROM allowances WHERE status = 'open' AND partition = ANY(CAST(:p AS int[])) "
        "ORDER BY allowance_id FOR UPDATE"), {"p": list(partitions)})
    return list(rows.scalars())


async def unanswered(conn: AsyncConnection, older_than_seconds: float, limit: int = 500) -> list[str]:
    """Open allowances whose request has waited longer than the timeout (skipping rows a batch holds)."""
    rows = await conn.execute(text(
        "SELECT allowance_id FROM allowances WHERE status = 'open' AND request_seq > answered_seq "
        "AND requested_at < now() - make_interval(secs => :s) ORDER BY allowance_id LIMIT :n "
        "FOR UPDATE SKIP LOCKED"), {"s": older_than_seconds, "n": limit})
    return list(rows.scalars())


async def waiting_queues(conn: AsyncConnection, limit: int = 200) -> list[tuple[str, int, int]]:
    """(region, partition, pacing percent) of every queue of waiting tickets."""
    rows = await conn.execute(text(
        "SELECT DISTINCT region, partition, pacing_percent FROM compensations WHERE status = 'pending' "
        "ORDER BY 1, 2, 3 LIMIT :n"), {"n": limit})
    return [(r[0], r[1], r[2]) for r in rows]


_QUEUE_COLS = (
    "compensation_id, ticket_id, strategy_id, strategy_version, order_id, scenario, buyer_id, region, reason, kind, "
    "currency, requested_minor, fallback_minor, shares, min_spend_minor, expires_at, validity_days, correlation_id, "
    "ticket_occurred_at, partition, pacing_percent")


async def lock_waiting(conn: AsyncConnection, queues: Iterable[tuple[str, int, int]], *, limit: int = 2_000
                       ) -> list[dict[str, Any]]:
    """Waiting compensations of these queues, oldest ticket first, locked (skipping any another transaction
    settles now)."""
    q = sorted(set(queues))
    if not q:
        return []
    result = await conn.execute(text(
        f"SELECT {_QUEUE_COLS} FROM compensations c WHERE c.status = 'pending' AND (c.region, c.partition, "
        "c.pacing_percent) IN (SELECT * FROM unnest(CAST(:r AS text[]), CAST(:n AS int[]), CAST(:c AS smallint[]))) "
        "ORDER BY c.ticket_occurred_at, c.ticket_id LIMIT :lim FOR UPDATE SKIP LOCKED"),
        {"r": [x[0] for x in q], "n": [x[1] for x in q], "c": [x[2] for x in q], "lim": limit})
    keys = tuple(result.keys())
    return [dict(zip(keys, r, strict=True)) for r in result]


async def waiting_backlog(conn: AsyncConnection) -> tuple[int, float]:
    row = (await conn.execute(text(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(requested_at)), 0) FROM compensations "
        "WHERE status = 'pending'"))).one()
    return int(row[0]), float(row[1])


async def mark_issued(conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
    """Waiting compensations issued now. rows: compensation_id, ticket_id, issued_minor, voucher_code,
    budget_period, allowance_id, valid_until, detail. Returns those still pending, which this call issued."""
    if not rows:
        return set()
    cols = ("compensation_id text, ticket_id text, issued_minor bigint, voucher_code text, budget_period text, "
            "allowance_id text, valid_until timestamptz, detail text")
    # Both tables in one statement: one round trip and one parse of the batch.
    result = await conn.execute(text(
        f"WITH x AS MATERIALIZED (SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({cols})), "
        f"c AS (UPDATE compensations c SET status = 'issued', issued_minor = x.issued_minor, "
        f"voucher_code = x.voucher_code, budget_period = x.budget_period, allowance_id = x.allowance_id, "
        f"expires_at = x.valid_until, settled_at = now() "
        f"FROM x WHERE c.compensation_id = x.compensation_id AND c.status IS NOT DISTINCT FROM 'pending' "
        f"RETURNING c.compensation_id), "
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


# ------------------------------------------------------------------ reads for the API


async def get_decision(conn: AsyncConnection, ticket_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        "SELECT d.*, c.status AS compensation_status, c.kind, c.voucher_code, c.expires_at AS valid_until, "
        "c.min_spend_minor, c.shares, c.liability_rule, c.reservation_id, c.allowance_id, c.denial_reason, "
        "c.budget_period, v.state AS voucher_state, v.occurred_at AS voucher_closed_at, "
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
