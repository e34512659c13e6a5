"""Read-only SQL for reports and the workbench, plus the workbench's own users and sessions.

Reads the audit core's tables (population, verdicts, verdict_attributes, calibration_pairs, disputes)
without writing them; writes only workbench_users, workbench_sessions and signin_throttle (through the
shared sign-in store).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.audit_sampler.domain.reports import (
    AuditedCompensation,
    CalibrationPair,
    GoldResult,
    Period,
    PopulationCount,
)
from services.audit_sampler.persistence.regions import region_filter
from shared.web.store import Session as Session  # re-exported: the workbench's callers name them here
from shared.web.store import SignInStore, Tables
from shared.web.store import User as User

# ------------------------------------------------------------------ report inputs


async def population_count(conn: AsyncConnection, region: str, period: Period) -> PopulationCount:
    row = (await conn.execute(text(
        "SELECT count(*) AS size, count(*) FILTER (WHERE sampled) AS sampled, "
        "coalesce(sum(amount_minor), 0) AS amount, count(*) FILTER (WHERE capacity_dropped) AS dropped "
        "FROM population WHERE region = :r AND local_day >= :start AND local_day < :end"),
        {"r": region, "start": period.start, "end": period.end})).one()
    return PopulationCount(int(row.size), int(row.sampled), int(row.amount), int(row.dropped))


async def audited_compensations(conn: AsyncConnection, region: str, start: date, end: date
                                ) -> list[tuple[date, AuditedCompensation]]:
    """Audited sample items of compensations issued on local days [start, end), with the local day.

    A verdict overturned on dispute was wrong: the compensation counts as correct."""
    rows = await conn.execute(text(
        "SELECT p.local_day, v.compensation_id, v.agent_id, v.team, v.reason_code, v.amount_minor, "
        "p.effective_probability, (v.passed OR v.status = 'overturned') AS passed, v.status, "
        "v.error_category, v.corrected_amount_minor, "
        "coalesce((SELECT array_agg(a.attribute ORDER BY a.attribute) FROM verdict_attributes a "
        "          WHERE a.verdict_id = v.id AND NOT a.ok), '{}') AS failed "
        "FROM verdicts v JOIN population p ON p.compensation_id = v.compensation_id "
        "WHERE v.item_kind = 'sample' AND p.region = :r AND p.local_day >= :start AND p.local_day < :end "
        "AND p.effective_probability > 0"),
        {"r": region, "start": start, "end": end})
    out = []
    for r in rows:
        overturned = r.status == "overturned"
        out.append((r.local_day, AuditedCompensation(
            compensation_id=r.compensation_id, agent_id=r.agent_id, team=r.team, reason_code=r.reason_code,
            amount_minor=int(r.amount_minor), probability=min(1.0, float(r.effective_probability)),
            passed=bool(r.passed), error_category=None if overturned else r.error_category,
            corrected_amount_minor=None if overturned else r.corrected_amount_minor,
            failed_attributes=frozenset() if overturned else frozenset(r.failed))))
    return out


async def unaudited_samples(conn: AsyncConnection, region: str, start: date, end: date
                            ) -> list[tuple[date, float]]:
    """Sampled compensations of local days [start, end) still waiting for their audit (queued or claimed),
    with the local day and effective inclusion probability: the estimate's non-response."""
    rows = await conn.execute(text(
        "SELECT p.local_day, p.effective_probability FROM population p "
        "JOIN audit_items i ON i.compensation_id = p.compensation_id AND i.item_kind = 'sample' "
        "AND i.status IN ('queued', 'claimed') "
        "WHERE p.region = :r AND p.local_day >= :start AND p.local_day < :end AND p.sampled "
        "AND p.effective_probability > 0"), {"r": region, "start": start, "end": end})
    return [(r.local_day, min(1.0, float(r.effective_probability))) for r in rows]


async def population_by_day(conn: AsyncConnection, region: str, start: date, end: date) -> dict[date, int]:
    """Manual compensations per local day of [start, end): the population sizes of several periods."""
    rows = await conn.execute(text(
        "SELECT local_day, count(*) AS n FROM population WHERE region = :r AND local_day >= :start "
        "AND local_day < :end GROUP BY local_day"), {"r": region, "start": start, "end": end})
    return {r.local_day: int(r.n) for r in rows}


async def calibration_pairs(conn: AsyncConnection, region: str, period: Period) -> list[CalibrationPair]:
    rows = await conn.execute(text(
        "SELECT c.primary_auditor, c.second_auditor, v1.attributes AS a1, v2.attributes AS a2, "
        "v1.passed AS p1, v2.passed AS p2 FROM calibration_pairs c "
        "JOIN verdicts v1 ON v1.id = c.primary_verdict_id JOIN verdicts v2 ON v2.id = c.second_verdict_id "
        "WHERE c.region = :r AND c.created_at >= :start AND c.created_at < :end"),
        {"r": region, "start": period.start_utc, "end": period.end_utc})
    return [CalibrationPair(r.primary_auditor, r.second_auditor, _flags(r.a1), _flags(r.a2), bool(r.p1),
                            bool(r.p2)) for r in rows]


def _flags(raw: Mapping[str, Any]) -> dict[str, bool]:
    return {str(k): bool(v) for k, v in raw.items() if isinstance(v, bool)}


async def gold_results(conn: AsyncConnection, region: str, timezone: str, start: datetime, end: datetime
                       ) -> list[GoldResult]:
    rows = await conn.execute(text(
        "SELECT auditor_id, (created_at AT TIME ZONE :tz)::date AS day, gold_correct FROM verdicts "
        "WHERE region = :r AND item_kind = 'gold' AND gold_correct IS NOT NULL "
        "AND created_at >= :start AND created_at < :end"),
        {"r": region, "tz": timezone, "start": start, "end": end})
    return [GoldResult(r.auditor_id, r.day, bool(r.gold_correct)) for r in rows]


# ------------------------------------------------------------------ the auditor's own figures


async def auditor_stats(conn: AsyncConnection, auditor: str, regions: Sequence[str] | None,
                        day_start: datetime, week_start: datetime) -> dict[str, Any]:
    """An auditor's own work: verdicts today and this week, fail share, gold accuracy, disputes, agreement."""
    own = region_filter("region", regions)
    calibrated = region_filter("c.region", regions)
    row = (await conn.execute(text(
        "SELECT count(*) FILTER (WHERE created_at >= :day) AS today, "
        "count(*) FILTER (WHERE created_at >= :week) AS this_week, count(*) AS total, "
        "count(*) FILTER (WHERE NOT passed) AS failed, "
        "count(*) FILTER (WHERE item_kind = 'gold') AS gold_items, "
        "count(*) FILTER (WHERE item_kind = 'gold' AND gold_correct) AS gold_correct, "
        "count(*) FILTER (WHERE status = 'upheld') AS disputes_upheld, "
        "count(*) FILTER (WHERE status = 'overturned') AS disputes_overturned "
        f"FROM verdicts WHERE auditor_id = :a AND {own.sql}"),
        own.bind(a=auditor, day=day_start, week=week_start))).one()
    agreement = (await conn.execute(text(
        "SELECT count(*) AS scored, count(*) FILTER (WHERE a1.ok = a2.ok) AS agreed "
        "FROM calibration_pairs c JOIN verdict_attributes a1 ON a1.verdict_id = c.primary_verdict_id "
        "JOIN verdict_attributes a2 ON a2.verdict_id = c.second_verdict_id AND a2.attribute = a1.attribute "
        f"WHERE (c.primary_auditor = :a OR c.second_auditor = :a) AND {calibrated.sql}"),
        calibrated.bind(a=auditor))).one()
    recent = await conn.execute(text(
        "SELECT id, item_id, region, compensation_id, agent_id, passed, error_category, status, created_at "
        f"FROM verdicts WHERE auditor_id = :a AND item_kind <> 'gold' AND {own.sql} "
        "ORDER BY created_at DESC, id DESC LIMIT 15"), own.bind(a=auditor))
    return {**dict(row._mapping), "attributes_scored_twice": int(agreement.scored),
            "attributes_agreed": int(agreement.agreed), "recent": [dict(r._mapping) for r in recent]}


async def open_items(conn: AsyncConnection, regions: Sequence[str] | None, limit: int = 100
                     ) -> list[dict[str, Any]]:
    """Queued and claimed items in the regions (None: all), the ones nearest their SLA first."""
    in_regions = region_filter("region", regions)
    rows = await conn.execute(text(
        "SELECT id, region, queue, item_kind, compensation_id, agent_id, status, claimed_by, lease_expires_at, "
        f"enqueued_at, sla_due_at FROM audit_items WHERE status IN ('queued', 'claimed') AND {in_regions.sql} "
        "ORDER BY sla_due_at, id LIMIT :n"), in_regions.bind(n=limit))
    return [dict(r._mapping) for r in rows]


async def failed_verdicts(conn: AsyncConnection, regions: Sequence[str] | None, limit: int = 100
                          ) -> list[dict[str, Any]]:
    """The latest failed verdicts on sampled compensations (the ones a lead may dispute), newest first."""
    in_regions = region_filter("region", regions)
    rows = await conn.execute(text(
        "SELECT id, item_id, region, compensation_id, agent_id, team, auditor_id, error_category, status, "
        f"created_at FROM verdicts WHERE item_kind = 'sample' AND NOT passed AND {in_regions.sql} "
        "ORDER BY created_at DESC, id DESC LIMIT :n"), in_regions.bind(n=limit))
    return [dict(r._mapping) for r in rows]


async def gold_items(conn: AsyncConnection, regions: Sequence[str] | None, limit: int = 20
                     ) -> list[dict[str, Any]]:
    """The latest gold items in the regions (None: all), with how they were scored once audited."""
    in_regions = region_filter("i.region", regions)
    rows = await conn.execute(text(
        "SELECT i.id, i.region, i.queue, i.compensation_id, i.agent_id, i.status, i.created_by, i.enqueued_at, "
        "v.auditor_id, v.gold_correct FROM audit_items i LEFT JOIN verdicts v ON v.item_id = i.id "
        f"WHERE i.item_kind = 'gold' AND {in_regions.sql} ORDER BY i.id DESC LIMIT :n"), in_regions.bind(n=limit))
    return [dict(r._mapping) for r in rows]


# ------------------------------------------------------------------ users and sessions

# The sign-in tables and their SQL are shared with the insights dashboard (shared.web.store); the workbench
# keeps its own tables in its own schema.
WORKBENCH_TABLES = Tables(users="workbench_users", sessions="workbench_sessions", throttle="signin_throttle")
STORE = SignInStore(WORKBENCH_TABLES)

get_user = STORE.get_user
list_users = STORE.list_users
upsert_user = STORE.upsert_user
disable_user = STORE.disable_user
signed_in = STORE.signed_in
lock_throttle = STORE.lock_throttle
save_throttle = STORE.save_throttle
clear_account_throttle = STORE.clear_account_throttle
locked_accounts = STORE.locked_accounts
purge_throttle = STORE.purge_throttle
create_session = STORE.create_session
live_session = STORE.live_session
end_session = STORE.end_session
purge_sessions = STORE.purge_sessions
