"""SQL of the approval stage (issue 14) on audit_sampler's own schema: requests, their trail, the totals the
authority limits are judged against, and issued-vs-approved checks. Bound parameters and array binds only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.audit_sampler.persistence import _json
from services.audit_sampler.persistence.regions import region_filter

REQUEST_COLUMNS = (
    "request_id, event_id, region, agent_id, team, agent_tier, buyer_id, order_id, ticket_id, reason_code, kind, "
    "currency, amount_minor, request, requested_at, local_day, status, automatic, approved_amount_minor, rule, "
    "limits_version, exceeded, judgement, due_at, escalated_at, decided_by, decision_reason, decided_at, "
    "received_at")
WAITING = ("awaiting_approval", "escalated")


def agent_day_key(region: str, agent_id: str, day: date) -> str:
    return f"agent|{region}|{agent_id}|{day.isoformat()}"


def buyer_key(region: str, buyer_id: str) -> str:
    return f"buyer|{region}|{buyer_id}"


async def lock_keys(conn: AsyncConnection, keys: Iterable[str]) -> None:
    """Transaction-level advisory locks of limit keys, taken in sorted order (concurrent consumers never
    deadlock), held to commit: the totals read after them include every approval committed before."""
    ordered = sorted(set(keys))
    if ordered:
        await conn.execute(text(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 14))) "
            "FROM (SELECT k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k) AS s"), {"keys": ordered})


async def known_requests(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    rows = await conn.execute(text("SELECT request_id FROM compensation_requests "
                                   "WHERE request_id = ANY(CAST(:ids AS text[]))"), {"ids": list(ids)})
    return {r[0] for r in rows}


async def agent_day_totals(conn: AsyncConnection, keys: Sequence[tuple[str, str, date]]
                           ) -> dict[tuple[str, str, date], int]:
    """Approved amounts per (region, agent, local day)."""
    if not keys:
        return {}
    rows = await conn.execute(text(
        "SELECT k.region, k.agent_id, k.day, COALESCE(sum(r.approved_amount_minor), 0) "
        "FROM unnest(CAST(:regions AS text[]), CAST(:agents AS text[]), CAST(:days AS date[])) "
        "AS k(region, agent_id, day) "
        "LEFT JOIN compensation_requests r ON r.region = k.region AND r.agent_id = k.agent_id "
        "AND r.local_day = k.day AND r.status = 'approved' GROUP BY k.region, k.agent_id, k.day"),
        {"regions": [k[0] for k in keys], "agents": [k[1] for k in keys], "days": [k[2] for k in keys]})
    return {(r[0], r[1], r[2]): int(r[3]) for r in rows}


async def buyer_window_totals(conn: AsyncConnection, keys: Sequence[tuple[str, str, date, date]]
                              ) -> dict[tuple[str, str, date, date], int]:
    """Approved amounts per (region, buyer, first local day, last local day)."""
    if not keys:
        return {}
    rows = await conn.execute(text(
        "SELECT k.region, k.buyer_id, k.first_day, k.last_day, COALESCE(sum(r.approved_amount_minor), 0) "
        "FROM unnest(CAST(:regions AS text[]), CAST(:buyers AS text[]), CAST(:firsts AS date[]), "
        "CAST(:lasts AS date[])) AS k(region, buyer_id, first_day, last_day) "
        "LEFT JOIN compensation_requests r ON r.region = k.region AND r.buyer_id = k.buyer_id "
        "AND r.local_day BETWEEN k.first_day AND k.last_day AND r.status = 'approved' "
        "GROUP BY k.region, k.buyer_id, k.first_day, k.last_day"),
        {"regions": [k[0] for k in keys], "buyers": [k[1] for k in keys], "firsts": [k[2] for k in keys],
         "lasts": [k[3] for k in keys]})
    return {(r[0], r[1], r[2], r[3]): int(r[4]) for r in rows}


_INSERT_TYPES = {
    "request_id": "text", "event_id": "text", "region": "text", "agent_id": "text", "team": "text",
    "agent_tier": "text", "buyer_id": "text", "order_id": "text", "ticket_id": "text", "reason_code": "text",
    "kind": "text", "currency": "text", "amount_minor": "bigint", "request": "jsonb", "requested_at": "timestamptz",
    "local_day": "date", "status": "text", "automatic": "boolean", "approved_amount_minor": "bigint", "rule": "text",
    "limits_version": "text", "exceeded": "text", "judgement": "text", "due_at": "timestamptz",
    "decided_by": "text", "decision_reason": "text", "decided_at": "timestamptz"}


async def insert_requests(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert requests; returns the ids inserted now (a concurrent consumer may have inserted some)."""
    if not rows:
        return set()
    cols = _INSERT_TYPES
    selects = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols.items())
    names = ", ".join(cols)
    values = ", ".join("string_to_array(exceeded, ',')" if c == "exceeded" else c for c in cols)
    result = await conn.execute(text(
        f"INSERT INTO compensation_requests ({names}) SELECT {values} FROM unnest({selects}) AS u({names}) "
        "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"),
        {c: [_json(r[c]) if c == "request" else (",".join(r[c]) if c == "exceeded" else r[c]) for r in rows]
         for c in cols})
    return {r[0] for r in result}


async def add_trail(conn: AsyncConnection, steps: Sequence[dict[str, Any]]) -> list[int]:
    """Append trail steps (request_id, action, actor, reason, amount_minor, at); their ids, in order."""
    if not steps:
        return []
    cols = {"request_id": "text", "action": "text", "actor": "text", "reason": "text", "amount_minor": "bigint",
            "at": "timestamptz"}
    selects = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols.items())
    names = ", ".join(cols)
    result = await conn.execute(text(
        f"INSERT INTO request_trail ({names}) SELECT {names} FROM unnest({selects}) WITH ORDINALITY "
        f"AS u({names}, n) ORDER BY n RETURNING id"), {c: [s[c] for s in steps] for c in cols})
    return sorted(int(r[0]) for r in result)


async def request(conn: AsyncConnection, request_id: str, *, for_update: bool = False) -> dict[str, Any] | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (await conn.execute(text(f"SELECT {REQUEST_COLUMNS} FROM compensation_requests "
                                   f"WHERE request_id = :id{lock}"), {"id": request_id})).first()
    return None if row is None else dict(row._mapping)


async def requests_by_id(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = await conn.execute(text(f"SELECT {REQUEST_COLUMNS} FROM compensation_requests "
                                   "WHERE request_id = ANY(CAST(:ids AS text[]))"), {"ids": list(ids)})
    return {r._mapping["request_id"]: dict(r._mapping) for r in rows}


async def trail(conn: AsyncConnection, request_id: str) -> list[dict[str, Any]]:
    rows = await conn.execute(text("SELECT id, action, actor, reason, amount_minor, at FROM request_trail "
                                   "WHERE request_id = :id ORDER BY id"), {"id": request_id})
    return [dict(r._mapping) for r in rows]


async def set_decision(conn: AsyncConnection, request_id: str, *, status: str, approved_amount_minor: int | None,
                       decided_by: str, reason: str, at: datetime) -> None:
    await conn.execute(text(
        "UPDATE compensation_requests SET status = :s, approved_amount_minor = :a, decided_by = :by, "
        "decision_reason = :reason, decided_at = :at, due_at = NULL WHERE request_id = :id"),
        {"s": status, "a": approved_amount_minor, "by": decided_by, "reason": reason, "at": at, "id": request_id})


async def set_escalated(conn: AsyncConnection, request_id: str, *, at: datetime, due_at: datetime) -> None:
    await conn.execute(text("UPDATE compensation_requests SET status = 'escalated', escalated_at = :at, "
                            "due_at = :due WHERE request_id = :id"), {"at": at, "due": due_at, "id": request_id})


async def overdue_awaiting(conn: AsyncConnection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Requests whose approval SLA passed, locked (others skip them: one escalator per request)."""
    rows = await conn.execute(text(
        f"SELECT {REQUEST_COLUMNS} FROM compensation_requests WHERE status = 'awaiting_approval' "
        "AND due_at <= :now ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED"), {"now": now, "limit": limit})
    return [dict(r._mapping) for r in rows]


async def waiting(conn: AsyncConnection, regions: Sequence[str] | None) -> list[dict[str, Any]]:
    in_regions = region_filter("region", regions)
    rows = await conn.execute(text(
        f"SELECT {REQUEST_COLUMNS} FROM compensation_requests WHERE status IN ('awaiting_approval', 'escalated') "
        f"AND {in_regions.sql} ORDER BY due_at, requested_at LIMIT 500"), in_regions.params)
    return [dict(r._mapping) for r in rows]


async def recent_decided(conn: AsyncConnection, regions: Sequence[str] | None, limit: int = 50
                         ) -> list[dict[str, Any]]:
    in_regions = region_filter("region", regions)
    rows = await conn.execute(text(
        f"SELECT {REQUEST_COLUMNS} FROM compensation_requests WHERE status IN ('approved', 'rejected') "
        f"AND NOT automatic AND {in_regions.sql} ORDER BY decided_at DESC LIMIT :limit"),
        in_regions.bind(limit=limit))
    return [dict(r._mapping) for r in rows]


async def waiting_gauges(conn: AsyncConnection, now: datetime) -> list[dict[str, Any]]:
    rows = await conn.execute(text(
        "SELECT region, count(*) FILTER (WHERE status = 'awaiting_approval') AS awaiting, "
        "count(*) FILTER (WHERE status = 'escalated') AS escalated, "
        "count(*) FILTER (WHERE status = 'escalated' AND due_at <= :now) AS overdue "
        "FROM compensation_requests WHERE status IN ('awaiting_approval', 'escalated') GROUP BY region"),
        {"now": now})
    return [dict(r._mapping) for r in rows]


# ------------------------------------------------------------------ issued vs approved


async def record_checks(conn: AsyncConnection, checks: Sequence[dict[str, Any]]) -> None:
    """Insert or settle issue checks (compensation_id, request_id, region, status, mismatches, finding,
    compensation)."""
    if not checks:
        return
    cols = {"compensation_id": "text", "request_id": "text", "region": "text", "status": "text",
            "mismatches": "text", "finding": "text", "compensation": "jsonb"}
    selects = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols.items())
    names = ", ".join(cols)
    values = ", ".join("string_to_array(mismatches, ',')" if c == "mismatches" else c for c in cols)
    await conn.execute(text(
        f"INSERT INTO issue_checks ({names}) SELECT {values} FROM unnest({selects}) AS u({names}) "
        "ON CONFLICT (compensation_id) DO UPDATE SET status = EXCLUDED.status, mismatches = EXCLUDED.mismatches, "
        "finding = EXCLUDED.finding, checked_at = now()"),
        {c: [_json(k[c]) if c == "compensation" else (",".join(k[c]) if c == "mismatches" else k[c])
             for k in checks] for c in cols})


async def awaiting_checks(conn: AsyncConnection, request_ids: Sequence[str]) -> list[dict[str, Any]]:
    if not request_ids:
        return []
    rows = await conn.execute(text(
        "SELECT compensation_id, request_id, region, compensation FROM issue_checks "
        "WHERE status = 'awaiting_request' AND request_id = ANY(CAST(:ids AS text[])) "
        "ORDER BY compensation_id FOR UPDATE"), {"ids": list(request_ids)})
    return [dict(r._mapping) for r in rows]


async def issue_check(conn: AsyncConnection, compensation_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(text("SELECT compensation_id, request_id, status, mismatches, finding, checked_at "
                                   "FROM issue_checks WHERE compensation_id = :id"), {"id": compensation_id})).first()
    return None if row is None else dict(row._mapping)


async def flag_existing_items(conn: AsyncConnection, findings: dict[str, str]) -> dict[str, int]:
    """Write the finding on sample items that already exist; compensation id -> item id of those found."""
    if not findings:
        return {}
    rows = await conn.execute(text(
        "UPDATE audit_items a SET finding = f.finding, mandatory = true FROM unnest(CAST(:ids AS text[]), "
        "CAST(:findings AS text[])) AS f(compensation_id, finding) WHERE a.compensation_id = f.compensation_id "
        "AND a.item_kind = 'sample' AND a.status <> 'dropped' RETURNING a.compensation_id, a.id"),
        {"ids": list(findings), "findings": list(findings.values())})
    return {r[0]: int(r[1]) for r in rows}


async def population_rows(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    rows = await conn.execute(text(
        "SELECT compensation_id, local_day, risk_score FROM population "
        "WHERE compensation_id = ANY(CAST(:ids AS text[]))"), {"ids": list(ids)})
    return {r[0]: dict(r._mapping) for r in rows}


async def make_mandatory(conn: AsyncConnection, ids: Sequence[str]) -> None:
    """A compensation flagged after it was recorded is audited with certainty: its population row says so
    (inclusion probability 1), so the accuracy estimate weighs it as the census it now is."""
    if ids:
        await conn.execute(text(
            "UPDATE population SET sampled = true, mandatory = true, capacity_dropped = false, "
            "inclusion_probability = 1, effective_probability = 1, "
            "reasons = array_append(reasons, 'issue_check') "
            "WHERE compensation_id = ANY(CAST(:ids AS text[]))"), {"ids": list(ids)})


async def action_gauges(conn: AsyncConnection, now: datetime) -> list[dict[str, Any]]:
    rows = await conn.execute(text(
        "SELECT region, count(*) AS open, count(*) FILTER (WHERE due_on < CAST(:now AS timestamptz)::date) "
        "AS overdue FROM corrective_actions WHERE status IN ('open', 'in_progress') GROUP BY region"), {"now": now})
    return [dict(r._mapping) for r in rows]
