"""Seeded synthetic count series for the spike detector: weekly seasonality, trend, Poisson or
over-dispersed (gamma-Poisson) noise, low-volume series, injected spikes and level shifts; and the
measurements the tests assert and docs/insights-detection.md reports.

``python -m tests.unit.insights.spike_series`` prints the full table of measured rates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.insights.domain.spikes import Alert, BucketSize, DetectorParams, Point, detect, merge_episodes

EVAL_WEEKS = 13  # the budget's horizon: alerts are counted in the last 13 weeks of each series
TZ = "America/Sao_Paulo"
FIRST_DAY = date(2025, 6, 2)  # a Monday; Sao Paulo has kept no daylight saving time since 2019


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw: Knuth's product method for small means, Hoermann's PTRS (1993) above 30."""
    if lam <= 0:
        return 0
    if lam < 30:
        limit, k, p = math.exp(-lam), 0, rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(inv_alpha) - math.log(a / (us * us) + b) <= -lam + k * loglam - math.lgamma(k + 1):
            return k


@dataclass(frozen=True, slots=True)
class Shape:
    """The truth behind one series: mean per bucket, and the noise's variance at a mean."""

    means: list[float]
    dispersion: float | None  # gamma-Poisson shape r (variance = mean + mean^2 / r); None: Poisson

    def sigma(self, t: int) -> float:
        mu = self.means[t]
        return math.sqrt(mu + (mu * mu / self.dispersion if self.dispersion else 0.0))


@dataclass(slots=True)
class Series:
    shape: Shape
    counts: list[int]
    starts: list[datetime]
    end: datetime  # the end of the last bucket
    injected: list[int] = field(default_factory=list)  # bucket indexes of injected spikes

    def points(self) -> list[Point]:
        # rollups store no empty buckets: leave the zeros out, the detector fills them in
        return [Point(s, c) for s, c in zip(self.starts, self.counts, strict=True) if c]


def day_starts(days: int, tz: str = TZ) -> list[datetime]:
    zone = ZoneInfo(tz)
    return [datetime.combine(FIRST_DAY + timedelta(days=i), time(0), zone).astimezone(UTC) for i in range(days)]


def hour_starts(hours: int) -> list[datetime]:
    first = datetime.combine(FIRST_DAY, time(0), UTC)
    return [first + timedelta(hours=i) for i in range(hours)]


def shape(rng: random.Random, bucket: BucketSize, weeks: int, *, level: tuple[float, float],
          trend_per_week: float = 0.005, dispersion: float | None = None) -> Shape:
    """Log-uniform base level per bucket, a random weekly profile (weekday, and hour of day for hour
    buckets), a multiplicative trend drawn from +-trend_per_week."""
    base = math.exp(rng.uniform(math.log(level[0]), math.log(level[1])))
    week_amp, week_phase = rng.uniform(0.0, 0.4), rng.uniform(0, 2 * math.pi)
    weekend = rng.uniform(0.6, 1.1)
    trend = rng.uniform(-trend_per_week, trend_per_week)
    season = 7 if bucket is BucketSize.DAY else 168
    profile = []
    for p in range(season):
        day = p if bucket is BucketSize.DAY else p // 24
        f = (1 + week_amp * math.sin(2 * math.pi * day / 7 + week_phase)) * (weekend if day >= 5 else 1.0)
        if bucket is BucketSize.HOUR:
            hour = p % 24
            f *= 0.25 + 1.5 * math.exp(-((hour - 14) ** 2) / 30)  # busy afternoons, quiet nights
        profile.append(f)
    norm = season / sum(profile)
    n = weeks * season
    means = [base * profile[t % season] * norm * (1 + trend) ** (t / season) for t in range(n)]
    return Shape(means, dispersion)


def draw(rng: random.Random, s: Shape) -> list[int]:
    out = []
    for mu in s.means:
        lam = mu * rng.gammavariate(s.dispersion, 1 / s.dispersion) if s.dispersion else mu
        out.append(poisson(rng, lam))
    return out


def make(seed: int, bucket: BucketSize = BucketSize.DAY, *, weeks: int = 65, level: tuple[float, float] = (20, 400),
         trend_per_week: float = 0.005, dispersion: float | None = None) -> Series:
    rng = random.Random(seed)
    s = shape(rng, bucket, weeks, level=level, trend_per_week=trend_per_week, dispersion=dispersion)
    bounds = day_starts(len(s.means) + 1) if bucket is BucketSize.DAY else hour_starts(len(s.means) + 1)
    return Series(s, draw(rng, s), bounds[:-1], bounds[-1])


def eval_range(series: Series, bucket: BucketSize) -> range:
    season = 7 if bucket is BucketSize.DAY else 168
    n = len(series.counts)
    return range(n - EVAL_WEEKS * season, n)


def params_for(bucket: BucketSize) -> DetectorParams:
    return DetectorParams(bucket=bucket, timezone=TZ if bucket is BucketSize.DAY else "UTC")


def judge(series: Series, params: DetectorParams) -> list[Alert]:
    return detect(series.points(), params, start=series.starts[0], end=series.end)


def false_episodes(series: Series, params: DetectorParams) -> int:
    """Episodes that start in the evaluation window of a series with nothing injected."""
    window = eval_range(series, params.bucket)
    first = series.starts[window.start]
    alerts = judge(series, params)
    return sum(1 for e in merge_episodes(alerts) if e.start >= first)


def inject_spikes(rng: random.Random, series: Series, bucket: BucketSize, sigmas: float, *, count: int,
                  additive: bool = False, min_mean: float = 0.0) -> None:
    """``count`` one-bucket spikes, at least a week apart, in the evaluation window, at buckets whose mean
    is at least ``min_mean``. A spike of m sigma puts the bucket's count at ceil(mean + m * sd) of the
    truth (or, ``additive``, adds ceil(m * sd) to the noisy draw)."""
    season = 7 if bucket is BucketSize.DAY else 168
    window = eval_range(series, bucket)
    gap = (len(window) - season) // count
    for i in range(count):
        t = window.start + i * gap + rng.randrange(season, gap)
        for _ in range(1000):
            if series.shape.means[t] >= min_mean:
                break
            t = window.start + i * gap + rng.randrange(season, gap)
        sd = series.shape.sigma(t)
        if additive:
            series.counts[t] += math.ceil(sigmas * sd)
        else:
            series.counts[t] = math.ceil(series.shape.means[t] + sigmas * sd)
        series.injected.append(t)


def spike_delays(series: Series, params: DetectorParams) -> list[int | None]:
    """Per injected spike: buckets from the spike to its first alert (0 = the spike's own bucket), None
    when no alert came within one bucket."""
    alerts = judge(series, params)
    index = {s: i for i, s in enumerate(series.starts)}
    alerted = {index[a.bucket_start] for a in alerts}
    return [0 if t in alerted else 1 if t + 1 in alerted else None for t in series.injected]


def shift(series: Series, at: int, sigmas: float) -> None:
    """From bucket ``at`` on, every mean rises by ``sigmas`` sd of the bucket (its noise redrawn)."""
    rng = random.Random(at * 7919 + len(series.counts))
    for t in range(at, len(series.counts)):
        mu = series.shape.means[t]
        series.shape.means[t] = mu + sigmas * math.sqrt(mu)
        series.counts[t] = poisson(rng, series.shape.means[t])


def shift_outcome(series: Series, params: DetectorParams, at: int) -> tuple[int | None, int]:
    """Buckets from the shift to its first alert (None: none in the series) and the episodes from the
    shift on."""
    alerts = judge(series, params)
    index = {s: i for i, s in enumerate(series.starts)}
    after = sorted(index[a.bucket_start] - at for a in alerts if index[a.bucket_start] >= at)
    episodes = [e for e in merge_episodes(alerts) if index[e.start] >= at]
    return (after[0] if after else None), len(episodes)


@dataclass(frozen=True, slots=True)
class Rates:
    series: int
    mean: float
    worst: int


def measure_false_alarms(seeds: Sequence[int], bucket: BucketSize, **kw: object) -> Rates:
    params = params_for(bucket)
    counts = [false_episodes(make(seed, bucket, **kw), params) for seed in seeds]  # type: ignore[arg-type]
    return Rates(len(counts), sum(counts) / len(counts), max(counts))


def measure_recall(seeds: Sequence[int], bucket: BucketSize, sigmas: float, *, per_series: int = 3,
                   additive: bool = False, **kw: object) -> tuple[float, dict[int | None, int]]:
    params = params_for(bucket)
    delays: dict[int | None, int] = {0: 0, 1: 0, None: 0}
    for seed in seeds:
        s = make(seed, bucket, **kw)  # type: ignore[arg-type]
        inject_spikes(random.Random(seed + 1), s, bucket, sigmas, count=per_series, additive=additive)
        for d in spike_delays(s, params):
            delays[d] += 1
    total = sum(delays.values())
    return (delays[0] + delays[1]) / total, delays


def _false(args: tuple[int, BucketSize, dict[str, object]]) -> int:
    seed, bucket, kw = args
    return false_episodes(make(seed, bucket, **kw), params_for(bucket))  # type: ignore[arg-type]


def _recall(args: tuple[int, BucketSize, float, bool, dict[str, object]]) -> list[int | None]:
    seed, bucket, sigmas, additive, kw = args
    s = make(seed, bucket, **kw)  # type: ignore[arg-type]
    inject_spikes(random.Random(seed + 1), s, bucket, sigmas, count=3, additive=additive,
                  min_mean=params_for(bucket).min_expected)
    return spike_delays(s, params_for(bucket))


def _shift(args: tuple[int, float]) -> tuple[int | None, int]:
    seed, sigmas = args
    s = make(seed, BucketSize.DAY)
    at = eval_range(s, BucketSize.DAY).start + 14
    shift(s, at, sigmas)
    return shift_outcome(s, params_for(BucketSize.DAY), at)


def main() -> None:  # pragma: no cover - prints the table for docs/insights-detection.md
    from multiprocessing import Pool

    day, hour = BucketSize.DAY, BucketSize.HOUR
    with Pool(2) as pool:
        print("false episodes per series per 13 weeks: mean (worst series, series)", flush=True)
        for label, bucket, seeds, kw in (
                ("day, Poisson, 20-400/day, trend +-0.5%/wk", day, range(1000), {}),
                ("day, Poisson, 400-5000/day", day, range(1000, 1400), {"level": (400, 5000)}),
                ("day, gamma-Poisson r=50", day, range(2000, 2400), {"dispersion": 50.0}),
                ("day, gamma-Poisson r=10", day, range(3000, 3400), {"dispersion": 10.0}),
                ("day, trend +-1%/week", day, range(4000, 4400), {"trend_per_week": 0.01}),
                ("day, low volume 0.2-4/day", day, range(5000, 5400), {"level": (0.2, 4)}),
                ("day, 13 weeks of history only", day, range(7000, 7400), {"weeks": 26}),
                ("day, 26 weeks of history only", day, range(8000, 8400), {"weeks": 39}),
                ("hour, Poisson, 2-40/hour", hour, range(6000, 6040), {"level": (2, 40)})):
            counts = pool.map(_false, [(seed, bucket, kw) for seed in seeds])
            print(f"  {label:45s} {sum(counts) / len(counts):.3f} ({max(counts)}, {len(counts)})", flush=True)
        print("recall within one bucket: rate (delay 0 / delay 1 / missed)", flush=True)
        for bucket, seeds, kw in ((day, range(10_000, 10_400), {}), (hour, range(20_000, 20_040), {"level": (5, 40)}),
                                  (day, range(11_000, 11_400), {"weeks": 26}),
                                  (day, range(12_000, 12_400), {"weeks": 39})):
            for additive in (False, True):
                for m in (3.0, 4.0, 6.0):
                    delays = [d for r in pool.map(_recall, [(seed, bucket, m, additive, kw) for seed in seeds])
                              for d in r]
                    found = [d for d in delays if d is not None]
                    how = "noise + m sd" if additive else "mean + m sd"
                    print(f"  {bucket} {kw} {how:12s} {m} sd: {len(found) / len(delays):.3f} "
                          f"({found.count(0)} / {found.count(1)} / {len(delays) - len(found)})", flush=True)
        print("level shifts (day): found, detection delay in days (median, p90), episodes after the shift",
              flush=True)
        for m in (1.0, 2.0, 3.0):
            outcomes = pool.map(_shift, [(seed, m) for seed in range(30_000, 30_200)])
            found = sorted(d for d, _ in outcomes if d is not None)
            episodes = [e for _, e in outcomes]
            print(f"  +{m} sd: {len(found)}/{len(outcomes)}, median {found[len(found) // 2]}, "
                  f"p90 {found[int(len(found) * 0.9)]}, episodes {sum(episodes) / len(episodes):.2f}", flush=True)


if __name__ == "__main__":
    main()
