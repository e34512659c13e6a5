"""How the service runs the spike detector (``spikes.py``) on its series and shows what it stored (pure).

The series are day buckets of tickets per (region, reason), (region, carrier) and (region, seller). An
alert is stored once per (series, local day, kind) under a stable id; stored alerts of one series are
merged into episodes for display; an episode is *open* while its last alert is on the last complete day.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from services.insights.domain.movers import Contributor
from services.insights.domain.spikes import Alert, AlertKind, DetectorParams, Episode, merge_episodes

DIMENSIONS = ("reason", "carrier", "seller")
# Whose breakdown explains a series' spike: the carriers behind a reason, the reasons behind a carrier or
# a seller.
CONTRIBUTOR_DIMENSION = {"reason": "carrier", "carrier": "reason", "seller": "reason"}
CANDIDATE_WINDOW_DAYS = 28
NO_VALUE = "-"  # a contributor key for tickets without a carrier (or reason): "-" is a valid identifier
TOP_CONTRIBUTORS = 3


def alert_id(region: str, dimension: str, key: str, day: date, kind: str) -> str:
    """A stable id of (region, dimension, key, local day, kind): the same alert found again, by this or
    another replica, has the same id (and so the same event id)."""
    digest = hashlib.sha256("\x1f".join((region, dimension, key, day.isoformat(), kind)).encode()).hexdigest()
    return f"spk-{digest[:40]}"


def candidate_floor(params: DetectorParams, window_days: int = CANDIDATE_WINDOW_DAYS) -> int:
    """Fewest tickets over the last ``window_days`` a series needs to be judged at all: the volume guard's
    cheap pre-filter. For any weekday's baseline to reach ``min_expected``, that weekday alone must have
    counted about ``min_expected`` per week, so the window holds at least ``min_expected * window_days / 7``
    tickets. (A strong upward trend could lift a smaller series over the guard; a series that small is
    noise to the detector anyway.)"""
    return max(1, math.ceil(params.min_expected * window_days / 7))


def local_midnight(day: date, timezone: str) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(timezone))


def contributors_json(contributors: Sequence[Contributor], dimension: str) -> list[dict[str, Any]]:
    return [{"dimension": dimension, "key": c.key, "observed": c.observed, "expected": float(c.expected),
             "excess": float(c.excess), "share": None if c.share is None else float(c.share)}
            for c in contributors]


def _alert_of(row: Mapping[str, Any]) -> Alert:
    return Alert(AlertKind(row["kind"]), row["bucket_start"], row["bucket_end"], int(row["observed"]),
                 float(row["expected"]), float(row["lower_edge"]), float(row["upper_edge"]), float(row["sigma"]),
                 float(row["z"]), float(row["cusum"]))


def series_episodes(alerts: Iterable[Alert]) -> list[Episode]:
    """One series' alerts merged into episodes. A day stored with both kinds (a re-run after late events
    changed a shift into a spike) counts once, as the spike."""
    by_bucket: dict[datetime, Alert] = {}
    for a in alerts:
        kept = by_bucket.get(a.bucket_start)
        if kept is None or (kept.kind is AlertKind.SHIFT and a.kind is AlertKind.SPIKE):
            by_bucket[a.bucket_start] = a
    return merge_episodes(list(by_bucket.values()))


def episodes_view(rows: Sequence[Mapping[str, Any]], timezone: str, today: date, *, open_only: bool = False
                  ) -> list[dict[str, Any]]:
    """Stored alert rows (any series of one region) as episodes, newest first. ``today`` is the region's
    current local day: an episode is open when its last alert's bucket ends at today's midnight."""
    today_start = local_midnight(today, timezone)
    tz = ZoneInfo(timezone)
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(row["dimension"], row["series_key"])].append(row)
    out: list[dict[str, Any]] = []
    for (dimension, key), series_rows in grouped.items():
        by_start = {(r["bucket_start"], r["kind"]): r for r in series_rows}
        for episode in series_episodes(_alert_of(r) for r in series_rows):
            is_open = episode.end >= today_start
            if open_only and not is_open:
                continue
            alerts = []
            for a in episode.alerts:
                row = by_start[(a.bucket_start, a.kind.value)]
                alerts.append({"alert_id": row["alert_id"], "day": row["day"].isoformat(), "kind": a.kind.value,
                               "bucket_start": a.bucket_start.isoformat(), "bucket_end": a.bucket_end.isoformat(),
                               "observed": a.observed, "expected": round(a.expected, 3),
                               "lower": round(a.lower, 3), "upper": round(a.upper, 3), "z": round(a.z, 3),
                               "contributors": row["contributors"],
                               "detected_at": row["detected_at"].isoformat() if row.get("detected_at") else None})
            peak = episode.peak
            out.append({
                "dimension": dimension, "key": key, "kind": episode.kind.value, "open": is_open,
                "first_day": episode.start.astimezone(tz).date().isoformat(),
                "last_day": episode.alerts[-1].bucket_start.astimezone(tz).date().isoformat(),
                "days": len(episode.alerts), "observed": episode.observed, "expected": round(episode.expected, 3),
                "peak": {"day": peak.bucket_start.astimezone(tz).date().isoformat(), "observed": peak.observed,
                         "expected": round(peak.expected, 3), "upper": round(peak.upper, 3), "z": round(peak.z, 3)},
                "alerts": alerts})
    out.sort(key=lambda e: (e["last_day"], e["first_day"], e["dimension"], e["key"]), reverse=True)
    return out


def open_counts(rows: Sequence[Mapping[str, Any]], timezone: str, today: date) -> dict[str, int]:
    """Open episodes per dimension (every dimension present, 0 when none)."""
    counts = dict.fromkeys(DIMENSIONS, 0)
    for episode in episodes_view(rows, timezone, today, open_only=True):
        counts[episode["dimension"]] += 1
    return counts
