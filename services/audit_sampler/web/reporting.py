"""Report assembly: parse the report parameters, read the rows, build the pure reports. Shared by the
JSON/CSV reports API and the dashboard pages."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.audit_sampler.domain.reports import (
    AccuracyReport,
    CalibrationReport,
    Period,
    PeriodKind,
    accuracy_estimates,
    accuracy_report,
    calibration_report,
    period_containing,
    recent_periods,
)
from services.audit_sampler.domain.stats import Estimate
from services.audit_sampler.persistence import workbench as queries
from services.audit_sampler.web.metrics import REPORT_SECONDS
from shared.contracts.envelope import check_date
from shared.http import Problem
from shared.regions import Region, UnknownRegion, catalogue

GOLD_HISTORY = 6


@dataclass(frozen=True)
class ReportQuery:
    region: Region
    period: Period


def parse_report_query(region: str | None, period: str | None, day: str | None) -> ReportQuery:
    """Validate region, period kind and date together, naming every bad field (422)."""
    errors: list[dict[str, str]] = []
    found: Region | None = None
    if not region:
        errors.append({"field": "region", "message": "required: a region code such as US"})
    else:
        try:
            found = catalogue().get(region.strip().upper())
        except UnknownRegion:
            errors.append({"field": "region",
                           "message": f"unknown region {region!r} (known: {', '.join(catalogue().codes())})"})
    try:
        kind = PeriodKind(period or "month")
    except ValueError:
        errors.append({"field": "period", "message": "must be day, week or month"})
        kind = PeriodKind.MONTH
    parsed: date | None = None
    if day:
        try:
            parsed = check_date(date.fromisoformat(day))
        except ValueError:
            errors.append({"field": "date", "message": "must be a date like 2024-05-31 (the region's local date), "
                                                       "years 1970 to 2199"})
    if errors or found is None:
        raise Problem(422, "Invalid report request", "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                      errors=errors)
    local_day = parsed or found.local(datetime.now(UTC)).date()
    return ReportQuery(found, period_containing(kind, local_day, found.timezone))


async def load_accuracy(engine: AsyncEngine, q: ReportQuery) -> AccuracyReport:
    previous = q.period.previous()
    # prometheus_client's time() decorator would time only the coroutine's creation; the context manager
    # spans the awaits.
    with REPORT_SECONDS.labels("accuracy").time():
        async with engine.connect() as conn:
            population = await queries.population_count(conn, q.region.code, q.period)
            rows = await queries.audited_compensations(conn, q.region.code, previous.start, q.period.end)
            waiting = await queries.unaudited_samples(conn, q.region.code, previous.start, q.period.end)
    current = [item for day, item in rows if q.period.contains(day)]
    before = [item for day, item in rows if previous.contains(day)]
    return accuracy_report(region=q.region.code, currency=q.region.currency, period=q.period,
                           population=population, audited=current, previous_audited=before,
                           unaudited=[p for day, p in waiting if q.period.contains(day)],
                           previous_unaudited=[p for day, p in waiting if previous.contains(day)])


async def load_calibration(engine: AsyncEngine, q: ReportQuery) -> CalibrationReport:
    oldest = recent_periods(q.period, GOLD_HISTORY)[0]
    with REPORT_SECONDS.labels("calibration").time():
        async with engine.connect() as conn:
            pairs = await queries.calibration_pairs(conn, q.region.code, q.period)
            gold = await queries.gold_results(conn, q.region.code, q.region.timezone, oldest.start_utc,
                                              q.period.end_utc)
    return calibration_report(region=q.region.code, period=q.period, pairs=pairs, gold=gold,
                              history=GOLD_HISTORY)


async def accuracy_trend(engine: AsyncEngine, q: ReportQuery, count: int = 8) -> list[tuple[Period, Estimate]]:
    """The weighted accuracy of the last ``count`` periods, oldest first (one query of each kind for all of
    them), by the same estimator as the report: the latest point is the report's own figure."""
    periods = recent_periods(q.period, count)
    with REPORT_SECONDS.labels("trend").time():
        async with engine.connect() as conn:
            rows = await queries.audited_compensations(conn, q.region.code, periods[0].start, periods[-1].end)
            waiting = await queries.unaudited_samples(conn, q.region.code, periods[0].start, periods[-1].end)
            sizes = await queries.population_by_day(conn, q.region.code, periods[0].start, periods[-1].end)
    out = []
    for period in periods:
        items = [item for day, item in rows if period.contains(day)]
        unaudited = [p for day, p in waiting if period.contains(day)]
        size = sum(n for day, n in sizes.items() if period.contains(day))
        out.append((period, accuracy_estimates(items, unaudited, size)[0]))
    return out


def to_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        # A cell starting with = + - @ would run as a formula in a spreadsheet (CSV injection).
        writer.writerow(["'" + c if isinstance(c, str) and c[:1] in ("=", "+", "-", "@") else
                         ("" if c is None else c) for c in row])
    return out.getvalue()
