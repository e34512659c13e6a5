"""Budget usage monitoring (issue 15 part 3): each region's current period at the current pace.

Every round reads each region's burn-down of its current local month (the same numbers as
``GET /v1/budgets/{region}/{period}/burndown``) and sets two gauges per region and period: when the limit
is projected to be reached at the average daily usage so far, and when the period ends. The alert
``InsightsBudgetExhaustsBeforePeriodEnd`` compares them. A region without a limit or without usage has
no projection: its series is removed, as is a finished period's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import metrics, reports
from services.insights.domain.budget_plan import month_of
from shared.periodic import PeriodicTask
from shared.regions import catalogue


class BudgetWatch(PeriodicTask):
    def __init__(self, engine: AsyncEngine, interval: float) -> None:
        super().__init__("insights-budget-watch", interval, self.run_once)
        self.engine = engine
        self._shown: set[tuple[str, str]] = set()

    async def run_once(self, now: datetime | None = None) -> dict[str, dict[str, Any]]:
        now = now or datetime.now(UTC)
        out: dict[str, dict[str, Any]] = {}
        shown: set[tuple[str, str]] = set()
        for code in catalogue().codes():
            region = catalogue().get(code)
            today = region.local(now).date()
            period = month_of(today)
            b = await reports.budget_burndown(self.engine, region, period, today)
            out[code] = b
            day = b["projected_exhaustion_day"]
            if day is None:
                continue
            labels = (code, period.label)
            metrics.BUDGET_EXHAUSTION.labels(*labels).set(
                datetime.combine(date.fromisoformat(day), time(0), region.tz).timestamp())
            metrics.BUDGET_PERIOD_END.labels(*labels).set(period.end_utc(region.timezone).timestamp())
            shown.add(labels)
        for labels in self._shown - shown:
            metrics.BUDGET_EXHAUSTION.remove(*labels)
            metrics.BUDGET_PERIOD_END.remove(*labels)
        self._shown = shown
        return out
