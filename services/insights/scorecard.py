"""The strategy scorecard read from insights' own tables: compensation rollups (volume, cost, redemption,
time to compensate), records (CSAT answered after the compensation, audit findings) and the return
tallies; the verdicts come from ``domain/scorecard.py``. Shadow strategies issue nothing and are not
scored (their outcomes are in the decisions report)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import returns
from services.insights.domain.periods import Period
from services.insights.domain.scorecard import StrategyFacts, Thresholds, evaluate, review_order
from shared.regions import Region

# Rollup rows plus the deltas not yet compacted: the reports read both, so does the scorecard.
_COMPS = text("""
    SELECT strategy, sum(comps)::bigint AS comps, sum(amount_minor)::bigint AS cost,
           sum(vouchers)::bigint AS vouchers, sum(redeemed)::bigint AS redeemed,
           sum(timed)::bigint AS timed, sum(ttc_seconds)::bigint AS ttc
    FROM (SELECT strategy, comps, amount_minor, vouchers, redeemed, timed, ttc_seconds FROM comp_daily
          WHERE region = :r AND day BETWEEN :a AND :b AND source = 'auto' AND strategy <> ''
          UNION ALL
          SELECT strategy, comps, amount_minor, vouchers, redeemed, timed, ttc_seconds FROM comp_daily_delta
          WHERE region = :r AND day BETWEEN :a AND :b AND source = 'auto' AND strategy <> '') x
    GROUP BY strategy""")

# CSAT answers given after the compensation was issued, per strategy (compensations of the period).
_CSAT = text("""
    SELECT c.strategy_id, count(*) AS n, coalesce(sum((f->>'score')::int), 0) AS total
    FROM compensations c JOIN tickets t ON t.ticket_id = c.ticket_id
    CROSS JOIN LATERAL jsonb_array_elements(t.feedback) AS f
    WHERE c.region = :r AND c.source = 'auto' AND c.strategy_id <> '' AND c.issued_at >= :s AND c.issued_at < :e
      AND f->>'kind' = 'csat' AND (f->>'at')::timestamptz > c.issued_at
    GROUP BY c.strategy_id""")

_AUDIT = text("""
    SELECT c.strategy_id, count(*) FILTER (WHERE a.passed IS NOT NULL) AS audited,
           count(*) FILTER (WHERE a.passed = false) AS failed
    FROM audit_items a JOIN compensations c ON c.compensation_id = a.compensation_id
    WHERE a.region = :r AND c.strategy_id <> '' AND c.issued_at >= :s AND c.issued_at < :e
    GROUP BY c.strategy_id""")

_EXPOSED = text("SELECT DISTINCT strategy_id FROM return_exposures WHERE region = :r "
                "AND ticket_occurred_at >= :s AND ticket_occurred_at < :e")


async def scorecard(engine: AsyncEngine, region: Region, period: Period, thresholds: Thresholds, *,
                    window_days: int, margin_days: int, now: datetime | None = None) -> dict[str, Any]:
    start, end = period.start_utc(region.timezone), period.end_utc(region.timezone)
    a, b = period.first, period.last
    facts: dict[str, dict[str, Any]] = {}
    async with engine.connect() as conn:
        for row in (await conn.execute(_COMPS, {"r": region.code, "a": a, "b": b})).mappings():
            facts.setdefault(row["strategy"], {}).update(
                compensations=int(row["comps"]), cost_minor=int(row["cost"]), vouchers=int(row["vouchers"]),
                redeemed=int(row["redeemed"]), timed=int(row["timed"]), ttc_seconds=int(row["ttc"]))
        for row in (await conn.execute(_CSAT, {"r": region.code, "s": start, "e": end})).mappings():
            facts.setdefault(row["strategy_id"], {}).update(csat_responses=int(row["n"]),
                                                            csat_sum=int(row["total"]))
        for row in (await conn.execute(_AUDIT, {"r": region.code, "s": start, "e": end})).mappings():
            facts.setdefault(row["strategy_id"], {}).update(audited=int(row["audited"]),
                                                            audit_failed=int(row["failed"]))
        for (sid,) in await conn.execute(_EXPOSED, {"r": region.code, "s": start, "e": end}):
            facts.setdefault(sid, {})
        for sid, f in facts.items():
            t = await returns.tallies(conn, strategy_id=sid, region=region.code, currency=region.currency,
                                      start=start, end=end, window_days=window_days, margin_days=margin_days,
                                      now=now or datetime.now(UTC))
            f.update(treated=t.treated, control=t.control, maturing=sum(t.maturing.values()))
            plan = thresholds.planned_buyers_per_group
            if t.treated.buyers >= plan and t.control.buyers >= plan:
                first = await returns.tallies(conn, strategy_id=sid, region=region.code, currency=region.currency,
                                              start=start, end=end, window_days=window_days,
                                              margin_days=margin_days, now=now or datetime.now(UTC),
                                              first_buyers=plan)
                f.update(judged_treated=first.treated, judged_control=first.control)
    rows = review_order([evaluate(StrategyFacts(sid, **f), thresholds) for sid, f in facts.items()])
    return {"region": region.code, "currency": region.currency, "timezone": region.timezone,
            "period": period.label, "from": period.first.isoformat(), "to": period.last.isoformat(),
            "return_window_days": window_days, "thresholds": thresholds.as_dict(),
            "strategies": [r.as_dict(region.currency) for r in rows]}


CSV_COLUMNS = ("strategy_id", "verdict", "at_planned_sample", "judged_buyers_per_group", "compensations",
               "cost_minor", "currency",
               "redemption_rate", "mean_hours_to_compensate", "csat_after_compensation", "csat_responses",
               "audited", "audit_findings", "treated_buyers", "holdout_buyers", "maturing_buyers",
               "repeat_rate_uplift", "repeat_rate_uplift_ci95", "return_on_cost", "return_on_cost_ci95", "reasons")


def scorecard_csv(result: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["region", "period", *CSV_COLUMNS])
    for s in result["strategies"]:
        cells = []
        for c in CSV_COLUMNS:
            v = s[c]
            cells.append("; ".join(v) if c == "reasons" else
                         ("" if v is None else " .. ".join(f"{x:.4f}" for x in v)) if c.endswith("_ci95") else
                         "" if v is None else v)
        w.writerow([result["region"], result["period"], *cells])
    return out.getvalue()
