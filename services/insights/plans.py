"""Budget plan (issue 15 part 3): the rollups read into the forecast, and its answer as JSON and CSV.

Reads, in one snapshot: tickets per local day and reason (``ticket_daily``), compensated amounts per local
day, reason, source and strategy (``comp_daily``, by the ticket's day), and the live strategies' decisions
(``decision_daily``) to know which strategies are active now and since when their current versions decide.
The model itself is ``domain/budget_plan.py``.
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.insights import metrics
from services.insights.domain.budget_plan import (
    BACKTEST_MONTHS,
    COST_DAYS,
    LEVEL,
    MEASURES,
    CostPerTicket,
    Planner,
    ScenarioDay,
    add_months,
    band,
    forecast,
    month_of,
    to_minor,
)
from services.insights.domain.periods import Period
from services.insights.reports import snapshot
from shared.regions import Region

HISTORY_DAYS = 3 * 365 + 1  # two years of errors and backtest, each forecast with a year of month factors
ACTIVE_DAYS = 28  # a live strategy with a decision in the last 4 weeks is active now
MIN_COST_DAYS = 7
MAX_AHEAD_MONTHS = 12


class PlanError(ValueError):
    """A period that cannot be planned; ``field`` names the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _both(table: str, columns: str, where: str) -> str:
    return (f"(SELECT {columns} FROM {table} WHERE {where} UNION ALL "
            f"SELECT {columns} FROM {table}_delta WHERE {where})")


async def read_history(conn: AsyncConnection, region: str, first: date, last: date
                       ) -> dict[date, dict[str, ScenarioDay]]:
    where = "region = :r AND day BETWEEN :a AND :b"
    params = {"r": region, "a": first, "b": last}
    tickets = await conn.execute(text(
        f"SELECT day, reason, sum(tickets)::bigint FROM {_both('ticket_daily', 'day, reason, tickets', where)} x "
        "GROUP BY day, reason"), params)
    acc: dict[date, dict[str, list[int]]] = defaultdict(dict)
    for day, reason, n in tickets:
        acc[day].setdefault(reason, [0, 0, 0])[0] += int(n)
    amounts = await conn.execute(text(
        f"SELECT day, reason, source, sum(amount_minor)::bigint FROM "
        f"{_both('comp_daily', 'day, reason, source, amount_minor', where)} x GROUP BY day, reason, source"), params)
    for day, reason, source, amount in amounts:
        acc[day].setdefault(reason, [0, 0, 0])[1 if source == "auto" else 2] += int(amount)
    return {d: {s: ScenarioDay(*v) for s, v in by.items()} for d, by in acc.items()}


async def active_strategies(conn: AsyncConnection, region: str, last: date) -> list[dict[str, Any]]:
    """Live (not shadow) strategies with a decision in the ``ACTIVE_DAYS`` up to ``last``: their current
    version, the first local day it decided, and its decisions and issued amount since."""
    where = "region = :r AND NOT shadow AND strategy <> '' AND day BETWEEN :a AND :b"
    rows = await conn.execute(text(
        "SELECT strategy, strategy_version, min(day), sum(decisions)::bigint, "
        "sum(decisions) FILTER (WHERE outcome = 'issued')::bigint, "
        "sum(amount_minor) FILTER (WHERE outcome = 'issued')::bigint FROM "
        f"{_both('decision_daily', 'strategy, strategy_version, day, outcome, decisions, amount_minor', where)} x "
        "GROUP BY strategy, strategy_version HAVING sum(decisions) > 0"),
        {"r": region, "a": last - timedelta(days=HISTORY_DAYS), "b": last})
    by_strategy: dict[str, list[tuple[int, date, int, int, int]]] = defaultdict(list)
    for strategy, version, since, decisions, issued, amount in rows:
        by_strategy[strategy].append((int(version), since, int(decisions), int(issued or 0), int(amount or 0)))
    recent = await conn.execute(text(
        f"SELECT DISTINCT strategy FROM {_both('decision_daily', 'strategy, decisions', where)} x "
        "WHERE decisions > 0"), {"r": region, "a": last - timedelta(days=ACTIVE_DAYS - 1), "b": last})
    active = {r[0] for r in recent}
    out = []
    for strategy in sorted(active):
        version, since, decisions, issued, amount = max(by_strategy[strategy])
        out.append({"strategy": strategy, "version": version, "since": since, "decisions": decisions,
                    "issued": issued, "issued_minor": amount})
    return out


async def active_cost(conn: AsyncConnection, region: str, first: date, last: date, strategies: list[str]
                      ) -> dict[str, CostPerTicket]:
    """Cost per ticket per scenario over [first, last]: automatic amounts of the active strategies only,
    manual amounts, over every ticket of the scenario."""
    where = "region = :r AND day BETWEEN :a AND :b"
    params = {"r": region, "a": first, "b": last}
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for reason, n in await conn.execute(text(
            f"SELECT reason, sum(tickets)::bigint FROM {_both('ticket_daily', 'reason, tickets', where)} x "
            "GROUP BY reason"), params):
        acc[reason][0] += int(n)
    for reason, source, strategy, amount in await conn.execute(text(
            "SELECT reason, source, strategy, sum(amount_minor)::bigint FROM "
            f"{_both('comp_daily', 'reason, source, strategy, amount_minor', where)} x "
            "GROUP BY reason, source, strategy"), params):
        if source == "manual":
            acc[reason][2] += int(amount)
        elif strategy in strategies:
            acc[reason][1] += int(amount)
    return {s: CostPerTicket(*v) for s, v in acc.items()}


def check_period(period: Period, today: date) -> None:
    if period.kind != "month":
        raise PlanError("period", "budget periods are calendar months (YYYY-MM)")
    current = month_of(today)
    if period.first < current.first:
        raise PlanError("period", f"{period.label} has begun or passed: plan the current month "
                                  f"({current.label}) or a later one; past months are in the backtest")
    if period.first > add_months(current, MAX_AHEAD_MONTHS).first:
        raise PlanError("period", f"plans reach at most {MAX_AHEAD_MONTHS} months ahead of {current.label}")


def _money(value: float | None) -> int | None:
    return None if value is None else to_minor(value)


async def budget_plan(engine: AsyncEngine, region: Region, period: Period, today: date) -> dict[str, Any]:
    """The plan of ``period`` (the current month or a later one) as of the end of yesterday (local)."""
    started = time.perf_counter()
    check_period(period, today)
    last = today - timedelta(days=1)
    first = last - timedelta(days=HISTORY_DAYS - 1)
    async with snapshot(engine) as conn:
        history = await read_history(conn, region.code, first, last)
        strategies = await active_strategies(conn, region.code, last)
        newest_start = max((s["since"] for s in strategies), default=last - timedelta(days=COST_DAYS - 1))
        cost_first = min(max(newest_start, last - timedelta(days=COST_DAYS - 1)),
                         last - timedelta(days=MIN_COST_DAYS - 1))
        cost = await active_cost(conn, region.code, cost_first, last, [s["strategy"] for s in strategies])
    # Days before the region's first ticket are not zero-ticket days: the history starts at its first data.
    first = min(history, default=last)
    planner = Planner(history, first, last)
    point = forecast(history, first, last, period, cost=cost)
    bands = {m: band(point.total(m), planner.errors(period, m)) for m in MEASURES}
    bt = planner.backtest(period)
    scen = []
    for s in sorted(set(point.tickets) | set(cost)):
        c = cost.get(s, CostPerTicket(0, 0, 0))
        scen.append({"scenario": s, "tickets": round(point.tickets.get(s, 0.0), 1),
                     "auto_per_ticket_minor": to_minor(c.auto), "manual_per_ticket_minor": to_minor(c.manual),
                     "auto_minor": to_minor(point.auto.get(s, 0.0)), "manual_minor": to_minor(point.manual.get(s, 0.0)),
                     "cost_window_tickets": c.tickets})
    totals = {}
    for m in MEASURES:
        b = bands[m]
        conv = (lambda v: None if v is None else round(v, 1)) if m == "tickets" else _money
        totals[m] = {"forecast": conv(point.total(m)), "low": conv(b.low if b else None),
                     "high": conv(b.high if b else None), "past_periods": b.errors if b else 0}
    result = {
        "region": region.code, "currency": region.currency, "exponent": region.exponent, "period": period.label,
        "as_of": last.isoformat(), "level": LEVEL,
        "history": {"first": first.isoformat(), "last": last.isoformat(), "days_with_data": len(history)},
        "cost_window": {"first": cost_first.isoformat(), "last": last.isoformat(),
                        "days": (last - cost_first).days + 1, "short": (last - cost_first).days + 1 < 28},
        "active_strategies": [{**s, "since": s["since"].isoformat()} for s in strategies],
        "totals": totals, "scenarios": scen,
        "backtest": {
            "periods": len(bt.months), "wanted": BACKTEST_MONTHS,
            "coverage": {m: None if v is None else round(v, 4) for m, v in bt.coverage.items()},
            "covered": bt.covered, "judged": bt.judged,
            "mape": {m: None if v is None else round(v, 4) for m, v in bt.mape.items()},
            "months": [_backtest_row(row) for row in bt.months]},
    }
    metrics.REPORT_SECONDS.labels("budget_plan").observe(time.perf_counter() - started)
    return result


def _backtest_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"period": row["period"]}
    for m in MEASURES:
        cell = row[m]
        conv = (lambda v: None if v is None else round(v, 1)) if m == "tickets" else _money
        out[m] = {"forecast": conv(cell["forecast"]), "low": conv(cell["low"]), "high": conv(cell["high"]),
                  "actual": conv(cell["actual"]), "inside": cell["inside"]}
    return out


def budget_plan_csv(result: dict[str, Any]) -> str:
    """One row per line item: the totals with their band, each scenario, each backtest month."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "region", "period", "item", "measure", "forecast", "low", "high", "actual", "inside",
                "currency"])
    region, cur = result["region"], result["currency"]
    for m, t in result["totals"].items():
        w.writerow(["plan", region, result["period"], "total", m, t["forecast"], t["low"], t["high"], "", "",
                    "" if m == "tickets" else cur])
    for s in result["scenarios"]:
        for m, key in (("tickets", "tickets"), ("auto", "auto_minor"), ("manual", "manual_minor"),
                       ("auto_per_ticket", "auto_per_ticket_minor"), ("manual_per_ticket", "manual_per_ticket_minor")):
            w.writerow(["scenario", region, result["period"], s["scenario"], m, s[key], "", "", "", "",
                        "" if m == "tickets" else cur])
    for row in result["backtest"]["months"]:
        for m in MEASURES:
            c = row[m]
            w.writerow(["backtest", region, row["period"], "total", m, c["forecast"], c["low"], c["high"],
                        c["actual"], "" if c["inside"] is None else str(c["inside"]).lower(),
                        "" if m == "tickets" else cur])
    bt = result["backtest"]
    for m in MEASURES:
        w.writerow(["calibration", region, result["period"], "coverage", m, bt["coverage"][m], "", "",
                    f"{bt['covered'][m]}/{bt['judged'][m]}", "", ""])
        w.writerow(["calibration", region, result["period"], "mape", m, bt["mape"][m], "", "", "", "", ""])
    return out.getvalue()
