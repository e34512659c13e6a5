"""The spike detector running in the service: a periodic round over every region's day series.

A round, for each region and each dimension (reason, carrier, seller):

1. picks the series worth judging (tickets over the last 4 weeks at least the volume guard's floor,
   ``spike_watch.candidate_floor``), skips those whose judged days this replica already judged on the same
   counts (the detector would find the same alerts: it is deterministic and causal), and reads the day
   buckets (``INSIGHTS_SPIKE_HISTORY_WEEKS``) of the rest from the rollups, cut at the region's midnight;
2. runs the documented detector (``domain/spikes.py``, ``DetectorParams(timezone=region)``) up to the
   start of the current local day, in a worker thread (it is CPU work), and keeps the alerts of the last
   ``INSIGHTS_SPIKE_LOOKBACK_DAYS`` complete days (older days were judged by earlier rounds);
3. attaches each alert's top contributors (the carriers behind a reason, the reasons behind a carrier or a
   seller) against the same weekday of the baseline weeks;
4. in one transaction, inserts the alerts keyed by (region, dimension, key, bucket start, kind) with
   ``ON CONFLICT DO NOTHING`` and enqueues an ``insight.spike_detected`` event in the outbox for each row
   that insert returned, and for no other.

Two replicas: a round runs under a transaction-level advisory lock tried (never awaited) on its own
connection, so normally one replica judges and the other skips. The lock only saves work; what keeps an
alert from being published twice is step 4: the row and its event commit together, and a replica whose
insert found the row already there enqueues nothing. Every replica refreshes the open-episode gauge from
the stored alerts each round, so whichever pod Prometheus scrapes tells the truth.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.insights import metrics
from services.insights import persistence as db
from services.insights.config import Settings
from services.insights.domain.spike_watch import (
    CANDIDATE_WINDOW_DAYS,
    CONTRIBUTOR_DIMENSION,
    DIMENSIONS,
    TOP_CONTRIBUTORS,
    alert_id,
    candidate_floor,
    contributors_json,
    local_midnight,
    open_counts,
    series_episodes,
)
from services.insights.domain.spikes import (
    Alert,
    DetectorParams,
    Point,
    baseline_bucket_starts,
    detect,
    with_contributors,
)
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import make_envelope
from shared.money import MAX_AMOUNT_MINOR
from shared.outbox import enqueue
from shared.periodic import PeriodicTask
from shared.regions import Region, catalogue

log = logging.getLogger(__name__)

LOCK_KEY = "insights-spikes"
SELLER_BASELINE_WEEKS = 8  # a seller's reasons come from ticket records, so fewer baseline days are read
OPEN_WINDOW_DAYS = 120  # stored alerts read to find the open episodes (an episode longer than this is cut)
_MAX_ESTIMATE = float(MAX_AMOUNT_MINOR)


@dataclass(frozen=True, slots=True)
class Found:
    key: str
    alert: Alert
    episode_start: datetime
    first_day: date  # the series' first day with tickets: no baseline before it


@dataclass(slots=True)
class RoundResult:
    judged: int = 0  # series judged
    found: int = 0  # alerts found in the lookback window (stored before or not)
    new: int = 0  # alerts this round stored and published


def judge(series: dict[str, list[tuple[date, int]]], params: DetectorParams, end: datetime, since: datetime
          ) -> list[Found]:
    """Run the detector on each series up to ``end`` (exclusive); the alerts whose bucket starts at or after
    ``since``, each with the start of its episode. Pure CPU work: run it in a thread."""
    out: list[Found] = []
    for key, days in series.items():
        points = [Point(local_midnight(day, params.timezone), n) for day, n in days]
        alerts = detect(points, params, end=end)
        for episode in series_episodes(alerts):
            for alert in episode.alerts:
                if alert.bucket_start >= since:
                    out.append(Found(key, alert, episode.start, days[0][0]))
    return out


class SpikeWatch(PeriodicTask):
    def __init__(self, engine: AsyncEngine, settings: Settings, *, regions: Sequence[str] | None = None,
                 on_commit: Callable[[], None] | None = None) -> None:
        # The first round waits one interval: a starting replica first catches up with the topics (a round
        # on stale rollups would judge yesterday on a partial count), and startup stays light.
        super().__init__("insights-spikes", settings.spike_interval_seconds, self.run_once, run_first=False)
        self.engine = engine
        self.lookback_days = settings.spike_lookback_days
        self.history_weeks = settings.spike_history_weeks
        self.regions = list(regions) if regions is not None else None
        self.on_commit = on_commit
        # (region, dimension, key) -> (last complete day, its counts over the judged days) when last judged
        self._judged: dict[tuple[str, str, str], tuple[date, tuple[tuple[date, int], ...]]] = {}

    def _regions(self) -> list[Region]:
        cat = catalogue()
        return [cat.get(code) for code in (self.regions if self.regions is not None else cat.codes())]

    async def run_once(self, now: datetime | None = None) -> RoundResult | None:
        """One round at ``now`` (default: the clock). None when another replica holds the round."""
        now = now or datetime.now(UTC)
        started = time.perf_counter()
        result: RoundResult | None = None
        async with self.engine.connect() as lock_conn:
            got = (await lock_conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                                           {"k": LOCK_KEY})).scalar()
            try:
                if got:
                    result = RoundResult()
                    for region in self._regions():
                        for dimension in DIMENSIONS:
                            await self._judge(region, dimension, now, result)
            finally:
                await lock_conn.rollback()  # releases the lock
        await self.refresh_open_episodes(now)
        if result is not None:
            metrics.SPIKE_ROUND_SECONDS.observe(time.perf_counter() - started)
            metrics.LAST_SPIKE_ROUND.set(time.time())
            if result.new:
                log.info("spike alerts stored and published", extra={"new": result.new, "judged": result.judged})
        return result

    async def _judge(self, region: Region, dimension: str, now: datetime, result: RoundResult) -> None:
        params = DetectorParams(timezone=region.timezone)
        today = region.local(now).date()
        end = local_midnight(today, region.timezone)
        since = local_midnight(today - timedelta(days=self.lookback_days), region.timezone)
        yesterday = today - timedelta(days=1)
        since_day = today - timedelta(days=self.lookback_days)
        async with self.engine.connect() as conn:
            keys = await db.spike_candidates(conn, region.code, dimension,
                                             today - timedelta(days=CANDIDATE_WINDOW_DAYS), yesterday,
                                             candidate_floor(params))
            # A series whose judged days are the same and counted the same as when this replica last judged
            # it gives the same alerts (already stored): skip the detector's CPU work for it.
            window = await db.spike_series(conn, region.code, dimension, keys, since_day, yesterday)
            prints = {k: (yesterday, tuple(window.get(k, ()))) for k in keys}
            changed = [k for k in keys if self._judged.get((region.code, dimension, k)) != prints[k]]
            series = await db.spike_series(conn, region.code, dimension, changed,
                                           today - timedelta(weeks=self.history_weeks), yesterday)
        metrics.SPIKE_SERIES_JUDGED.labels(region.code, dimension).set(len(series))
        result.judged += len(series)
        if series:
            found = await asyncio.to_thread(judge, series, params, end, since)
            result.found += len(found)
            if found:
                await self._store(region, dimension, found, params, now, result)
        for k in changed:  # only once stored: a failed round judges them again
            self._judged[(region.code, dimension, k)] = prints[k]

    async def _store(self, region: Region, dimension: str, found: list[Found], params: DetectorParams,
                     now: datetime, result: RoundResult) -> None:
        rows: list[dict[str, Any]] = []
        envelopes: dict[str, Envelope] = {}
        async with self.engine.connect() as conn:
            for f in found:
                alert = await self._with_contributors(conn, region, dimension, f, params)
                row, env = _row_and_event(region, dimension, f, alert, now)
                rows.append(row)
                envelopes[row["alert_id"]] = env
        async with self.engine.begin() as conn:
            inserted = await db.insert_spike_alerts(conn, rows)
            await enqueue(conn, [envelopes[r["alert_id"]] for r in rows if r["alert_id"] in inserted])
        if inserted:
            if self.on_commit is not None:
                self.on_commit()
            for r in rows:
                if r["alert_id"] in inserted:
                    metrics.SPIKES.labels(region.code, dimension, r["kind"]).inc()
            result.new += len(inserted)

    async def _with_contributors(self, conn: Any, region: Region, dimension: str, f: Found,
                                 params: DetectorParams) -> Alert:
        tz = ZoneInfo(region.timezone)
        day = f.alert.bucket_start.astimezone(tz).date()
        baseline = [s.astimezone(tz).date() for s in baseline_bucket_starts(f.alert, params)]
        baseline = [d for d in baseline if d >= f.first_day]
        other = CONTRIBUTOR_DIMENSION[dimension]
        if dimension == "seller":
            baseline = baseline[:SELLER_BASELINE_WEEKS]
        if not baseline:
            return f.alert
        if dimension == "seller":
            breakdown = await db.seller_tickets_by_reason(conn, region.code, f.key, region.timezone,
                                                          [day, *baseline])
        else:
            breakdown = await db.tickets_by_day_and(conn, region.code, dimension, f.key, other, [day, *baseline])
        return with_contributors(f.alert, breakdown[day], [breakdown[d] for d in baseline], top=TOP_CONTRIBUTORS)

    async def refresh_open_episodes(self, now: datetime) -> None:
        """Set the open-episode gauge of every region and dimension from the stored alerts."""
        async with self.engine.connect() as conn:
            for region in self._regions():
                today = region.local(now).date()
                rows = await db.spike_alerts(conn, region.code, today - timedelta(days=OPEN_WINDOW_DAYS),
                                             today - timedelta(days=1))
                for dimension, n in open_counts(rows, region.timezone, today).items():
                    metrics.SPIKE_EPISODES_OPEN.labels(region.code, dimension).set(n)


def _estimate(value: float) -> float:
    return min(max(value, 0.0), _MAX_ESTIMATE)


def _row_and_event(region: Region, dimension: str, f: Found, alert: Alert, now: datetime
                   ) -> tuple[dict[str, Any], Envelope]:
    tz = ZoneInfo(region.timezone)
    day = alert.bucket_start.astimezone(tz).date()
    aid = alert_id(region.code, dimension, f.key, day, alert.kind.value)
    other = CONTRIBUTOR_DIMENSION[dimension]
    contributors = contributors_json(alert.contributors, other)
    payload = ev.SpikeDetected(
        alert_id=aid, dimension=ev.SpikeDimension(dimension), key=f.key, kind=ev.SpikeKind(alert.kind.value),
        day=day, bucket_start=alert.bucket_start, bucket_end=alert.bucket_end, observed=alert.observed,
        expected=_estimate(alert.expected), lower=_estimate(alert.lower), upper=_estimate(alert.upper),
        z=max(-1e9, min(1e9, alert.z)), episode_start=f.episode_start,
        contributors=[ev.SpikeContributor(dimension=ev.SpikeDimension(other), key=c["key"],
                                          observed=c["observed"], expected=_estimate(c["expected"]),
                                          share=c["share"]) for c in contributors])
    env = make_envelope("insight.spike_detected", payload, source="insights", region=region.code, occurred_at=now,
                        event_id=f"evt-{aid}")
    row = {"region": region.code, "dimension": dimension, "series_key": f.key, "bucket_start": alert.bucket_start,
           "kind": alert.kind.value, "alert_id": aid, "day": day, "bucket_end": alert.bucket_end,
           "observed": alert.observed, "expected": alert.expected, "lower_edge": alert.lower,
           "upper_edge": alert.upper, "sigma": alert.sigma, "z": alert.z, "cusum": alert.cusum,
           "contributors": contributors, "event_id": env.event_id}
    return row, env


__all__ = ["LOCK_KEY", "Found", "RoundResult", "SpikeWatch", "judge"]
