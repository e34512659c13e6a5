"""Market comparison report (issue 15 part 6): a region's reference file against its active strategies'
effective compensation over a period, read from insights' records.

Effective compensation of a strategy in a scenario: its automatic compensations (the live decisions it
issued; shadow decisions issue nothing) on tickets of that reason raised in the period (local days), median
amount by nearest rank (``percentile_disc(0.5)``, docs/metrics.md). As a percentage of order value it is
put against the period's average order value (``order.volume_reported``: GMV / orders): insights keeps no
per-ticket order value, so a percentage reference is compared at that average too.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import metrics
from services.insights import persistence as db
from services.insights.domain.market import (
    Effective,
    MarketFileError,
    ReferenceFile,
    load_references,
    place,
    reference_rows,
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
        rows = await conn.execute(text(
            "SELECT c.strategy_id, t.reason, count(*), "
            "percentile_disc(0.5) WITHIN GROUP (ORDER BY c.amount_minor) FROM tickets t "
            "JOIN compensations c ON c.ticket_id = t.ticket_id AND c.source = 'auto' AND c.issued_at IS NOT NULL "
            "WHERE t.region = :r AND t.known AND t.occurred_at >= :a AND t.occurred_at < :b "
            "GROUP BY c.strategy_id, t.reason"),
            {"r": region.code, "a": period.start_utc(region.timezone), "b": period.end_utc(region.timezone)})
        effective = [Effective(s, reason, int(n), int(median)) for s, reason, n, median in rows]
        orders, gmv, reported = await db.order_volume(conn, region.code, period.first, period.last)
    average = (2 * gmv + orders) // (2 * orders) if orders else None
    placed = place(effective, references.references, average)
    metrics.REPORT_SECONDS.labels("market").observe(time.perf_counter() - started)
    return {"region": region.code, "currency": region.currency, "exponent": region.exponent,
            "period": period.label, "average_order_minor": average,
            "order_volume_days": reported, "period_days": period.days,
            "references": reference_rows(references.references, average),
            "examples_only": all(r.status == "example" for r in references.references), **placed}


def market_csv(result: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["region", "period", "strategy", "scenario", "compensations", "median_minor",
                "median_pct_of_average_order", "reference_low_minor", "reference_high_minor", "position",
                "best_reference", "gap_to_best_minor", "currency"])
    for r in result["strategies"]:
        w.writerow([result["region"], result["period"], r["strategy"], r["scenario"], r["compensations"],
                    r["median_minor"], r["median_pct_of_average_order"], r["reference_low_minor"],
                    r["reference_high_minor"], r["position"], r["best_reference"], r["gap_to_best_minor"],
                    result["currency"]])
    return out.getvalue()


__all__ = ["MarketFileError", "NoReferences", "market_csv", "market_report", "read_references", "reference_path"]
