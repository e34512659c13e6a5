"""SQL of audit_sampler (schema ``audit_sampler``): bound parameters only, batches as array binds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.audit_sampler.domain.policy import SamplingState
from services.audit_sampler.domain.sampling import InspectionLevel
from services.audit_sampler.persistence.regions import region_filter


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# ------------------------------------------------------------------ sampling (consumer side)


@dataclass
class AgentRow:
    region: str
    agent_id: str
    first_seen_at: datetime
    compensations_seen: int
    state: SamplingState
    recent_results: tuple[bool, ...]
    week_start: date | None
    sampled_this_week: int
    audits_at_level: int = 0  # audits recorded since the agent entered ``state`` (switching rules)


async def known_compensations(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    rows = await conn.execute(text(
        "SELECT compensation_id FROM population WHERE compensation_id = ANY(CAST(:ids AS text[]))"),
        {"ids": list(ids)})
    return {r[0] for r in rows}


async def load_agents(conn: AsyncConnection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], AgentRow]:
    keys = list(keys)
    rows = await conn.execute(text(
        "SELECT a.region, a.agent_id, a.first_seen_at, a.compensations_seen, a.sampling_state, "
        "a.recent_results, a.week_start, a.sampled_this_week FROM agents a "
        "JOIN unnest(CAST(:regions AS text[]), CAST(:agents AS text[])) AS k(region, agent_id) "
        "USING (region, agent_id)"),
        {"regions": [k[0] for k in keys], "agents": [k[1] for k in keys]})
    return {(r[0], r[1]): AgentRow(r[0], r[1], r[2], int(r[3]), SamplingState(r[4]), tuple(r[5] or ()),
                                   r[6], int(r[7])) for r in rows}


async def last_buyer_compensations(conn: AsyncConnection, keys: Iterable[tuple[str, str]]
                                   ) -> dict[tuple[str, str], datetime]:
    keys = list(keys)
    rows = await conn.execute(text(
        "SELECT p.region, p.buyer_id, max(p.occurred_at) FROM population p "
        "JOIN unnest(CAST(:regions AS text[]), CAST(:buyers AS text[])) AS k(region, buyer_id) "
        "USING (region, buyer_id) GROUP BY p.region, p.buyer_id"),
        {"regions": [k[0] for k in keys], "buyers": [k[1] for k in keys]})
    return {(r[0], r[1]): r[2] for r in rows}


async def lock_queue_days(conn: AsyncConnection, groups: Iterable[tuple[str, str, date]]) -> None:
    """Lock these queue-days' rows until the transaction ends (creating missing ones, counts zero).

    Capacity is counted and then filled by inserts: without this lock two consumers (two partitions of
    the same region) could both read the same count and both take the last slots. Under it, the second
    waits, then counts what the first committed. Sorted order on both statements, so batches sharing
    queue-days queue instead of deadlocking; ``count_queue_days`` later updates the same rows.
    """
    keys = sorted(set(groups))
    if not keys:
        return
    params = {"regions": [k[0] for k in keys], "queues": [k[1] for k in keys], "days": [k[2] for k in keys]}
    await conn.execute(text(
        "INSERT INTO queue_days (region, queue, local_day) SELECT * FROM unnest(CAST(:regions AS text[]), "
        "CAST(:queues AS text[]), CAST(:days AS date[])) AS g(region, queue, local_day) "
        "ORDER BY region, queue, local_day ON CONFLICT DO NOTHING"), params)
    await conn.execute(text(
        "SELECT 1 FROM queue_days q JOIN unnest(CAST(:regions AS text[]), CAST(:queues AS text[]), "
        "CAST(:days AS date[])) AS g(region, queue, local_day) USING (region, queue, local_day) "
        "ORDER BY q.region, q.queue, q.local_day FOR UPDATE OF q"), params)


async def queue_day_counts(conn: AsyncConnection, groups: Iterable[tuple[str, str, date]]
                           ) -> dict[tuple[str, str, date], tuple[int, int]]:
    """(fixed, evictable) droppable sample items per queue-day: fixed = claimed or done, evictable = queued."""
    groups = list(groups)
    rows = await conn.execute(text(
        "SELECT i.region, i.queue, i.local_day, count(*) FILTER (WHERE i.status IN ('claimed', 'done')), "
        "count(*) FILTER (WHERE i.status = 'queued') FROM audit_items i "
        "JOIN unnest(CAST(:regions AS text[]), CAST(:queues AS text[]), CAST(:days AS date[])) "
        "AS g(region, queue, local_day) USING (region, queue, local_day) "
        "WHERE i.item_kind = 'sample' AND NOT i.mandatory GROUP BY 1, 2, 3"),
        {"regions": [g[0] for g in groups], "queues": [g[1] for g in groups], "days": [g[2] for g in groups]})
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4])) for r in rows}


async def evictable_items(conn: AsyncConnection, region: str, queue: str, day: date, limit: int
                          ) -> list[tuple[int, str, float]]:
    """The lowest-risk queued droppable items of a queue-day, locked so no claim takes them meanwhile."""
    rows = await conn.execute(text(
        "SELECT id, compensation_id, risk_score FROM audit_items WHERE region = :r AND queue = :q "
        "AND local_day = :d AND item_kind = 'sample' AND NOT mandatory AND status = 'queued' "
        "ORDER BY risk_score, id LIMIT :n FOR UPDATE SKIP LOCKED"),
        {"r": region, "q": queue, "d": day, "n": limit})
    return [(int(r[0]), r[1], float(r[2])) for r in rows]


async def inclusion_probabilities(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, float]:
    rows = await conn.execute(text(
        "SELECT compensation_id, inclusion_probability FROM population "
        "WHERE compensation_id = ANY(CAST(:ids AS text[]))"), {"ids": list(ids)})
    return {r[0]: float(r[1]) for r in rows}


async def insert_population(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Record the compensations; returns the ids this call inserted (a concurrent consumer that recorded
    one first makes this insert wait for its commit and then skip it)."""
    if not rows:
        return set()
    cols = {
        "compensation_id": "text", "event_id": "text", "region": "text", "buyer_id": "text", "agent_id": "text",
        "team": "text", "reason_code": "text", "kind": "text", "currency": "text", "amount_minor": "bigint",
        "order_amount_minor": "bigint", "occurred_at": "timestamptz", "local_day": "date",
        "inclusion_probability": "float8", "effective_probability": "float8", "draw": "float8",
        "sampled": "boolean", "mandatory": "boolean", "capacity_dropped": "boolean", "risk_score": "float8",
        "reasons": "text", "queue": "text", "agent_state": "text", "policy_version": "text"}
    selects = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols.items())
    names = ", ".join(cols)
    values = ", ".join("string_to_array(reasons, ',')" if c == "reasons" else c for c in cols)
    result = await conn.execute(text(
        f"INSERT INTO population ({names}) SELECT {values} FROM unnest({selects}) AS u({names}) "
        "ON CONFLICT (compensation_id) DO NOTHING RETURNING compensation_id"),
        {c: [r[c] for r in rows] for c in cols})
    return set(result.scalars())


async def abort_as_serialization_failure(conn: AsyncConnection) -> None:
    """Fail the transaction with SQLSTATE 40001: the batch lost a race to a concurrent transaction and is
    to be run again (the consumer runner retries serialization failures; on the retry the winner's
    committed rows are visible). A constant statement: the caller logs the details."""
    await conn.execute(text(
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure', "
        "MESSAGE = 'audit_sampler: compensations recorded concurrently by another consumer; retry the batch'; "
        "END $$"))


async def insert_sample_items(conn: AsyncConnection, items: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Queue sample items; returns compensation id -> item id of those inserted now."""
    if not items:
        return {}
    cols = {"region": "text", "queue": "text", "compensation_id": "text", "agent_id": "text", "team": "text",
            "compensation": "jsonb", "risk_score": "float8", "inclusion_probability": "float8",
            "reasons": "text", "mandatory": "boolean", "local_day": "date", "enqueued_at": "timestamptz",
            "sla_due_at": "timestamptz", "finding": "text"}
    selects = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols.items())
    names = ", ".join(cols)
    values = ", ".join("string_to_array(reasons, ',')" if c == "reasons" else c for c in cols)
    items = [{**i, "finding": i.get("finding")} for i in items]
    rows = await conn.execute(text(
        f"INSERT INTO audit_items (item_kind, {names}) SELECT 'sample', {values} "
        f"FROM unnest({selects}) AS u({names}) ON CONFLICT DO NOTHING RETURNING compensation_id, id"),
        {c: [_json(i[c]) if c == "compensation" else i[c] for i in items] for c in cols})
    return {r[0]: int(r[1]) for r in rows}


async def evict(conn: AsyncConnection, item_ids: Sequence[int]) -> list[tuple[int, str, str, str]]:
    """Drop queued items that lost their place to higher-risk arrivals; their population rows follow.
    Returns (item id, compensation id, buyer id, region) of those dropped."""
    if not item_ids:
        return []
    rows = await conn.execute(text(
        "WITH gone AS (UPDATE audit_items SET status = 'dropped', completed_at = now() "
        "WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'queued' "
        "RETURNING id, compensation_id, compensation->>'buyer_id' AS buyer_id, region), "
        "p AS (UPDATE population p SET sampled = false, capacity_dropped = true "
        "FROM gone WHERE p.compensation_id = gone.compensation_id) "
        "SELECT id, compensation_id, buyer_id, region FROM gone ORDER BY id"), {"ids": list(item_ids)})
    return [(int(r[0]), r[1], r[2], r[3]) for r in rows]


async def record_drops(conn: AsyncConnection, drops: Sequence[dict[str, Any]]) -> None:
    if not drops:
        return
    cols = {"region": "text", "queue": "text", "local_day": "date", "compensation_id": "text",
            "risk_score": "float8", "inclusion_probability": "float8", "evicted_item_id": "bigint"}
    selects = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols.items())
    names = ", ".join(cols)
    await conn.execute(text(
        f"INSERT INTO capacity_drops ({names}) SELECT * FROM unnest({selects}) "
        "ON CONFLICT (compensation_id) DO NOTHING"), {c: [d[c] for d in drops] for c in cols})


async def count_queue_days(conn: AsyncConnection, counts: dict[tuple[str, str, date], tuple[int, int]]
                           ) -> None:
    """Add (selected, kept) droppable samples per queue-day; where capacity dropped some, reweight.

    Only sampled rows are reweighted (the estimator weights nothing else), so the work per batch is
    bounded by the queue's daily capacity, not by the day's population.
    """
    if not counts:
        return
    keys = sorted(counts)  # one lock order for every consumer
    await conn.execute(text(
        "WITH up AS (INSERT INTO queue_days AS q (region, queue, local_day, selected, kept) "
        "SELECT * FROM unnest(CAST(:regions AS text[]), CAST(:queues AS text[]), CAST(:days AS date[]), "
        "CAST(:selected AS bigint[]), CAST(:kept AS bigint[])) "
        "ON CONFLICT (region, queue, local_day) DO UPDATE SET selected = q.selected + EXCLUDED.selected, "
        "kept = q.kept + EXCLUDED.kept RETURNING region, queue, local_day, selected, kept) "
        "UPDATE population p SET effective_probability = p.inclusion_probability * up.kept / up.selected "
        "FROM up WHERE up.kept < up.selected AND p.region = up.region AND p.queue = up.queue "
        "AND p.local_day = up.local_day AND p.sampled AND NOT p.mandatory"),
        {"regions": [k[0] for k in keys], "queues": [k[1] for k in keys], "days": [k[2] for k in keys],
         "selected": [counts[k][0] for k in keys], "kept": [counts[k][1] for k in keys]})


async def bump_agents(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Add this batch's counts to each agent (relative updates: concurrent consumers never lose counts)."""
    if not rows:
        return
    cols = {"region": "text", "agent_id": "text", "team": "text", "first_seen_at": "timestamptz",
            "seen": "bigint", "week_start": "date", "sampled": "int"}
    selects = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols.items())
    await conn.execute(text(
        "INSERT INTO agents AS a (region, agent_id, team, first_seen_at, compensations_seen, week_start, "
        f"sampled_this_week) SELECT * FROM unnest({selects}) "
        "ON CONFLICT (region, agent_id) DO UPDATE SET team = EXCLUDED.team, "
        "first_seen_at = least(a.first_seen_at, EXCLUDED.first_seen_at), "
        "compensations_seen = a.compensations_seen + EXCLUDED.compensations_seen, "
        "sampled_this_week = CASE WHEN a.week_start = EXCLUDED.week_start "
        "THEN a.sampled_this_week + EXCLUDED.sampled_this_week "
        "WHEN a.week_start > EXCLUDED.week_start THEN a.sampled_this_week "
        "ELSE EXCLUDED.sampled_this_week END, "
        "week_start = greatest(a.week_start, EXCLUDED.week_start), updated_at = now()"),
        {c: [r[c] for r in rows] for c in cols})


# ------------------------------------------------------------------ queues and audits (workflow side)

ITEM_COLUMNS = (
    "id, region, queue, item_kind, compensation_id, parent_item_id, agent_id, team, compensation, "
    "risk_score, inclusion_probability, reasons, mandatory, local_day, status, enqueued_at, sla_due_at, "
    "claimed_by, lease_expires_at, assigned_to, excluded_auditor, claims, gold_expected, created_by, "
    "completed_at, finding")


def item_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


async def item_for_update(conn: AsyncConnection, item_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(text(f"SELECT {ITEM_COLUMNS} FROM audit_items WHERE id = :id FOR UPDATE"),
                              {"id": item_id})).first()
    return None if row is None else item_dict(row)


async def item(conn: AsyncConnection, item_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(text(f"SELECT {ITEM_COLUMNS} FROM audit_items WHERE id = :id"),
                              {"id": item_id})).first()
    return None if row is None else item_dict(row)


async def lock_auditor(conn: AsyncConnection, region: str, auditor: str) -> None:
    """Serialise this auditor's claims in the region until the transaction ends (one statement: the no-op
    update of an existing guard row locks it, the insert of a new one holds it)."""
    await conn.execute(text(
        "INSERT INTO auditor_guards AS g (region, auditor_id) VALUES (:r, :a) "
        "ON CONFLICT (region, auditor_id) DO UPDATE SET last_claim_at = now()"), {"r": region, "a": auditor})


async def held_item(conn: AsyncConnection, region: str, auditor: str, now: datetime, queue: str | None = None
                    ) -> dict[str, Any] | None:
    """The item this auditor already holds under a live lease in the region (and queue, when given)."""
    row = (await conn.execute(text(
        f"SELECT {ITEM_COLUMNS} FROM audit_items WHERE region = :r AND status = 'claimed' "
        "AND (CAST(:q AS text) IS NULL OR queue = :q) "
        "AND claimed_by = :a AND lease_expires_at > :now ORDER BY id LIMIT 1"),
        {"r": region, "a": auditor, "now": now, "q": queue})).first()
    return None if row is None else item_dict(row)


async def renew_lease(conn: AsyncConnection, item_id: int, auditor: str, lease_until: datetime
                      ) -> dict[str, Any] | None:
    """Extend the lease of an item only while this auditor still holds it (a lapsed lease may have been
    taken by someone else since it was read); None when they no longer do."""
    row = (await conn.execute(text(
        "UPDATE audit_items SET lease_expires_at = :until WHERE id = :id AND status = 'claimed' "
        f"AND claimed_by = :a RETURNING {ITEM_COLUMNS}"), {"id": item_id, "a": auditor, "until": lease_until})
    ).first()
    return None if row is None else item_dict(row)


async def claim_next(conn: AsyncConnection, region: str, auditor: str, now: datetime, lease_until: datetime,
                     queue_order: Sequence[str], queue: str | None = None) -> dict[str, Any] | None:
    """Lease the next waiting item: SKIP LOCKED so concurrent claimers never wait for or share a row.

    Waiting means queued, or claimed under an expired lease (the lease lapsed: the item returns). An
    auditor never gets an item reserved for someone else, a compensation of their own, or the blind
    re-audit of their own verdict. Higher-priority queues first, then oldest first.
    """
    row = (await conn.execute(text(
        "WITH next AS (SELECT id FROM audit_items "
        "WHERE region = :r AND (CAST(:q AS text) IS NULL OR queue = :q) "
        "AND (status = 'queued' OR (status = 'claimed' AND lease_expires_at <= :now)) "
        "AND (assigned_to IS NULL OR assigned_to = :a) "
        "AND agent_id <> :a AND (excluded_auditor IS NULL OR excluded_auditor <> :a) "
        "ORDER BY array_position(CAST(:order AS text[]), queue), enqueued_at, id "
        "LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "UPDATE audit_items i SET status = 'claimed', claimed_by = :a, lease_expires_at = :until, "
        "claims = claims + 1 FROM next WHERE i.id = next.id "
        f"RETURNING {', '.join('i.' + c.strip() for c in ITEM_COLUMNS.split(','))}"),
        {"r": region, "q": queue, "a": auditor, "now": now, "until": lease_until,
         "order": list(queue_order)})).first()
    return None if row is None else item_dict(row)


async def set_item_holder(conn: AsyncConnection, item_id: int, *, status: str, claimed_by: str | None,
                          lease_until: datetime | None, assigned_to: str | None) -> None:
    await conn.execute(text(
        "UPDATE audit_items SET status = :s, claimed_by = :c, lease_expires_at = :l, assigned_to = :t "
        "WHERE id = :id"), {"s": status, "c": claimed_by, "l": lease_until, "t": assigned_to, "id": item_id})


async def complete_item(conn: AsyncConnection, item_id: int, now: datetime) -> None:
    await conn.execute(text(
        "UPDATE audit_items SET status = 'done', completed_at = :now, lease_expires_at = NULL WHERE id = :id"),
        {"id": item_id, "now": now})


async def insert_verdict(conn: AsyncConnection, v: dict[str, Any]) -> int:
    verdict_id = (await conn.execute(text(
        "INSERT INTO verdicts (item_id, item_kind, region, compensation_id, agent_id, team, reason_code, "
        "currency, amount_minor, auditor_id, attributes, passed, error_category, note, corrected_amount_minor, "
        "corrected_liability, gold_correct, created_at) VALUES (:item_id, :item_kind, :region, "
        ":compensation_id, :agent_id, :team, :reason_code, :currency, :amount_minor, :auditor_id, "
        "CAST(:attributes AS jsonb), :passed, :error_category, :note, :corrected_amount_minor, "
        "CAST(:corrected_liability AS jsonb), :gold_correct, :created_at) RETURNING id"),
        {**v, "attributes": _json(v["attributes"]),
         "corrected_liability": None if v["corrected_liability"] is None else _json(v["corrected_liability"])},
    )).scalar_one()
    names = list(v["attributes"])
    await conn.execute(text(
        "INSERT INTO verdict_attributes (verdict_id, attribute, ok) "
        "SELECT :vid, * FROM unnest(CAST(:names AS text[]), CAST(:oks AS boolean[]))"),
        {"vid": verdict_id, "names": names, "oks": [bool(v["attributes"][n]) for n in names]})
    return int(verdict_id)


async def set_correction_id(conn: AsyncConnection, verdict_id: int, correction_id: str) -> None:
    await conn.execute(text("UPDATE verdicts SET correction_id = :c WHERE id = :id"),
                       {"c": correction_id, "id": verdict_id})


VERDICT_COLUMNS = (
    "id, item_id, item_kind, region, compensation_id, agent_id, team, reason_code, currency, amount_minor, "
    "auditor_id, attributes, passed, error_category, note, corrected_amount_minor, corrected_liability, "
    "correction_id, gold_correct, status, created_at")


async def verdict(conn: AsyncConnection, verdict_id: int, *, for_update: bool = False) -> dict[str, Any] | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (await conn.execute(text(f"SELECT {VERDICT_COLUMNS} FROM verdicts WHERE id = :id{lock}"),
                              {"id": verdict_id})).first()
    return None if row is None else dict(row._mapping)


async def verdict_of_item(conn: AsyncConnection, item_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(text(f"SELECT {VERDICT_COLUMNS} FROM verdicts WHERE item_id = :id"),
                              {"id": item_id})).first()
    return None if row is None else dict(row._mapping)


async def set_verdict_status(conn: AsyncConnection, verdict_id: int, status: str) -> None:
    await conn.execute(text("UPDATE verdicts SET status = :s WHERE id = :id"), {"s": status, "id": verdict_id})


async def agent_for_update(conn: AsyncConnection, region: str, agent_id: str) -> AgentRow | None:
    row = (await conn.execute(text(
        "SELECT region, agent_id, first_seen_at, compensations_seen, sampling_state, recent_results, "
        "week_start, sampled_this_week, audits_at_level FROM agents WHERE region = :r AND agent_id = :a "
        "FOR UPDATE"), {"r": region, "a": agent_id})).first()
    if row is None:
        return None
    return AgentRow(row[0], row[1], row[2], int(row[3]), SamplingState(row[4]), tuple(row[5] or ()), row[6],
                    int(row[7]), int(row[8]))


async def save_agent_results(conn: AsyncConnection, region: str, agent_id: str, results: Sequence[bool],
                             level: InspectionLevel) -> None:
    await conn.execute(text(
        "UPDATE agents SET recent_results = CAST(:res AS boolean[]), sampling_state = :s, "
        "audits_at_level = :n, updated_at = now() WHERE region = :r AND agent_id = :a"),
        {"res": list(results), "s": level.state.value, "n": level.audits_at_level, "r": region, "a": agent_id})


async def agent_results_from_verdicts(conn: AsyncConnection, region: str, agent_id: str, limit: int
                                      ) -> list[bool]:
    """The agent's latest audit outcomes, oldest first, with overturned verdicts counted as passes."""
    rows = await conn.execute(text(
        "SELECT passed OR status = 'overturned' FROM verdicts WHERE region = :r AND agent_id = :a "
        "AND item_kind = 'sample' ORDER BY created_at DESC, id DESC LIMIT :n"),
        {"r": region, "a": agent_id, "n": limit})
    return [bool(r[0]) for r in rows][::-1]


async def insert_calibration_item(conn: AsyncConnection, parent: dict[str, Any], excluded: str,
                                  now: datetime, sla_due_at: datetime) -> int | None:
    row = (await conn.execute(text(
        "INSERT INTO audit_items (region, queue, item_kind, compensation_id, parent_item_id, agent_id, team, "
        "compensation, risk_score, inclusion_probability, reasons, mandatory, local_day, enqueued_at, "
        "sla_due_at, excluded_auditor) SELECT region, queue, 'calibration', compensation_id, id, agent_id, "
        "team, compensation, risk_score, inclusion_probability, ARRAY['calibration'], true, local_day, :now, "
        ":due, :ex FROM audit_items WHERE id = :id ON CONFLICT DO NOTHING RETURNING id"),
        {"id": parent["id"], "ex": excluded, "now": now, "due": sla_due_at})).first()
    return None if row is None else int(row[0])


async def insert_calibration_pair(conn: AsyncConnection, region: str, primary: dict[str, Any],
                                  second_id: int, second_auditor: str) -> None:
    await conn.execute(text(
        "INSERT INTO calibration_pairs (region, primary_verdict_id, primary_auditor, second_verdict_id, "
        "second_auditor) VALUES (:r, :p, :pa, :s, :sa) ON CONFLICT DO NOTHING"),
        {"r": region, "p": primary["id"], "pa": primary["auditor_id"], "s": second_id, "sa": second_auditor})


async def insert_gold_item(conn: AsyncConnection, g: dict[str, Any]) -> int:
    return int((await conn.execute(text(
        "INSERT INTO audit_items (region, queue, item_kind, compensation_id, agent_id, team, compensation, "
        "risk_score, inclusion_probability, reasons, mandatory, local_day, enqueued_at, sla_due_at, "
        "gold_expected, created_by) VALUES (:region, :queue, 'gold', :compensation_id, :agent_id, :team, "
        "CAST(:compensation AS jsonb), 1.0, 1.0, ARRAY['gold'], true, :local_day, :now, :due, "
        "CAST(:expected AS jsonb), :created_by) RETURNING id"),
        {**g, "compensation": _json(g["compensation"]), "expected": _json(g["expected"])})).scalar_one())


async def insert_dispute(conn: AsyncConnection, verdict_id: int, region: str, raised_by: str,
                         reason: str) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        "INSERT INTO disputes (verdict_id, region, raised_by, reason) VALUES (:v, :r, :b, :why) "
        "ON CONFLICT (verdict_id) DO NOTHING RETURNING *"),
        {"v": verdict_id, "r": region, "b": raised_by, "why": reason})).first()
    return None if row is None else dict(row._mapping)


async def dispute(conn: AsyncConnection, dispute_id: int, *, for_update: bool = False) -> dict[str, Any] | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (await conn.execute(text(f"SELECT * FROM disputes WHERE id = :id{lock}"), {"id": dispute_id})).first()
    return None if row is None else dict(row._mapping)


async def dispute_of_verdict(conn: AsyncConnection, verdict_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(text("SELECT * FROM disputes WHERE verdict_id = :v"), {"v": verdict_id})).first()
    return None if row is None else dict(row._mapping)


async def resolve_dispute(conn: AsyncConnection, dispute_id: int, status: str, by: str, note: str | None,
                          reverse_correction_id: str | None, now: datetime) -> dict[str, Any]:
    row = (await conn.execute(text(
        "UPDATE disputes SET status = :s, resolved_by = :b, resolution_note = :n, "
        "reverse_correction_id = :rc, resolved_at = :now WHERE id = :id RETURNING *"),
        {"s": status, "b": by, "n": note, "rc": reverse_correction_id, "now": now, "id": dispute_id})).one()
    return dict(row._mapping)


async def disputes(conn: AsyncConnection, regions: Sequence[str] | None, status: str | None,
                   limit: int = 200) -> list[dict[str, Any]]:
    in_regions = region_filter("d.region", regions)
    rows = await conn.execute(text(
        "SELECT d.*, v.item_id, v.compensation_id, v.agent_id, v.auditor_id, v.error_category "
        f"FROM disputes d JOIN verdicts v ON v.id = d.verdict_id WHERE {in_regions.sql} "
        "AND (CAST(:s AS text) IS NULL OR d.status = :s) ORDER BY d.created_at DESC LIMIT :n"),
        in_regions.bind(s=status, n=limit))
    return [dict(r._mapping) for r in rows]


async def agent_history(conn: AsyncConnection, region: str, agent_id: str, limit: int) -> list[dict[str, Any]]:
    rows = await conn.execute(text(
        "SELECT v.id AS verdict_id, v.compensation_id, v.reason_code, v.amount_minor, v.currency, v.passed, "
        "v.error_category, v.status, v.created_at FROM verdicts v WHERE v.region = :r AND v.agent_id = :a "
        "AND v.item_kind = 'sample' ORDER BY v.created_at DESC LIMIT :n"),
        {"r": region, "a": agent_id, "n": limit})
    return [dict(r._mapping) for r in rows]


async def queue_stats(conn: AsyncConnection, regions: Sequence[str] | None, now: datetime
                      ) -> list[dict[str, Any]]:
    in_regions = region_filter("region", regions)
    rows = await conn.execute(text(
        "SELECT region, queue, "
        "count(*) FILTER (WHERE status = 'queued' OR lease_expires_at <= :now) AS waiting, "
        "count(*) FILTER (WHERE status = 'claimed' AND lease_expires_at > :now) AS claimed, "
        "coalesce(extract(epoch FROM :now - min(enqueued_at) FILTER (WHERE status = 'queued' "
        "OR lease_expires_at <= :now)), 0) AS oldest_age_seconds, "
        "count(*) FILTER (WHERE sla_due_at < :now) AS sla_breached "
        f"FROM audit_items WHERE status IN ('queued', 'claimed') AND {in_regions.sql} "
        "GROUP BY region, queue ORDER BY region, queue"),
        in_regions.bind(now=now))
    return [dict(r._mapping) for r in rows]


async def quality_gauges(conn: AsyncConnection, since: datetime) -> list[dict[str, Any]]:
    """Per region: calibration agreement, gold accuracy and the Hajek-weighted accuracy, for the gauges."""
    rows = await conn.execute(text(
        "WITH est AS (SELECT v.region, sum(CASE WHEN v.passed THEN 1 / p.effective_probability ELSE 0 END) "
        "/ nullif(sum(1 / p.effective_probability), 0) AS accuracy FROM verdicts v "
        "JOIN population p USING (compensation_id) WHERE v.item_kind = 'sample' AND v.created_at >= :since "
        "AND p.effective_probability > 0 GROUP BY v.region), "
        "gold AS (SELECT region, avg(CASE WHEN gold_correct THEN 1.0 ELSE 0.0 END) AS accuracy "
        "FROM verdicts WHERE item_kind = 'gold' AND created_at >= :since GROUP BY region), "
        "cal AS (SELECT c.region, avg(CASE WHEN a1.ok = a2.ok THEN 1.0 ELSE 0.0 END) AS agreement "
        "FROM calibration_pairs c JOIN verdict_attributes a1 ON a1.verdict_id = c.primary_verdict_id "
        "JOIN verdict_attributes a2 ON a2.verdict_id = c.second_verdict_id AND a2.attribute = a1.attribute "
        "WHERE c.created_at >= :since GROUP BY c.region) "
        "SELECT coalesce(est.region, gold.region, cal.region) AS region, est.accuracy AS estimated_accuracy, "
        "gold.accuracy AS gold_accuracy, cal.agreement AS calibration_agreement "
        "FROM est FULL JOIN gold USING (region) FULL JOIN cal USING (region)"), {"since": since})
    return [dict(r._mapping) for r in rows]
