"""What each dashboard page shows, assembled from the service's own report code (``services.insights.reports``
over the rollups: the same numbers as the JSON API and the CLI) and turned into tiles, tables and charts."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from typing import Any

from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import reports
from services.insights.domain.periods import Period
from services.insights.domain.report import build_report
from services.insights.web import charts
from services.insights.web import format as fmt
from services.insights.web.metrics import PAGE_SECONDS
from services.insights.web.spikes import SpikeMark, spike_marks
from shared.regions import Region

TOP_SPARKLINES = 10  # keys of a breakdown that get their daily series drawn
BREAKDOWN_ROWS = 25


def periods_back(period: Period, n: int) -> list[Period]:
    """The period and the n-1 before it (same kind, or same length for a custom range), oldest first."""
    out = [period]
    while len(out) < n:
        out.append(out[-1].previous())
    return out[::-1]


def short_label(period: Period) -> str:
    if period.kind == "custom":
        return f"{period.first:%d %b}-{period.last:%d %b}"
    return period.label


def _day_label(day: date) -> str:
    return f"{day:%d %b}"


@dataclass(frozen=True)
class Tile:
    id: str
    label: str
    value: str
    note: str = ""


def _spike_notes(spikes: list[SpikeMark], days: list[date]) -> dict[int, str]:
    index = {d: i for i, d in enumerate(days)}
    notes: dict[int, list[str]] = defaultdict(list)
    for s in spikes:
        if s.day in index:
            notes[index[s.day]].append(s.note)
    return {i: "; ".join(n) for i, n in notes.items()}


async def overview(engine: AsyncEngine, region: Region, period: Period, trend_periods: int, today: date
                   ) -> dict[str, Any]:
    started = time.perf_counter()
    cur = region.currency
    periods = periods_back(period, trend_periods)
    results: list[dict[str, Any]] = []
    async with reports.snapshot(engine) as conn:
        for p in periods:
            sums = await reports.read_sums(conn, region.code, p)
            audit = await reports.read_audit(conn, region.code, p)
            results.append(build_report(region=region.code, currency=cur, exponent=region.exponent,
                                        timezone=region.timezone, period=p, sums=sums, audit=audit))
        spikes = await spike_marks(conn, region.code, period.first, period.last)
    daily = await reports.series(engine, region, "reason", "day", period, None)
    now, before = results[-1], (results[-2] if len(results) > 1 else None)

    # Tickets and compensated tickets per local day of the period, summed over reasons.
    days = period.day_list()
    tickets: dict[str, int] = defaultdict(int)
    compensated: dict[str, int] = defaultdict(int)
    for s in daily["series"]:
        for point in s["points"]:
            tickets[point["slot"]] += point["tickets"]
            compensated[point["slot"]] += point["compensated"]
    future = [d > today for d in days]
    volume_chart = charts.bar_chart(
        [_day_label(d) for d in days],
        [charts.Series("tickets", [None if f else tickets.get(d.isoformat(), 0) for d, f in zip(days, future,
                                                                                             strict=True)], "s2"),
         charts.Series("compensated", [None if f else compensated.get(d.isoformat(), 0)
                                       for d, f in zip(days, future, strict=True)], "s1")],
        title=f"Tickets and compensated tickets per day, {region.code} {period.label}", fmt=lambda v: f"{v:,.0f}",
        marks=_spike_notes(spikes, days), empty="no tickets in this period")

    labels = [short_label(p) for p in periods]

    def pick(path: str) -> list[Any]:
        out = []
        for r in results:
            value: Any = r
            for part in path.split("."):
                value = None if value is None else value.get(part)
            out.append(value)
        return out

    rate_chart = charts.line_chart(labels, [charts.Series("compensation rate", pick("volume.compensation_rate"))],
                                   title="Compensation rate (compensated tickets / tickets)",
                                   fmt=lambda v: fmt.pct(v), y_min=0.0)
    cost_chart = charts.bar_chart(
        labels, [charts.Series("cost", pick("compensations.amount_minor"), "s1")],
        title=f"Cost (compensation amount, {cur})", fmt=lambda v: fmt.money_short(v, cur))
    auto_chart = charts.line_chart(
        labels, [charts.Series("by count", pick("compensations.auto.share_of_count"), "s1"),
                 charts.Series("by amount", pick("compensations.auto.share_of_amount"), "s3", dashed=True)],
        title="Auto share of compensations", fmt=lambda v: fmt.pct(v), y_min=0.0, y_max=1.0)
    ci = pick("accuracy.ci95")
    accuracy_chart = charts.line_chart(
        labels, [charts.Series("accuracy", pick("accuracy.estimate"), "s1",
                               lows=[c[0] if c else None for c in ci], highs=[c[1] if c else None for c in ci])],
        title="Estimated accuracy of manual compensations, with 95% intervals", fmt=lambda v: fmt.pct(v),
        y_max=1.0, empty="no audits in these periods")
    def hours(path: str) -> list[float | None]:
        return [None if s is None else s / 3600 for s in pick(path)]

    ttc_chart = charts.line_chart(
        labels, [charts.Series("auto p50", hours("compensations.auto.time_to_compensate.p50_seconds"), "s1"),
                 charts.Series("manual p50", hours("compensations.manual.time_to_compensate.p50_seconds"), "s2"),
                 charts.Series("manual p90", hours("compensations.manual.time_to_compensate.p90_seconds"), "s2",
                               dashed=True)],
        title="Time to compensate in hours (ticket occurred to compensation issued)",
        fmt=lambda h: f"{h:g} h", y_min=0.0,
        empty="no compensation with a known ticket")

    v, c, a = now["volume"], now["compensations"], now["accuracy"]
    accuracy_note = (f"95% CI {fmt.pct(a['ci95'][0])} to {fmt.pct(a['ci95'][1])}; {a['audited']} audited of "
                     f"{a['sampled']} sampled" if a["ci95"] else "no audited sample in this period")
    ttc = c["time_to_compensate"]

    def change(path: str, kind: str) -> str:
        if before is None:
            return ""
        old: Any = before
        new: Any = now
        for part in path.split("."):
            old, new = old.get(part), new.get(part)
        if old is None or new is None:
            return ""
        if kind == "pct":
            return f"{(new - old) * 100:+.1f} pt vs {short_label(periods[-2])}"
        if kind == "money":
            return f"{'+' if new >= old else '-'}{fmt.money(abs(new - old), cur)} vs {short_label(periods[-2])}"
        return f"{new - old:+,} vs {short_label(periods[-2])}"

    tiles = [
        Tile("tickets", "Tickets", fmt.count(v["tickets"]), change("volume.tickets", "count")),
        Tile("compensated", "Compensated tickets", fmt.count(v["compensated_tickets"]),
             change("volume.compensated_tickets", "count")),
        Tile("rate", "Compensation rate", fmt.pct(v["compensation_rate"]),
             change("volume.compensation_rate", "pct")),
        Tile("cost", "Cost", fmt.money(c["amount_minor"], cur), change("compensations.amount_minor", "money")),
        Tile("cost-per-ticket", "Cost per ticket", fmt.money(c["cost_per_ticket_minor"], cur)),
        Tile("auto-share", "Auto share (count / amount)",
             f"{fmt.pct(c['auto']['share_of_count'])} / {fmt.pct(c['auto']['share_of_amount'])}"),
        Tile("accuracy", "Accuracy (manual)", fmt.pct(a["estimate"]), accuracy_note),
        Tile("ttc", "Time to compensate p50 / p90", f"{fmt.duration(ttc['p50_seconds'])} / "
             f"{fmt.duration(ttc['p90_seconds'])}", f"{ttc['count']:,} with a known ticket"),
    ]
    trend_rows = [{"label": short_label(p), "tickets": fmt.count(r["volume"]["tickets"]),
                   "rate": fmt.pct(r["volume"]["compensation_rate"]),
                   "cost": fmt.money(r["compensations"]["amount_minor"], cur),
                   "auto": fmt.pct(r["compensations"]["auto"]["share_of_count"]),
                   "accuracy": fmt.pct(r["accuracy"]["estimate"]) + (
                       f" ({fmt.pct(r['accuracy']['ci95'][0])} to {fmt.pct(r['accuracy']['ci95'][1])})"
                       if r["accuracy"]["ci95"] else ""),
                   "ttc": fmt.duration(r["compensations"]["time_to_compensate"]["p50_seconds"])}
                  for p, r in zip(periods, results, strict=True)]
    PAGE_SECONDS.labels("overview").observe(time.perf_counter() - started)
    return {"tiles": tiles, "report": now, "trend_rows": trend_rows, "spikes": spikes,
            "charts": {"volume": volume_chart, "rate": rate_chart, "cost": cost_chart, "auto": auto_chart,
                       "accuracy": accuracy_chart, "ttc": ttc_chart}}


async def root_causes(engine: AsyncEngine, region: Region, dimension: str, period: Period) -> dict[str, Any]:
    started = time.perf_counter()
    cur = region.currency
    result = await reports.breakdown(engine, region, dimension, period, BREAKDOWN_ROWS)
    with_series = dimension in reports.SERIES_DIMENSIONS
    async with reports.snapshot(engine) as conn:
        spikes = await spike_marks(conn, region.code, period.first, period.last,
                                   dimension) if with_series else []
    days = period.day_list()
    by_key: dict[str, list[SpikeMark]] = defaultdict(list)
    for s in spikes:
        by_key[s.key].append(s)
    total_amount = result["total"]["amount_minor"]
    rows = []
    for i, r in enumerate(result["rows"]):
        now, old, delta = r["current"], r["previous"], r["change"]
        spark: Markup | None = None
        if with_series and i < TOP_SPARKLINES:
            series = await reports.series(engine, region, dimension, "day", period, r["key"])
            counts = {p["slot"]: p["tickets"] for s in series["series"] for p in s["points"]}
            spark = charts.sparkline([counts.get(d.isoformat(), 0) for d in days],
                                     title=f"tickets per day, {r['key']}", marks=_spike_notes(by_key[r["key"]], days))
        rows.append({
            "key": r["key"], "tickets": fmt.count(now["tickets"]), "tickets_prev": fmt.count(old["tickets"]),
            "tickets_change": f"{delta['tickets']:+,}",
            "rate": fmt.pct(now["compensation_rate"]), "rate_prev": fmt.pct(old["compensation_rate"]),
            "comps": fmt.count(now["comps"]), "amount": fmt.money(now["amount_minor"], cur),
            "amount_change": ("+" if delta["amount_minor"] >= 0 else "-") + fmt.money(abs(delta["amount_minor"]), cur),
            "amount_share": fmt.pct(None if not total_amount else now["amount_minor"] / total_amount),
            "spikes": len(by_key.get(r["key"], [])), "spark": spark})
    chart = charts.hbar_chart(
        [(r["key"], float(r["current"]["amount_minor"]), float(r["previous"]["amount_minor"]))
         for r in result["rows"][:15]],
        title=f"Compensation amount by {dimension} ({cur}); the tick is the previous period",
        fmt=lambda v: fmt.money_short(v, cur))
    PAGE_SECONDS.labels("root_causes").observe(time.perf_counter() - started)
    return {"breakdown": result, "rows": rows, "chart": chart, "spikes": spikes, "with_series": with_series,
            "total": {"tickets": fmt.count(result["total"]["tickets"]),
                      "amount": fmt.money(result["total"]["amount_minor"], cur),
                      "tickets_prev": fmt.count(result["previous_total"]["tickets"]),
                      "amount_prev": fmt.money(result["previous_total"]["amount_minor"], cur)}}


async def budget(engine: AsyncEngine, region: Region, period: Period, today: date) -> dict[str, Any]:
    started = time.perf_counter()
    cur = region.currency
    b = await reports.budget_burndown(engine, region, period, today)
    days = b["days"]
    chart = charts.burndown_chart(
        [d["day"][8:10] for d in days], [None if d["future"] else d["used_minor"] for d in days],
        pace=None if b["limit_minor"] is None else [d["pace_minor"] for d in days], limit=b["limit_minor"],
        projected_end=b["projected_end_minor"], title=f"Budget burn-down, {region.code} {period.label} ({cur})",
        fmt=lambda v: fmt.money_short(v, cur))
    limit, used = b["limit_minor"], b["used_minor"]
    ahead = b["ahead_of_pace_minor"]
    tiles = [
        Tile("limit", "Budget limit", fmt.money(limit, cur) if limit is not None else "no limit known"),
        Tile("used", "Used to date", fmt.money(used, cur),
             f"{fmt.pct(used / limit)} of the limit" if limit else ""),
        Tile("remaining", "Remaining", fmt.money(None if limit is None else limit - used, cur)),
        Tile("pace", "Against pace", fmt.DASH if ahead is None else (
            ("ahead by " if ahead > 0 else "behind by ") + fmt.money(abs(ahead), cur)),
            "usage above the even spread of the limit" if ahead and ahead > 0 else ""),
        Tile("projection", "Projected at month end", fmt.money(b["projected_end_minor"], cur),
             "over the limit" if b["projected_over_limit"] else ("within the limit"
                                                                 if b["projected_over_limit"] is False else "")),
        Tile("exhaustion", "Limit reached at this pace", b["projected_exhaustion_day"] or fmt.DASH,
             "before the month ends" if b["exhausts_before_period_end"] else (
                 "after the month ends" if b["exhausts_before_period_end"] is False else "")),
    ]
    table = [{"day": d["day"], "committed": fmt.money(d["committed_minor"], cur),
              "auto": fmt.money(d["committed_auto_minor"], cur), "manual": fmt.money(d["committed_manual_minor"], cur),
              "released": fmt.money(d["released_minor"], cur), "used": fmt.money(d["used_minor"], cur),
              "pace": fmt.money(d["pace_minor"], cur), "future": d["future"]} for d in days]
    PAGE_SECONDS.labels("budget").observe(time.perf_counter() - started)
    return {"burndown": b, "chart": chart, "tiles": tiles, "days": table,
            "over": bool(b["projected_over_limit"]), "exhausts": bool(b["exhausts_before_period_end"]),
            "released_after": fmt.money(b["released_after_period_minor"], cur)}
