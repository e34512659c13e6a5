"""Market comparison report (issue 15 part 6): a region's reference file against its active strategies'
effective compensation over a period, read from insights' records.

Effective compensation of a strategy in a scenario: its live issued decisions (a shadow strategy's
would-issue ones, shown apart) of its newest version on tickets of that reason raised in the period (local
days), median amount and median share of the order value by nearest rank (docs/metrics.md), from the
``strategy_amount_daily`` / ``strategy_share_daily`` rollups of ``decision.recorded``. A percentage
reference becomes an amount at the period's average order value (``order.volume_reported``: GMV / orders).
"""

from __future__ import annotations

import csv
import io
import time
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.insights import metrics
from services.insights import persistence as db
from services.insights.domain.market import (
    Effective,
    MarketFileError,
    ReferenceFile,
    load_references,
    place,
    reference_rows,
    weighted_median,
)
from services.insights.domain.periods import Period
from services.insights.reports import snapshot
from shared.regions import Region

SAMPLES = Path(__file__).with_name("market")


class NoReferences(LookupError):
    pass


def reference_path(directory: str, region: str) -> Path:
    return Path(directory or SAMPLES) / f"{region}.yaml"


def read_references(path: Path, region: Region, today: date) -> ReferenceFile:
    if not path.is_file():
        raise NoReferences(f"no market reference file for {region.code} ({path.name})")
    return load_references(path.read_bytes(), region=region.code, currency=region.currency, today=today)


async def market_report(engine: AsyncEngine, region: Region, period: Period, references: ReferenceFile
                        ) -> dict[str, Any]:
    started = time.perf_counter()
    async with snapshot(engine) as conn:
        amounts = await _counts(conn, "strategy_amount_daily", "amount_minor", region.code, period)
        shares = await _counts(conn, "strategy_share_daily", "share_bp", region.code, period)
        orders, gmv, reported = await db.order_volume(conn, region.code, period.first, period.last)
    effective = []
    for (strategy, reason, shadow), by_version in amounts.items():
        version = max(by_version)  # the newest version that gave anything in the period
        counts = by_version[version]
        share_counts = shares.get((strategy, reason, shadow), {}).get(version, [])
        median = weighted_median(counts)
        if median is None:
            continue
        effective.append(Effective(strategy, reason, sum(c for _, c in counts), median, version, shadow,
                                   weighted_median(share_counts), sum(c for _, c in share_counts)))
    average = (2 * gmv + orders) // (2 * orders) if orders else None
    placed = place(effective, references.references, average)
    metrics.REPORT_SECONDS.labels("market").observe(time.perf_counter() - started)
    return {"region": region.code, "currency": region.currency, "exponent": region.exponent,
            "period": period.label, "average_order_minor": average,
            "order_volume_days": reported, "period_days": period.days,
            "references": reference_rows(references.references, average),
            "examples_only": all(r.status == "example" for r in references.references), **placed}


async def _counts(conn: AsyncConnection, table: str, column: str, region: str, period: Period
                  ) -> dict[tuple[str, str, bool], dict[int, list[tuple[int, int]]]]:
    """(strategy, reason, shadow) -> version -> [(value, decisions)] over the period's local days."""
    where = "region = :r AND day BETWEEN :a AND :b"
    cols = f"strategy, strategy_version, reason, shadow, {column}, decisions"
    rows = await conn.execute(text(
        f"SELECT strategy, strategy_version, reason, shadow, {column}, sum(decisions)::bigint FROM "
        f"(SELECT {cols} FROM {table} WHERE {where} UNION ALL SELECT {cols} FROM {table}_delta WHERE {where}) x "
        f"GROUP BY strategy, strategy_version, reason, shadow, {column} HAVING sum(decisions) > 0"),
        {"r": region, "a": period.first, "b": period.last})
    out: dict[tuple[str, str, bool], dict[int, list[tuple[int, int]]]] = {}
    for strategy, version, reason, shadow, value, n in rows:
        out.setdefault((strategy, reason, bool(shadow)), {}).setdefault(int(version), []).append((int(value), int(n)))
    return out


def market_csv(result: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["region", "period", "strategy", "version", "shadow", "scenario", "decisions", "median_minor",
                "median_pct_of_order", "median_pct_of_average_order", "reference_low_minor", "reference_high_minor",
                "position", "best_reference", "gap_to_best_minor", "currency"])
    for r in result["strategies"]:
        w.writerow([result["region"], result["period"], r["strategy"], r["version"], str(r["shadow"]).lower(),
                    r["scenario"], r["decisions"], r["median_minor"], r["median_pct_of_order"],
                    r["median_pct_of_average_order"], r["reference_low_minor"],
                    r["reference_high_minor"], r["position"], r["best_reference"], r["gap_to_best_minor"],
                    result["currency"]])
    return out.getvalue()


__all__ = ["MarketFileError", "NoReferences", "market_csv", "market_report", "read_references", "reference_path"]
