"""The Plan page (issue 15): next period's budget plan with its 80% band, and plan against actual for the
12 past months of its backtest, from ``services.insights.plans`` (the same numbers as the API and CLI)."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import plans
from services.insights.domain.periods import Period
from services.insights.web import charts
from services.insights.web import format as fmt
from services.insights.web.metrics import PAGE_SECONDS
from services.insights.web.views import Tile
from shared.regions import Region

LABELS = {"auto": "Automatic spend", "manual": "Manual spend", "total": "Total spend"}


async def plan(engine: AsyncEngine, region: Region, period: Period, today: date) -> dict[str, Any]:
    started = time.perf_counter()
    cur = region.currency
    result = await plans.budget_plan(engine, region, period, today)
    bt = result["backtest"]
    tiles = []
    for m, label in LABELS.items():
        t = result["totals"][m]
        band = (f"80% band {fmt.money(t['low'], cur)} to {fmt.money(t['high'], cur)}" if t["low"] is not None
                else f"no band: {t['past_periods']} past months (needs 4)")
        tiles.append(Tile(m, f"{label}, {result['period']}", fmt.money(t["forecast"], cur), band))
    covered, judged = sum(bt["covered"][m] for m in LABELS), sum(bt["judged"][m] for m in LABELS)
    tiles.append(Tile("coverage", "Band coverage, backtest", fmt.pct(covered / judged if judged else None, 0),
                      f"{covered} of {judged} past month amounts inside their 80% band"))
    tiles.append(Tile("mape", "Monthly error (MAPE), total", fmt.pct(bt["mape"]["total"]),
                      f"over {bt['periods']} past months"))
    months = bt["months"]
    labels = [row["period"] for row in months]
    chart_of = {}
    for m, label in LABELS.items():
        chart_of[m] = charts.line_chart(labels, [
            charts.Series("Plan (80% band)", [row[m]["forecast"] for row in months], css="s2",
                          lows=[row[m]["low"] for row in months], highs=[row[m]["high"] for row in months],
                          dashed=True),
            charts.Series("Actual", [row[m]["actual"] for row in months], css="s1"),
        ], title=f"{label}: plan against actual, {region.code} ({cur})", fmt=lambda v: fmt.money_short(v, cur),
            y_min=0, empty="no complete past month to compare")
    rows = [{"period": row["period"], **{m: {
        "plan": fmt.money(row[m]["forecast"], cur), "low": fmt.money(row[m]["low"], cur),
        "high": fmt.money(row[m]["high"], cur), "actual": fmt.money(row[m]["actual"], cur),
        "inside": row[m]["inside"]} for m in LABELS}} for row in months]
    scenarios = [{"scenario": s["scenario"], "tickets": f"{s['tickets']:,.0f}",
                  "auto_per_ticket": fmt.money(s["auto_per_ticket_minor"], cur),
                  "manual_per_ticket": fmt.money(s["manual_per_ticket_minor"], cur),
                  "auto": fmt.money(s["auto_minor"], cur), "manual": fmt.money(s["manual_minor"], cur)}
                 for s in result["scenarios"]]
    PAGE_SECONDS.labels("plan").observe(time.perf_counter() - started)
    return {"plan": result, "tiles": tiles, "charts": chart_of, "rows": rows, "scenarios": scenarios}
