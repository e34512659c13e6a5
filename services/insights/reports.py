"""Reports, breakdowns, series and burn-down, read from the rollups (never from events).

Each answer is read in one REPEATABLE READ, read-only transaction, so all its sections come from the same
snapshot (the compactor moving rows from delta to base tables never changes a sum).
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.insights import metrics
from services.insights import persistence as db
from services.insights.domain.burndown import burndown
from services.insights.domain.movers import Measure
from services.insights.domain.periods import Period
from services.insights.domain.report import (
    AuditedItem,
    AuditInputs,
    Sums,
    build_report,
    flatten,
    mean_minor,
    ratio,
)
from services.insights.domain.rollups import (
    COMP_DAILY,
    COMP_DAY,
    COMP_HOURLY,
    DECISION_DAILY,
    FEEDBACK_DAILY,
    SELLER_DAILY,
    TICKET_DAILY,
    TICKET_DAY,
    TICKET_HOURLY,
)
from services.insights.domain.root_causes import explain_change
from services.insights.domain.spike_watch import episodes_view
from shared.regions import Region

# Dimensions of the root-cause breakdown and the series, and where each is kept.
DIMENSIONS = ("reason", "carrier", "seller", "strategy")
SERIES_DIMENSIONS = ("reason", "carrier", "seller")


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        try:
            yield conn
        finally:
            await conn.rollback()


def _month_split(period: Period) -> tuple[list[str], list[tuple[date, date]]]:
    """Whole calendar months inside the period, and the day ranges left over at its ends."""
    months: list[str] = []
    ranges: list[tuple[date, date]] = []
    day = period.first
    while day <= period.last:
        month_end = (date(day.year + day.month // 12, day.month % 12 + 1, 1) - timedelta(days=1))
        if day.day == 1 and month_end <= period.last:
            months.append(f"{day.year:04d}-{day.month:02d}")
            day = month_end + timedelta(days=1)
            continue
        end = min(month_end, period.last)
        ranges.append((day, end))
        day = end + timedelta(days=1)
    return months, ranges


async def read_amounts(conn: AsyncConnection, region: str, period: Period) -> dict[str, list[tuple[int, int]]]:
    """(amount, count) per source over the period: whole months from the monthly amounts, the rest by day."""
    months, ranges = _month_split(period)
    parts: list[str] = []
    params: dict[str, Any] = {"r": region, "months": months}
    for table in ("amount_month", "amount_month_delta"):
        parts.append(f"SELECT source, amount_minor, comps FROM {table} WHERE region = :r "
                     "AND month = ANY(CAST(:months AS text[]))")
    for i, (a, b) in enumerate(ranges):
        params[f"a{i}"], params[f"b{i}"] = a, b
        for table in ("amount_daily", "amount_daily_delta"):
            parts.append(f"SELECT source, amount_minor, comps FROM {table} WHERE region = :r "
                         f"AND day BETWEEN :a{i} AND :b{i}")
    rows = await conn.execute(text(
        f"SELECT source, amount_minor, sum(comps)::bigint FROM ({' UNION ALL '.join(parts)}) x "
        "GROUP BY source, amount_minor"), params)
    amounts: dict[str, list[tuple[int, int]]] = {}
    for source, amount, n in rows:
        if n:
            amounts.setdefault(source, []).append((int(amount), int(n)))
    return amounts


async def read_sums(conn: AsyncConnection, region: str, period: Period) -> Sums:
    a, b = period.first, period.last
    sums = Sums()
    (row,) = await db.sum_by(conn, TICKET_DAY.name, (), region=region, first=a, last=b)
    sums.tickets = dict(zip(TICKET_DAY.measures, (int(v) for v in row), strict=True))
    for row in await db.sum_by(conn, COMP_DAY.name, ("source",), region=region, first=a, last=b):
        sums.comps[row[0]] = dict(zip(COMP_DAY.measures, (int(v) for v in row[1:]), strict=True))
    sums.amounts = await read_amounts(conn, region, period)
    sums.orders, sums.gmv_minor, sums.volume_days = await db.order_volume(conn, region, a, b)
    sums.feedback = [(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5])) for r in await db.sum_by(
        conn, FEEDBACK_DAILY.name, ("reason", "kind", "cohort"), region=region, first=a, last=b)]
    sums.decisions = [(r[0], bool(r[1]), int(r[2]), int(r[3])) for r in await db.sum_by(
        conn, DECISION_DAILY.name, ("outcome", "shadow"), region=region, first=a, last=b)]
    return sums


async def read_audit(conn: AsyncConnection, region: str, period: Period) -> AuditInputs:
    sample = await db.audit_period(conn, region, period.first, period.last)
    audit = AuditInputs(sampled=sample["sampled"], evicted=sample["evicted"],
                        unaudited_probabilities=[float(p) for p in sample["unaudited_probabilities"]])
    audit.audited = [AuditedItem(cid, float(p), bool(ok), int(m or 0))
                     for cid, p, ok, m in zip(sample["ids"], sample["probabilities"], sample["passed"],
                                              sample["misstated"], strict=True)]
    audit.work = await db.audit_work(conn, region, period.first, period.last)
    return audit


async def report(engine: AsyncEngine, region: Region, period: Period) -> dict[str, Any]:
    started = time.perf_counter()
    async with snapshot(engine) as conn:
        sums = await read_sums(conn, region.code, period)
        audit = await read_audit(conn, region.code, period)
        approvals = await db.approvals_period(conn, region.code, period.first, period.last)
        actions = await db.actions_period(conn, region.code, period.first, period.last)
    result = build_report(region=region.code, currency=region.currency, exponent=region.exponent,
                          timezone=region.timezone, period=period, sums=sums, audit=audit, approvals=approvals,
                          actions=actions)
    result["generated_at"] = datetime.now(UTC).isoformat()
    metrics.REPORT_SECONDS.labels("report").observe(time.perf_counter() - started)
    return result


def report_csv(result: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["region", "currency", "period", "from", "to", "metric", "value"])
    p = result["period"]
    for metric, value in flatten(result):
        if metric == "generated_at":
            continue
        writer.writerow([result["region"], result["currency"], p["label"], p["from"], p["to"], metric, value])
    return out.getvalue()


# ------------------------------------------------------------------ root causes


async def _dimension_rows(conn: AsyncConnection, region: str, dimension: str, period: Period
                          ) -> dict[str, dict[str, int]]:
    """key -> tickets, compensated, comps, amount_minor for one dimension over a period."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"tickets": 0, "compensated": 0, "comps": 0,
                                                          "amount_minor": 0})
    a, b = period.first, period.last
    if dimension == "seller":
        for key, tickets, compensated, comps, amount in await db.sum_by(
                conn, SELLER_DAILY.name, ("seller",), region=region, first=a, last=b):
            out[key].update(tickets=int(tickets), compensated=int(compensated), comps=int(comps),
                            amount_minor=int(amount))
        return dict(out)
    if dimension in ("reason", "carrier"):
        t_idx = TICKET_DAILY.measures.index
        for row in await db.sum_by(conn, TICKET_DAILY.name, (dimension,), region=region, first=a, last=b):
            out[row[0]]["tickets"] = int(row[1 + t_idx("tickets")])
            out[row[0]]["compensated"] = int(row[1 + t_idx("compensated")])
    column = "strategy" if dimension == "strategy" else dimension
    c_idx = COMP_DAILY.measures.index
    for row in await db.sum_by(conn, COMP_DAILY.name, (column,), region=region, first=a, last=b):
        if dimension == "strategy" and row[0] == "":
            continue  # manual compensations have no strategy
        out[row[0]]["comps"] = int(row[1 + c_idx("comps")])
        out[row[0]]["amount_minor"] = int(row[1 + c_idx("amount_minor")])
    if dimension == "strategy":
        d_idx = DECISION_DAILY.measures.index
        for row in await db.sum_by(conn, DECISION_DAILY.name, ("strategy", "shadow"), region=region, first=a,
                                   last=b):
            if row[0] and not row[1]:
                out[row[0]]["tickets"] += int(row[2 + d_idx("decisions")])  # tickets the strategy decided
        for values in out.values():
            values["compensated"] = values["comps"]
    return dict(out)


async def breakdown(engine: AsyncEngine, region: Region, dimension: str, period: Period, limit: int
                    ) -> dict[str, Any]:
    """Per key of a dimension, the period and the previous one: tickets, compensated tickets, rate,
    compensations and amount, with the change. The seam for top movers and their mix/rate split."""
    started = time.perf_counter()
    previous = period.previous()
    async with snapshot(engine) as conn:
        now_rows = await _dimension_rows(conn, region.code, dimension, period)
        prev_rows = await _dimension_rows(conn, region.code, dimension, previous)
    empty = {"tickets": 0, "compensated": 0, "comps": 0, "amount_minor": 0}
    rows: list[dict[str, Any]] = []
    for key in set(now_rows) | set(prev_rows):
        cur, old = now_rows.get(key, empty), prev_rows.get(key, empty)

        def block(v: dict[str, int]) -> dict[str, Any]:
            return {**v, "compensation_rate": ratio(v["compensated"], v["tickets"]),
                    "mean_amount_minor": mean_minor(v["amount_minor"], v["comps"])}

        rows.append({"key": key, "current": block(cur), "previous": block(old),
                     "change": {k: cur[k] - old[k] for k in empty}})
    rows.sort(key=lambda r: (-abs(r["change"]["amount_minor"]), -r["current"]["tickets"], r["key"]))
    total = {k: sum(v[k] for v in now_rows.values()) for k in empty}
    total_prev = {k: sum(v[k] for v in prev_rows.values()) for k in empty}
    metrics.REPORT_SECONDS.labels("breakdown").observe(time.perf_counter() - started)
    return {"region": region.code, "currency": region.currency, "dimension": dimension,
            "period": {"label": period.label, "from": period.first.isoformat(), "to": period.last.isoformat()},
            "previous_period": {"label": previous.label, "from": previous.first.isoformat(),
                                "to": previous.last.isoformat()},
            "total": total, "previous_total": total_prev, "keys": len(rows), "rows": rows[:limit]}


async def root_causes(engine: AsyncEngine, region: Region, dimension: str, period: Period, *, top: int = 5,
                      measure: Measure = Measure.COUNT) -> dict[str, Any]:
    """Top movers of a dimension against the previous period (each with its share of the total change) and
    the change of the compensation rate and of the cost per ticket split exactly into mix and rate effects
    per dimension value (Kitagawa; ``domain/movers.py``). Read in one snapshot, like every report."""
    started = time.perf_counter()
    previous = period.previous()
    async with snapshot(engine) as conn:
        now_rows = await _dimension_rows(conn, region.code, dimension, period)
        prev_rows = await _dimension_rows(conn, region.code, dimension, previous)
    result = explain_change(prev_rows, now_rows, top=top, measure=measure)
    metrics.REPORT_SECONDS.labels("root_causes").observe(time.perf_counter() - started)
    return {"region": region.code, "currency": region.currency, "exponent": region.exponent,
            "dimension": dimension,
            "period": {"label": period.label, "from": period.first.isoformat(), "to": period.last.isoformat()},
            "previous_period": {"label": previous.label, "from": previous.first.isoformat(),
                                "to": previous.last.isoformat()},
            **result, "generated_at": datetime.now(UTC).isoformat()}


ROOT_CAUSE_CSV_COLUMNS = (
    "region", "currency", "dimension", "period", "previous_period", "section", "key", "presence",
    "previous_tickets", "current_tickets", "ticket_change", "previous_amount_minor", "current_amount_minor",
    "amount_change_minor", "ticket_contribution", "amount_contribution", "previous_ratio", "current_ratio",
    "mix", "rate", "total", "mix_exact", "rate_exact", "total_exact")


def root_causes_csv(result: dict[str, Any]) -> str:
    """One row per mover (section ``mover``, then ``others`` and ``total``) and per segment of each ratio's
    decomposition (section = the ratio's name, then its ``<ratio>:total`` row); empty cells where a column
    does not apply. Exact fractions beside the rounded decimals, so the parts can be checked to sum."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ROOT_CAUSE_CSV_COLUMNS)
    head = [result["region"], result["currency"], result["dimension"], result["period"]["label"],
            result["previous_period"]["label"]]

    def row(section: str, cells: dict[str, Any]) -> None:
        writer.writerow([*head, section, *("" if cells.get(c) is None else cells[c]
                                          for c in ROOT_CAUSE_CSV_COLUMNS[6:])])

    movers = result["movers"]
    for m in movers["top"]:
        row("mover", _mover_cells(m))
    if movers["others"] is not None:
        row("others", {"key": f"({movers['others']['values']} others)", **_mover_cells(movers["others"])})
    row("total", {"previous_tickets": movers["previous_total"]["tickets"],
                  "current_tickets": movers["current_total"]["tickets"], "ticket_change": movers["ticket_change"],
                  "previous_amount_minor": movers["previous_total"]["amount_minor"],
                  "current_amount_minor": movers["current_total"]["amount_minor"],
                  "amount_change_minor": movers["amount_change_minor"]})
    for name, d in result["ratios"].items():
        if "undefined" in d:
            row(name, {"key": "(undefined)", "presence": d["undefined"]})
            continue
        for seg in d["segments"]:
            row(name, {"key": seg["key"], "presence": seg["presence"],
                       "previous_tickets": seg["previous"]["denominator"],
                       "current_tickets": seg["current"]["denominator"],
                       "previous_ratio": seg["previous_ratio"], "current_ratio": seg["current_ratio"],
                       "mix": seg["mix"], "rate": seg["rate"], "total": seg["total"],
                       "mix_exact": seg["exact"]["mix"], "rate_exact": seg["exact"]["rate"],
                       "total_exact": seg["exact"]["total"]})
        row(f"{name}:total", {"previous_ratio": d["previous"], "current_ratio": d["current"], "mix": d["mix"],
                              "rate": d["rate"], "total": d["change"], "mix_exact": d["exact"]["mix"],
                              "rate_exact": d["exact"]["rate"], "total_exact": d["exact"]["change"]})
    return out.getvalue()


def _mover_cells(m: dict[str, Any]) -> dict[str, Any]:
    return {"key": m.get("key"), "presence": m.get("presence"), "previous_tickets": m["previous"]["tickets"],
            "current_tickets": m["current"]["tickets"], "ticket_change": m["ticket_change"],
            "previous_amount_minor": m["previous"]["amount_minor"],
            "current_amount_minor": m["current"]["amount_minor"], "amount_change_minor": m["amount_change_minor"],
            "ticket_contribution": m["ticket_contribution"], "amount_contribution": m["amount_contribution"]}


# ------------------------------------------------------------------ series (spike detection's input)


async def series(engine: AsyncEngine, region: Region, dimension: str, granularity: str, period: Period,
                 key: str | None) -> dict[str, Any]:
    """Count series per (region, dimension key): tickets and compensated tickets (compensations for
    sellers' comps too) per local day or local hour. The input of spike detection."""
    started = time.perf_counter()
    points: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    async with snapshot(engine) as conn:
        if dimension == "seller":
            if granularity == "hour":
                raise ValueError("sellers are kept per day")
            rows = await conn.execute(text(
                "SELECT seller, day, sum(tickets)::bigint, sum(compensated)::bigint, sum(comps)::bigint, "
                "sum(amount_minor)::bigint FROM (SELECT * FROM seller_daily WHERE region = :r AND day BETWEEN :a "
                "AND :b AND (CAST(:k AS text) IS NULL OR seller = :k) UNION ALL SELECT * FROM seller_daily_delta "
                "WHERE region = :r AND day BETWEEN :a AND :b AND (CAST(:k AS text) IS NULL OR seller = :k)) x "
                "GROUP BY seller, day"), {"r": region.code, "a": period.first, "b": period.last, "k": key})
            for seller, day, tickets, compensated, comps, amount in rows:
                points[seller][day.isoformat()] = {"tickets": int(tickets), "compensated": int(compensated),
                                                   "comps": int(comps), "amount_minor": int(amount)}
        else:
            table = TICKET_HOURLY if granularity == "hour" else TICKET_DAILY
            group = (dimension, "day", "hour") if granularity == "hour" else (dimension, "day")
            filters = {dimension: key} if key is not None else None
            t_idx = table.measures.index
            for row in await db.sum_by(conn, table.name, group, region=region.code, first=period.first,
                                       last=period.last, filters=filters):
                slot = row[1].isoformat() + (f"T{int(row[2]):02d}" if granularity == "hour" else "")
                base = len(group)
                points[row[0]][slot] = {"tickets": int(row[base + t_idx("tickets")]),
                                        "compensated": int(row[base + t_idx("compensated")])}
            ctable = COMP_HOURLY if granularity == "hour" else COMP_DAILY
            c_idx = ctable.measures.index
            for row in await db.sum_by(conn, ctable.name, group, region=region.code, first=period.first,
                                       last=period.last, filters=filters):
                slot = row[1].isoformat() + (f"T{int(row[2]):02d}" if granularity == "hour" else "")
                base = len(group)
                cell = points[row[0]].setdefault(slot, {"tickets": 0, "compensated": 0})
                cell["comps"] = cell.get("comps", 0) + int(row[base + c_idx("comps")])
                cell["amount_minor"] = cell.get("amount_minor", 0) + int(row[base + c_idx("amount_minor")])
    metrics.REPORT_SECONDS.labels("series").observe(time.perf_counter() - started)
    return {"region": region.code, "dimension": dimension, "granularity": granularity,
            "timezone": region.timezone, "from": period.first.isoformat(), "to": period.last.isoformat(),
            "series": [{"key": k, "points": [{"slot": s, **v} for s, v in sorted(pts.items())]}
                       for k, pts in sorted(points.items())]}


# ------------------------------------------------------------------ spikes (stored by spikes_job)


async def spikes(engine: AsyncEngine, region: Region, now: datetime, *, days: int = 28, dimension: str | None = None,
                 key: str | None = None, open_only: bool = False) -> dict[str, Any]:
    """The region's stored spike alerts of the last ``days`` complete local days, merged into episodes
    (newest first), each with its alerts' expected value, band and top contributors."""
    started = time.perf_counter()
    today = region.local(now).date()
    first = today - timedelta(days=days)
    async with snapshot(engine) as conn:
        rows = await db.spike_alerts(conn, region.code, first, today - timedelta(days=1), dimension, key)
    episodes = episodes_view(rows, region.timezone, today, open_only=open_only)
    metrics.REPORT_SECONDS.labels("spikes").observe(time.perf_counter() - started)
    return {"region": region.code, "timezone": region.timezone, "from": first.isoformat(),
            "to": (today - timedelta(days=1)).isoformat(), "status": "open" if open_only else "recent",
            "open_episodes": sum(1 for e in episodes if e["open"]), "episodes": episodes}


SPIKE_CSV_COLUMNS = ("region", "dimension", "key", "episode_first_day", "episode_last_day", "open", "day", "kind",
                     "observed", "expected", "lower", "upper", "z", "contributors", "alert_id")


def spikes_csv(result: dict[str, Any]) -> str:
    """One row per alert, with its episode; contributors as ``key:observed/expected`` joined by ``;``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SPIKE_CSV_COLUMNS)
    for e in result["episodes"]:
        for a in e["alerts"]:
            contributors = ";".join(f"{c['key']}:{c['observed']}/{c['expected']:.3f}" for c in a["contributors"])
            writer.writerow([result["region"], e["dimension"], e["key"], e["first_day"], e["last_day"],
                             "true" if e["open"] else "false", a["day"], a["kind"], a["observed"], a["expected"],
                             a["lower"], a["upper"], a["z"], contributors, a["alert_id"]])
    return out.getvalue()


# ------------------------------------------------------------------ burn-down


async def budget_burndown(engine: AsyncEngine, region: Region, period: Period, today: date) -> dict[str, Any]:
    started = time.perf_counter()
    async with snapshot(engine) as conn:
        limit = await db.budget_limit(conn, region.code, period.label)
        rows = await conn.execute(text(
            "SELECT day, source, sum(committed_minor)::bigint, sum(released_minor)::bigint FROM ("
            "SELECT day, source, committed_minor, released_minor FROM budget_daily WHERE region = :r AND period = :p "
            "UNION ALL SELECT day, source, committed_minor, released_minor FROM budget_daily_delta "
            "WHERE region = :r AND period = :p) x GROUP BY day, source"), {"r": region.code, "p": period.label})
        daily: dict[date, dict[str, tuple[int, int]]] = defaultdict(dict)
        late: Sequence[Any] = []
        for day, source, committed, released in rows:
            if period.first <= day <= period.last:
                daily[day][source] = (int(committed), int(released))
            else:
                late = [*late, (day, source, int(committed), int(released))]
    result = burndown(region=region.code, currency=region.currency, period=period, limit_minor=limit, daily=daily,
                      today=today)
    # Releases after the period ended (a voucher of this period redeemed or expired next month) still lower
    # the period's final usage, as in the ledger.
    released_after = sum(r for _, _, _, r in late)
    result["released_after_period_minor"] = released_after
    result["final_used_minor"] = (result["days"][-1]["used_minor"] - released_after) if result["days"] else 0
    metrics.REPORT_SECONDS.labels("burndown").observe(time.perf_counter() - started)
    return result
