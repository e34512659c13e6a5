"""SQL of insights, on its own schema only: records, rollup deltas, compaction, and the report reads.

The consumer's statements go straight through asyncpg on the batch transaction's connection (array binds,
COPY for the rollup deltas); reads use SQLAlchemy ``text()`` with bound parameters. Every rollup has a base
table (keyed, written only by the compactor) and an append-only ``<table>_delta`` table that consumers add
pre-aggregated rows to; a reader sums both, in one statement, so it never sees a half-compacted state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.insights.domain.report import ACTION_COUNTS, APPROVAL_COUNTS, ApprovalInputs, AuditWork
from services.insights.domain.rollups import (
    ACTION_DAILY,
    APPROVAL_BINS,
    APPROVAL_DAILY,
    BY_NAME,
    FLAG_DAILY,
    TABLES,
    ActionRecord,
    ApprovalRecord,
    CompensationRecord,
    Deltas,
    Feedback,
    FlagRecord,
    Table,
    TicketRecord,
)
from services.insights.domain.spike_watch import NO_VALUE
from shared.db import raw_connection

# ------------------------------------------------------------------ records


class LostRace(Exception):
    """Another consumer created a record this batch expected to create; the batch is retried."""


async def abort_as_serialization_failure(conn: AsyncConnection) -> None:
    """Fail the transaction with SQLSTATE 40001 so the consumer runner retries the batch (on the retry the
    winner's committed rows are visible). A constant statement: the caller logs the details."""
    await conn.execute(text(
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure', "
        "MESSAGE = 'insights: records created concurrently by another consumer; retry the batch'; END $$"))


_TICKET_COLS = ("ticket_id, region, known, event_id, occurred_at, reason, seller_id, carrier_id, raised_by, "
                "breach_at, feedback::text")


def _ticket(row: Sequence[Any]) -> TicketRecord:
    feedback = tuple(Feedback(f["feedback_id"], f["kind"], int(f["score"]), datetime.fromisoformat(f["at"]))
                     for f in orjson.loads(row[10]))
    return TicketRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], feedback)


async def create_or_lock_tickets(conn: AsyncConnection, new: Sequence[TicketRecord]
                                 ) -> tuple[set[str], dict[str, TicketRecord]]:
    """Insert the given records where no row exists yet; lock and return the rows that already existed.

    Returns (ids inserted now, id -> existing record). Rows are locked in ticket id order, so two
    consumers never deadlock on the same tickets; they take turns per ticket, never for a whole table.
    Rows travel as one JSON document (``jsonb_to_recordset``): binding a dozen arrays of a few thousand
    elements cost the driver more CPU than the statement cost the server."""
    if not new:
        return set(), {}
    raw = await raw_connection(conn)
    ordered = sorted(new, key=lambda t: t.ticket_id)
    inserted = {r[0] for r in await raw.fetch(
        f"INSERT INTO tickets ({_TICKET_FIELDS}) SELECT {_TICKET_FIELDS} FROM jsonb_to_recordset($1::jsonb) "
        f"AS x({_TICKET_TYPES}) ON CONFLICT (ticket_id) DO NOTHING RETURNING ticket_id", _tickets_json(ordered))}
    existing_ids = [t.ticket_id for t in ordered if t.ticket_id not in inserted]
    existing: dict[str, TicketRecord] = {}
    if existing_ids:
        rows = await raw.fetch(f"SELECT {_TICKET_COLS} FROM tickets WHERE ticket_id = ANY($1::text[]) "
                               "ORDER BY ticket_id FOR UPDATE", existing_ids)
        existing = {r[0]: _ticket(r) for r in rows}
        if len(existing) != len(existing_ids):
            raise LostRace("tickets")
    return inserted, existing


_TICKET_FIELDS = ("ticket_id, region, known, event_id, occurred_at, reason, seller_id, carrier_id, raised_by, "
                  "breach_at, feedback")
_TICKET_TYPES = ("ticket_id text, region text, known boolean, event_id text, occurred_at timestamptz, reason text, "
                 "seller_id text, carrier_id text, raised_by text, breach_at timestamptz, feedback jsonb")


def _tickets_json(tickets: Sequence[TicketRecord]) -> str:
    # orjson writes slotted dataclasses natively: field names are the column names, feedback a list of
    # {feedback_id, kind, score, at} objects.
    return orjson.dumps(list(tickets)).decode()


async def update_tickets(conn: AsyncConnection, tickets: Sequence[TicketRecord]) -> None:
    if not tickets:
        return
    raw = await raw_connection(conn)
    sets = ", ".join(f"{c.strip()} = u.{c.strip()}" for c in _TICKET_FIELDS.split(",")[1:])
    await raw.execute(
        f"UPDATE tickets t SET {sets} FROM jsonb_to_recordset($1::jsonb) AS u({_TICKET_TYPES}) "
        "WHERE t.ticket_id = u.ticket_id", _tickets_json(tickets))


_COMP_FIELDS = ("compensation_id", "region", "ticket_id", "event_id", "source", "kind", "strategy_id", "reason",
                "seller_id", "carrier_id", "amount_minor", "seller_minor", "carrier_minor", "platform_minor",
                "issued_at", "redeemed_minor", "redeemed_at", "redeemed_event", "expired_at", "expired_event",
                "revoked_at", "revoked_event")
_COMP_TYPES = ("text", "text", "text", "text", "text", "text", "text", "text", "text", "text", "bigint", "bigint",
               "bigint", "bigint", "timestamptz", "bigint", "timestamptz", "text", "timestamptz", "text",
               "timestamptz", "text")
_COMP_COLS = ", ".join(_COMP_FIELDS)


async def referenced_tickets(conn: AsyncConnection, compensation_ids: Sequence[str]) -> dict[str, str]:
    """compensation id -> its ticket id, for lifecycle events (read without locks: only to know which
    tickets to lock)."""
    if not compensation_ids:
        return {}
    raw = await raw_connection(conn)
    rows = await raw.fetch("SELECT compensation_id, ticket_id FROM compensations "
                           "WHERE compensation_id = ANY($1::text[]) AND ticket_id IS NOT NULL", list(compensation_ids))
    return {r[0]: r[1] for r in rows}


async def lock_compensations(conn: AsyncConnection, ticket_ids: Sequence[str], compensation_ids: Sequence[str]
                             ) -> dict[str, CompensationRecord]:
    """Every compensation of these tickets and these compensations, locked in id order."""
    if not ticket_ids and not compensation_ids:
        return {}
    raw = await raw_connection(conn)
    # Two index lookups (an OR of the two would read the whole table), then the rows locked by primary key.
    rows = await raw.fetch(
        f"SELECT {_COMP_COLS} FROM compensations WHERE compensation_id IN ("
        "SELECT compensation_id FROM compensations WHERE ticket_id = ANY($1::text[]) "
        "UNION SELECT unnest($2::text[])) ORDER BY compensation_id FOR UPDATE",
        list(ticket_ids), list(compensation_ids))
    return {r[0]: CompensationRecord(*r) for r in rows}


_COMP_RECORD_TYPES = ", ".join(f"{n} {t}" for n, t in zip(_COMP_FIELDS, _COMP_TYPES, strict=True))


def _comps_json(comps: Sequence[CompensationRecord]) -> str:
    return orjson.dumps(list(comps)).decode()  # field names are the column names


async def insert_compensations(conn: AsyncConnection, comps: Sequence[CompensationRecord]) -> None:
    if not comps:
        return
    raw = await raw_connection(conn)
    ordered = sorted(comps, key=lambda c: c.compensation_id)
    inserted = await raw.fetch(
        f"INSERT INTO compensations ({_COMP_COLS}) SELECT {_COMP_COLS} FROM jsonb_to_recordset($1::jsonb) "
        f"AS x({_COMP_RECORD_TYPES}) ON CONFLICT (compensation_id) DO NOTHING RETURNING compensation_id",
        _comps_json(ordered))
    if len(inserted) != len(ordered):
        raise LostRace("compensations")


async def update_compensations(conn: AsyncConnection, comps: Sequence[CompensationRecord]) -> None:
    if not comps:
        return
    raw = await raw_connection(conn)
    sets = ", ".join(f"{name} = u.{name}" for name in _COMP_FIELDS[1:])
    await raw.execute(
        f"UPDATE compensations c SET {sets} FROM jsonb_to_recordset($1::jsonb) AS u({_COMP_RECORD_TYPES}) "
        "WHERE c.compensation_id = u.compensation_id", _comps_json(comps))


# ------------------------------------------------------------------ rollup deltas


async def write_deltas(conn: AsyncConnection, deltas: Deltas) -> int:
    """Append the batch's non-zero rollup changes (COPY into the delta tables); returns the row count."""
    raw = await raw_connection(conn)
    written = 0
    for table in TABLES:
        rows = deltas.nonzero(table)
        if not rows:
            continue
        await raw.copy_records_to_table(f"{table.name}_delta", columns=[*table.key_names, *table.measures],
                                        records=[(*k, *v) for k, v in rows])
        written += len(rows)
    return written


def _compact_sql(table: Table) -> str:
    keys = ", ".join(table.key_names)
    sums = ", ".join(f"sum({m})::bigint" for m in table.measures)
    updates = ", ".join(f"{m} = {table.name}.{m} + EXCLUDED.{m}" for m in table.measures)
    return (f"WITH moved AS (DELETE FROM {table.name}_delta RETURNING *) "
            f"INSERT INTO {table.name} ({keys}, {', '.join(table.measures)}) "
            f"SELECT {keys}, {sums} FROM moved GROUP BY {keys} "
            f"ON CONFLICT ({keys}) DO UPDATE SET {updates}")


_COMPACT = {t.name: _compact_sql(t) for t in TABLES}


async def compact(conn: AsyncConnection, table: Table) -> int:
    """Fold the committed delta rows of a rollup into its base table (one statement: readers see either
    side, never both or neither). Only one compactor per table works at a time (a transaction-level
    advisory lock tried, never waited for); consumers never take it. Returns rows folded (0 if skipped)."""
    got = (await conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                              {"k": f"insights-compact:{table.name}"})).scalar()
    if not got:
        return 0
    result = await conn.execute(text(_COMPACT[table.name]))
    return int(result.rowcount or 0)


async def delta_backlog(conn: AsyncConnection) -> int:
    parts = " + ".join(f"(SELECT count(*) FROM {t.name}_delta)" for t in TABLES)
    return int((await conn.execute(text(f"SELECT {parts}"))).scalar_one())


# ------------------------------------------------------------------ other read-model rows


async def upsert_order_volume(conn: AsyncConnection, rows: Sequence[tuple[str, date, int, int, datetime, str]]) -> None:
    """(region, day, orders, gmv_minor, reported_at, event_id); the latest (reported_at, event_id) wins."""
    if not rows:
        return
    raw = await raw_connection(conn)
    await raw.execute(
        "INSERT INTO order_volume (region, day, orders, gmv_minor, reported_at, event_id) "
        "SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bigint[], $5::timestamptz[], $6::text[]) "
        "ON CONFLICT (region, day) DO UPDATE SET orders = EXCLUDED.orders, gmv_minor = EXCLUDED.gmv_minor, "
        "reported_at = EXCLUDED.reported_at, event_id = EXCLUDED.event_id "
        "WHERE (EXCLUDED.reported_at, EXCLUDED.event_id) > (order_volume.reported_at, order_volume.event_id)",
        *[list(c) for c in zip(*_latest(rows, (0, 1), (4, 5)), strict=True)])


async def upsert_budget_limits(conn: AsyncConnection, rows: Sequence[tuple[str, str, str, int, datetime, str]]
                               ) -> None:
    """(region, period, currency, limit_minor, set_at, event_id); the latest (set_at, event_id) wins."""
    if not rows:
        return
    raw = await raw_connection(conn)
    await raw.execute(
        "INSERT INTO budget_limits (region, period, currency, limit_minor, set_at, event_id) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[], $6::text[]) "
        "ON CONFLICT (region, period) DO UPDATE SET currency = EXCLUDED.currency, "
        "limit_minor = EXCLUDED.limit_minor, set_at = EXCLUDED.set_at, event_id = EXCLUDED.event_id "
        "WHERE (EXCLUDED.set_at, EXCLUDED.event_id) > (budget_limits.set_at, budget_limits.event_id)",
        *[list(c) for c in zip(*_latest(rows, (0, 1), (4, 5)), strict=True)])


def _latest(rows: Iterable[tuple[Any, ...]], key: tuple[int, ...], order: tuple[int, ...]) -> list[tuple[Any, ...]]:
    """One row per key (ON CONFLICT cannot touch a row twice in a statement): the latest by ``order``."""
    best: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        k = tuple(row[i] for i in key)
        if k not in best or tuple(row[i] for i in order) > tuple(best[k][i] for i in order):
            best[k] = row
    return list(best.values())


async def upsert_sampled(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    raw = await raw_connection(conn)
    cols = ("region", "item_id", "compensation_id", "comp_day", "stratum", "probability", "mandatory", "agent_id",
            "team", "reason_code", "amount_minor", "sla_due_at")
    types = ("text", "bigint", "text", "date", "text", "float8", "boolean", "text", "text", "text", "bigint",
             "timestamptz")
    unique = {(r["region"], r["item_id"]): r for r in rows}.values()
    casts = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[2:])
    await raw.execute(
        f"INSERT INTO audit_items ({', '.join(cols)}, sampled) SELECT *, true FROM unnest({casts}) "
        f"ON CONFLICT (region, item_id) DO UPDATE SET {sets}, sampled = true",
        *[[r[c] for r in unique] for c in cols])


async def mark_evicted(conn: AsyncConnection, rows: Sequence[tuple[str, int, str]]) -> None:
    """(region, item id, compensation id) dropped for capacity."""
    if not rows:
        return
    raw = await raw_connection(conn)
    unique = list({(r[0], r[1]): r for r in rows}.values())
    await raw.execute(
        "INSERT INTO audit_items (region, item_id, compensation_id, evicted) "
        "SELECT r, i, c, true FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(r, i, c) "
        "ON CONFLICT (region, item_id) DO UPDATE SET evicted = true",
        [r[0] for r in unique], [r[1] for r in unique], [r[2] for r in unique])


async def upsert_verdicts(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """The verdict an item stands on: a dispute overturn replaces the verdict it overturns; otherwise the
    highest verdict id wins (arrival order does not matter)."""
    if not rows:
        return

    def rank(r: dict[str, Any]) -> tuple[int, int]:
        return (1 if r["dispute_id"] is not None else 0, r["verdict_id"])

    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        k = (r["region"], r["item_id"])
        if k not in best or rank(r) > rank(best[k]):
            best[k] = r
    raw = await raw_connection(conn)
    cols = ("region", "item_id", "compensation_id", "verdict_id", "dispute_id", "auditor_id", "passed",
            "error_category", "misstated_minor", "audited_at", "audit_day", "within_sla", "attributes")
    types = ("text", "bigint", "text", "bigint", "bigint", "text", "boolean", "text", "bigint", "timestamptz", "date",
             "boolean", "text")
    casts = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    values = ", ".join(f"u.{c}::jsonb" if c == "attributes" else f"u.{c}" for c in cols)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols[2:])
    await raw.execute(
        f"INSERT INTO audit_items ({', '.join(cols)}) SELECT {values} FROM unnest({casts}) AS u({', '.join(cols)}) "
        f"ON CONFLICT (region, item_id) DO UPDATE SET {sets} "
        "WHERE (CASE WHEN EXCLUDED.dispute_id IS NULL THEN 0 ELSE 1 END, EXCLUDED.verdict_id) > "
        "(CASE WHEN audit_items.dispute_id IS NULL THEN 0 ELSE 1 END, coalesce(audit_items.verdict_id, 0))",
        *[[orjson.dumps(r[c]).decode() if c == "attributes" else r[c] for r in best.values()] for c in cols])


# ------------------------------------------------------------------ approval stage and corrective actions


@dataclass(frozen=True)
class RecordTable:
    """A table of merged records (one row per key): its key columns and every column with its SQL type, in
    the record class's field order (orjson writes a slotted dataclass's fields by name)."""

    name: str
    keys: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    record: type

    @property
    def names(self) -> str:
        return ", ".join(c for c, _ in self.columns)

    @property
    def typed(self) -> str:
        return ", ".join(f"{c} {t}" for c, t in self.columns)


APPROVAL_REQUESTS = RecordTable("approval_requests", ("region", "request_id"), (
    ("region", "text"), ("request_id", "text"), ("request_day", "date"), ("requested_at", "timestamptz"),
    ("reason_code", "text"), ("team", "text"), ("kind", "text"), ("requested_minor", "bigint"),
    ("first_at", "timestamptz"), ("first_event", "text"), ("queued", "boolean"), ("escalated", "boolean"),
    ("outcome", "text"), ("automatic", "boolean"), ("decided_by", "text"), ("decided_at", "timestamptz"),
    ("decision_event", "text"), ("approved_minor", "bigint")), ApprovalRecord)
ISSUE_FLAGS = RecordTable("issue_flags", ("region", "compensation_id"), (
    ("region", "text"), ("compensation_id", "text"), ("flag_day", "date"), ("issued_at", "timestamptz"),
    ("team", "text"), ("reason_code", "text"), ("issued_minor", "bigint"), ("mismatches", "text[]")), FlagRecord)
CORRECTIVE_ACTIONS = RecordTable("corrective_actions", ("region", "action_id"), (
    ("region", "text"), ("action_id", "bigint"), ("opened_day", "date"), ("opened_at", "timestamptz"),
    ("kind", "text"), ("source", "text"), ("target_type", "text"), ("status", "text"), ("due_on", "date"),
    ("updated_at", "timestamptz"), ("state_event", "text"), ("effect_at", "timestamptz"), ("effect_event", "text"),
    ("after_audits", "bigint"), ("difference", "float8"), ("difference_low", "float8"),
    ("difference_high", "float8")), ActionRecord)


def _from_row(table: RecordTable, row: Sequence[Any]) -> Any:
    values = list(row)
    for i, (_, sql_type) in enumerate(table.columns):
        if sql_type.endswith("[]"):
            values[i] = tuple(values[i])
    return table.record(*values)


async def merge_records(conn: AsyncConnection, table: RecordTable, batch: Mapping[tuple[Any, ...], Sequence[Any]],
                        fold: Callable[[tuple[Any, ...], Any, Sequence[Any]], Any],
                        part: Callable[[Deltas, Any, int], None], out: Deltas) -> None:
    """Fold a batch's items into their records: ``fold(key, stored record or None, items) -> record``, and
    add each changed record's new contribution minus its old one (``part``) to ``out``. Stored rows are
    locked in key order; a row another consumer inserted meanwhile fails the batch (LostRace: retried), so
    no merge is ever overwritten by a concurrent one."""
    if not batch:
        return
    raw = await raw_connection(conn)
    keys = sorted(batch)
    key_cols = ", ".join(table.keys)
    types = dict(table.columns)
    unnest = ", ".join(f"${i}::{types[k]}[]" for i, k in enumerate(table.keys, start=1))
    rows = await raw.fetch(
        f"SELECT {table.names} FROM {table.name} WHERE ({key_cols}) IN (SELECT * FROM unnest({unnest})) "
        f"ORDER BY {key_cols} FOR UPDATE", *[[k[i] for k in keys] for i in range(len(table.keys))])
    stored = {tuple(r[c] for c in table.keys): _from_row(table, r) for r in rows}
    fresh, changed = [], []
    for key in keys:
        old = stored.get(key)
        merged = fold(key, old, batch[key])
        if old is None:
            fresh.append(merged)
        elif merged != old:
            changed.append(merged)
            part(out, old, -1)
        else:
            continue
        part(out, merged, 1)
    if fresh:
        inserted = await raw.fetch(
            f"INSERT INTO {table.name} ({table.names}) SELECT {table.names} FROM jsonb_to_recordset($1::jsonb) "
            f"AS x({table.typed}) ON CONFLICT ({key_cols}) DO NOTHING RETURNING 1", orjson.dumps(fresh).decode())
        if len(inserted) != len(fresh):
            raise LostRace(table.name)
    if changed:
        sets = ", ".join(f"{c} = u.{c}" for c, _ in table.columns if c not in table.keys)
        match = " AND ".join(f"t.{k} = u.{k}" for k in table.keys)
        await raw.execute(f"UPDATE {table.name} t SET {sets} FROM jsonb_to_recordset($1::jsonb) AS u({table.typed}) "
                          f"WHERE {match}", orjson.dumps(changed).decode())


async def approvals_period(conn: AsyncConnection, region: str, first: date, last: date) -> ApprovalInputs:
    """The approval stage of the requests raised in the range and the issues flagged in it (local days)."""
    (row,) = await sum_by(conn, APPROVAL_DAILY.name, (), region=region, first=first, last=last)
    sums = dict(zip(APPROVAL_DAILY.measures, (int(v) for v in row), strict=True))
    out = ApprovalInputs(counts={k: sums[k] for k in APPROVAL_COUNTS},
                         decision_bins=[sums[m] for m in APPROVAL_BINS])
    for mismatch, compensations, issued_minor in await sum_by(conn, FLAG_DAILY.name, ("mismatch",), region=region,
                                                             first=first, last=last):
        if mismatch == "":
            out.flagged, out.flagged_minor = int(compensations), int(issued_minor)
        elif compensations:
            out.mismatches[mismatch] = int(compensations)
    return out


async def actions_period(conn: AsyncConnection, region: str, first: date, last: date
                         ) -> list[tuple[str, dict[str, int]]]:
    """Corrective actions opened in the range (local day), per kind, in their current states."""
    per_kind: dict[str, dict[str, int]] = {}
    for kind, status, due_on, actions, measured, improved in await sum_by(
            conn, ACTION_DAILY.name, ("kind", "status", "due_on"), region=region, first=first, last=last):
        if not actions:
            continue
        row = per_kind.setdefault(kind, dict.fromkeys(ACTION_COUNTS, 0))
        row["opened"] += int(actions)
        row[status] += int(actions)
        if status in ("open", "in_progress") and due_on <= last:
            row["open_due_by_period_end"] += int(actions)
        row["measured"] += int(measured)
        row["improved"] += int(improved)
    return sorted(per_kind.items())


# ------------------------------------------------------------------ reads


def _both(table: Table, columns: str, where: str) -> str:
    """Rows of a rollup's base and delta tables (summed by the caller)."""
    return (f"(SELECT {columns} FROM {table.name} WHERE {where} "
            f"UNION ALL SELECT {columns} FROM {table.name}_delta WHERE {where})")


async def sum_by(conn: AsyncConnection, table_name: str, group: Sequence[str], *, region: str, first: date,
                 last: date, filters: dict[str, str] | None = None, day_column: str = "day"
                 ) -> list[tuple[Any, ...]]:
    """Measures of a rollup summed over a local-day range, grouped by ``group`` columns (validated names)."""
    table = BY_NAME[table_name]
    allowed = set(table.key_names)
    for name in [*group, *(filters or {})]:
        if name not in allowed:
            raise ValueError(f"{name} is not a key of {table_name}")
    where = f"region = :region AND {day_column} BETWEEN :first AND :last"
    params: dict[str, Any] = {"region": region, "first": first, "last": last}
    for i, (name, value) in enumerate((filters or {}).items()):
        where += f" AND {name} = :f{i}"
        params[f"f{i}"] = value
    cols = ", ".join([*group, *table.measures])
    grouping = f" GROUP BY {', '.join(group)}" if group else ""
    sums = ", ".join(f"coalesce(sum({m}), 0)::bigint" for m in table.measures)
    select = ", ".join([*group, sums]) if group else sums
    rows = await conn.execute(text(f"SELECT {select} FROM {_both(table, cols, where)} AS x{grouping}"), params)
    return [tuple(r) for r in rows]


async def order_volume(conn: AsyncConnection, region: str, first: date, last: date) -> tuple[int, int, int]:
    """(orders, gmv_minor, days reported) over a range."""
    row = (await conn.execute(text(
        "SELECT coalesce(sum(orders), 0)::bigint, coalesce(sum(gmv_minor), 0)::bigint, count(*) FROM order_volume "
        "WHERE region = :r AND day BETWEEN :a AND :b"), {"r": region, "a": first, "b": last})).one()
    return int(row[0]), int(row[1]), int(row[2])


async def budget_limit(conn: AsyncConnection, region: str, period: str) -> int | None:
    return (await conn.execute(text("SELECT limit_minor FROM budget_limits WHERE region = :r AND period = :p"),
                               {"r": region, "p": period})).scalar()


async def audit_period(conn: AsyncConnection, region: str, first: date, last: date) -> dict[str, Any]:
    """The accuracy estimate's sample: items drawn from the range's manual compensations (by their local
    day): how many, how many evicted, the audited ones as parallel arrays (one row back, not thousands), and
    the inclusion probabilities of those drawn but not audited yet (the estimator's non-response)."""
    row = (await conn.execute(text(
        "SELECT count(*), count(*) FILTER (WHERE evicted), "
        "coalesce(array_agg(compensation_id ORDER BY item_id) FILTER (WHERE audited), '{}'), "
        "coalesce(array_agg(probability ORDER BY item_id) FILTER (WHERE audited), '{}'), "
        "coalesce(array_agg(passed ORDER BY item_id) FILTER (WHERE audited), '{}'), "
        "coalesce(array_agg(misstated_minor ORDER BY item_id) FILTER (WHERE audited), '{}'), "
        "coalesce(array_agg(probability ORDER BY item_id) FILTER (WHERE NOT audited AND NOT evicted "
        "AND probability IS NOT NULL), '{}') "
        "FROM (SELECT *, verdict_id IS NOT NULL AND NOT evicted AS audited FROM audit_items "
        "WHERE region = :r AND sampled AND comp_day BETWEEN :a AND :b) x"),
        {"r": region, "a": first, "b": last})).one()
    return {"sampled": int(row[0]), "evicted": int(row[1]), "ids": list(row[2]), "probabilities": list(row[3]),
            "passed": list(row[4]), "misstated": list(row[5]), "unaudited_probabilities": list(row[6])}


async def audit_work(conn: AsyncConnection, region: str, first: date, last: date) -> AuditWork:
    """The audit team's verdicts given in the range (by local day), counted per auditor in SQL."""
    rows = (await conn.execute(text(
        "SELECT auditor_id, count(*), count(*) FILTER (WHERE within_sla), count(DISTINCT audit_day) "
        "FROM audit_items WHERE region = :r AND verdict_id IS NOT NULL AND audit_day BETWEEN :a AND :b "
        "GROUP BY auditor_id ORDER BY auditor_id"), {"r": region, "a": first, "b": last})).all()
    return AuditWork(per_auditor={r[0]: int(r[1]) for r in rows}, within_sla=sum(int(r[2]) for r in rows),
                     auditor_days=sum(int(r[3]) for r in rows))


# ------------------------------------------------------------------ spike detection

# Where each spike dimension's daily ticket counts are kept: (rollup, key column).
SPIKE_SOURCES = {"reason": ("ticket_daily", "reason"), "carrier": ("ticket_daily", "carrier"),
                 "seller": ("seller_daily", "seller")}


async def spike_candidates(conn: AsyncConnection, region: str, dimension: str, first: date, last: date,
                           min_total: int) -> list[str]:
    """Keys of a dimension with at least ``min_total`` tickets over [first, last] (the volume guard's cheap
    pre-filter: a series below it cannot have a weekday whose expected count passes the guard). The empty
    key (no carrier, no seller) is not a series."""
    table, column = SPIKE_SOURCES[dimension]
    where = f"region = :r AND day BETWEEN :a AND :b AND {column} <> ''"
    rows = await conn.execute(text(
        f"SELECT {column} FROM {_both(BY_NAME[table], f'{column}, tickets', where)} AS x "
        f"GROUP BY {column} HAVING sum(tickets) >= :n ORDER BY {column}"),
        {"r": region, "a": first, "b": last, "n": min_total})
    return [r[0] for r in rows]


async def spike_series(conn: AsyncConnection, region: str, dimension: str, keys: Sequence[str], first: date,
                       last: date) -> dict[str, list[tuple[date, int]]]:
    """key -> (local day, tickets) for the days with tickets, in day order."""
    if not keys:
        return {}
    table, column = SPIKE_SOURCES[dimension]
    where = f"region = :r AND day BETWEEN :a AND :b AND {column} = ANY(CAST(:keys AS text[]))"
    rows = await conn.execute(text(
        f"SELECT {column}, day, sum(tickets)::bigint FROM {_both(BY_NAME[table], f'{column}, day, tickets', where)} "
        f"AS x GROUP BY {column}, day HAVING sum(tickets) > 0 ORDER BY {column}, day"),
        {"r": region, "a": first, "b": last, "keys": list(keys)})
    out: dict[str, list[tuple[date, int]]] = {}
    for key, day, n in rows:
        out.setdefault(key, []).append((day, int(n)))
    return out


async def tickets_by_day_and(conn: AsyncConnection, region: str, dimension: str, key: str, other: str,
                             days: Sequence[date]) -> dict[date, dict[str, int]]:
    """For one reason or carrier series: tickets per value of the ``other`` dimension (carrier or reason)
    on each of ``days`` (a spike's day and its baseline days), from the daily rollup."""
    if dimension not in ("reason", "carrier") or other not in ("reason", "carrier") or other == dimension:
        raise ValueError(f"no breakdown of {dimension} by {other} in ticket_daily")
    where = f"region = :r AND {dimension} = :k AND day = ANY(CAST(:days AS date[]))"
    source = _both(BY_NAME["ticket_daily"], f"day, {other}, tickets", where)
    rows = await conn.execute(text(
        f"SELECT day, {other}, sum(tickets)::bigint FROM {source} AS x GROUP BY day, {other}"),
        {"r": region, "k": key, "days": list(days)})
    out: dict[date, dict[str, int]] = {d: {} for d in days}
    for day, value, n in rows:
        if n:
            out[day][value or NO_VALUE] = int(n)
    return out


async def seller_tickets_by_reason(conn: AsyncConnection, region: str, seller: str, timezone: str,
                                   days: Sequence[date]) -> dict[date, dict[str, int]]:
    """For one seller series: its tickets per reason on each of ``days`` (local), from insights' ticket
    records (the seller rollup keeps no reason). One index range of (region, occurred_at) per day, so only
    those days' tickets of the region are read, not the weeks between them."""
    out: dict[date, dict[str, int]] = {d: {} for d in days}
    if not days:
        return out
    tz = ZoneInfo(timezone)
    params: dict[str, Any] = {"r": region, "s": seller}
    ranges = []
    for i, day in enumerate(days):
        params[f"a{i}"] = datetime.combine(day, time(0), tz)
        params[f"b{i}"] = datetime.combine(day + timedelta(days=1), time(0), tz)
        ranges.append(f"SELECT CAST(:d{i} AS date) AS day, reason FROM tickets WHERE region = :r AND known "
                      f"AND seller_id = :s AND occurred_at >= :a{i} AND occurred_at < :b{i}")
        params[f"d{i}"] = day
    rows = await conn.execute(text(
        f"SELECT day, reason, count(*) FROM ({' UNION ALL '.join(ranges)}) x GROUP BY day, reason"), params)
    for day, reason, n in rows:
        out[day][reason or NO_VALUE] = int(n)
    return out


SPIKE_COLUMNS = ("region", "dimension", "series_key", "bucket_start", "kind", "alert_id", "day", "bucket_end",
                 "observed", "expected", "lower_edge", "upper_edge", "sigma", "z", "cusum", "contributors",
                 "event_id")
_SPIKE_TYPES = ("text", "text", "text", "timestamptz", "text", "text", "date", "timestamptz", "bigint", "float8",
                "float8", "float8", "float8", "float8", "float8", "jsonb", "text")


async def insert_spike_alerts(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Store alerts; an alert already stored (same series, bucket and kind) is left as it is. Returns the
    alert ids this statement inserted: only those are new, and only their events may be published."""
    if not rows:
        return set()
    raw = await raw_connection(conn)
    casts = ", ".join(f"${i}::{'text' if t == 'jsonb' else t}[]" for i, t in enumerate(_SPIKE_TYPES, start=1))
    values = ", ".join(f"u.{c}::jsonb" if c == "contributors" else f"u.{c}" for c in SPIKE_COLUMNS)
    inserted = await raw.fetch(
        f"INSERT INTO spike_alerts ({', '.join(SPIKE_COLUMNS)}) SELECT {values} FROM unnest({casts}) "
        f"AS u({', '.join(SPIKE_COLUMNS)}) ON CONFLICT DO NOTHING RETURNING alert_id",
        *[[orjson.dumps(r[c]).decode() if c == "contributors" else r[c] for r in rows] for c in SPIKE_COLUMNS])
    return {r[0] for r in inserted}


async def spike_alerts(conn: AsyncConnection, region: str, first: date, last: date,
                       dimension: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
    """Stored alerts of a region whose local day lies in [first, last], oldest first."""
    rows = await conn.execute(text(
        f"SELECT {', '.join(SPIKE_COLUMNS)}, detected_at FROM spike_alerts WHERE region = :r "
        "AND day BETWEEN :a AND :b AND (CAST(:d AS text) IS NULL OR dimension = :d) "
        "AND (CAST(:k AS text) IS NULL OR series_key = :k) ORDER BY dimension, series_key, bucket_start, kind"),
        {"r": region, "a": first, "b": last, "d": dimension, "k": key})
    return [dict(r) for r in rows.mappings()]
