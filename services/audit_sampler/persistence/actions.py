"""SQL of corrective actions (table ``corrective_actions``) and of the audited error rate an action is
measured by (verdicts of sampled items of the action's target, by the compensation's issue time)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.audit_sampler.persistence.regions import region_filter

COLUMNS = ("id, region, source, source_ref, target_type, target_id, kind, owner, due_on, status, note, window_days, "
           "opened_by, opened_at, updated_at, done_at, effect_published_at")
# The audited compensations of a target, by its type (items carry the compensation as issued).
TARGET = {
    "agent": "i.agent_id",
    "team": "i.team",
    "seller": "i.compensation->>'seller_id'",
    "carrier": "coalesce(i.compensation->>'carrier_id', i.compensation->'case'->>'carrier_id')",
    "guideline": "i.compensation->>'reason_code'",
}


async def action(conn: AsyncConnection, action_id: int, *, for_update: bool = False) -> dict[str, Any] | None:
    lock = " FOR UPDATE" if for_update else ""
    found = (await conn.execute(text(f"SELECT {COLUMNS} FROM corrective_actions WHERE id = :id{lock}"),
                                {"id": action_id})).first()
    return None if found is None else dict(found._mapping)


async def insert_action(conn: AsyncConnection, values: Mapping[str, Any]) -> dict[str, Any]:
    return dict((await conn.execute(text(
        "INSERT INTO corrective_actions (region, source, source_ref, target_type, target_id, kind, owner, due_on, "
        "note, window_days, opened_by, opened_at, updated_at) VALUES (:region, :source, :source_ref, "
        ":target_type, :target_id, :kind, :owner, :due_on, :note, :window_days, :opened_by, :now, :now) "
        f"RETURNING {COLUMNS}"), dict(values))).one()._mapping)


async def update_action(conn: AsyncConnection, action_id: int, *, status: str, owner: str, due_on: date,
                        note: str | None, done_at: datetime | None, now: datetime) -> dict[str, Any]:
    return dict((await conn.execute(text(
        "UPDATE corrective_actions SET status = :status, owner = :owner, due_on = :due_on, "
        "note = coalesce(:note, note), done_at = :done_at, updated_at = :now WHERE id = :id "
        f"RETURNING {COLUMNS}"),
        {"status": status, "owner": owner, "due_on": due_on, "note": note, "done_at": done_at, "now": now,
         "id": action_id})).one()._mapping)


async def open_actions(conn: AsyncConnection, regions: Sequence[str] | None) -> list[dict[str, Any]]:
    in_regions = region_filter("region", regions)
    rows = await conn.execute(text(
        f"SELECT {COLUMNS} FROM corrective_actions WHERE status IN ('open', 'in_progress') "
        f"AND {in_regions.sql} ORDER BY due_on, id LIMIT 500"), in_regions.params)
    return [dict(r._mapping) for r in rows]


async def error_counts(conn: AsyncConnection, row: Mapping[str, Any], *, before: tuple[datetime, datetime],
                       after: tuple[datetime, datetime]) -> tuple[int, int, int, int]:
    """(audits, errors) of the target's sampled compensations issued in the before and the after window."""
    target = TARGET[row["target_type"]]
    counts = (await conn.execute(text(
        "SELECT count(*) FILTER (WHERE t.at >= :b0 AND t.at < :b1), "
        "count(*) FILTER (WHERE t.at >= :b0 AND t.at < :b1 AND t.failed), "
        "count(*) FILTER (WHERE t.at >= :a0 AND t.at < :a1), "
        "count(*) FILTER (WHERE t.at >= :a0 AND t.at < :a1 AND t.failed) "
        "FROM (SELECT CAST(i.compensation->>'occurred_at' AS timestamptz) AS at, "
        "NOT v.passed AND v.status <> 'overturned' AS failed "
        "FROM verdicts v JOIN audit_items i ON i.id = v.item_id "
        f"WHERE v.item_kind = 'sample' AND i.region = :region AND {target} = :target) AS t"),
        {"b0": before[0], "b1": before[1], "a0": after[0], "a1": after[1],
         "region": row["region"], "target": row["target_id"]})).one()
    return int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3])


async def effects_due(conn: AsyncConnection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Done actions whose after window has passed and whose effect is unpublished, locked (skip locked)."""
    return [dict(r._mapping) for r in await conn.execute(text(
        f"SELECT {COLUMNS} FROM corrective_actions WHERE status = 'done' AND effect_published_at IS NULL "
        "AND done_at + make_interval(days => window_days) <= :now ORDER BY done_at LIMIT :limit "
        "FOR UPDATE SKIP LOCKED"), {"now": now, "limit": limit})]


async def mark_effects_published(conn: AsyncConnection, ids: Sequence[int], now: datetime) -> None:
    await conn.execute(text("UPDATE corrective_actions SET effect_published_at = :now "
                            "WHERE id = ANY(CAST(:ids AS bigint[]))"), {"now": now, "ids": list(ids)})
