"""Spike detection on one count series (tickets per bucket of one (region, reason), (region, carrier) or
(region, seller)), with a stated false-alarm budget. Pure Python, no I/O; docs/insights-detection.md
states the detector, its parameters and the rates measured on synthetic series.

The detector walks the series forward; each bucket is judged on the buckets before it only:

1. **Seasonal baseline.** The same bucket of the week (same weekday for day buckets, same weekday and
   hour on the region's wall clock for hour buckets) in each of the last ``history_weeks`` weeks, each
   carried forward by the series' trend (a log-linear fit to the weekly totals, Poisson-weighted), then
   averaged without the highest and the lowest week (one odd week, a holiday or a missed spike, does not
   move it).
2. **Level correction.** The ratio of what the last ``level_window_weeks`` weeks counted to what their own
   baselines expected, soft-thresholded by ``level_shrink`` standard errors toward 1, so a level shift
   moves the baseline within weeks while ordinary noise does not move it at all.
3. **Count-aware band.** The prediction variance is ``phi**2 * expected * var_factor``: Poisson noise of the
   bucket plus the baseline's own estimation error (the weeks' mean and the trend's), times the
   over-dispersion ``phi`` (a winsorised standard deviation of the recent standardised residuals, at
   least 1). The band is the ``spike_alpha`` quantile pair of the Poisson (phi = 1) or negative binomial
   count with that mean and variance, so low and over-dispersed counts get their skewed right tail.
4. **Spike rule.** A bucket above the band's upper edge, by at least ``min_excess``, with an expected
   value of at least ``min_expected`` (the minimum-volume guard), is a *spike*. Its count is winsorised to
   the upper edge in the history later buckets see, so one spike does not lift next week's baseline.
5. **Shift rule.** A one-sided CUSUM of the standardised residuals (each clipped at ``cusum_clip`` so a
   lone spike cannot trip it) with reference ``cusum_k`` finds sustained rises too small for the spike
   rule: a *shift* is raised when the sum passes ``cusum_h`` and stays raised until it falls below half
   of it (one episode, not a flicker). The sum is capped at 1.5 h so it falls back soon after the
   baseline has adapted.

``spike_alpha`` and ``cusum_h`` follow from the budget: the spike rule may spend ``spike_share`` of
``false_alarms_per_13_weeks`` (alpha = share x budget / buckets in 13 weeks) and the shift rule
``shift_share`` (h from Siegmund's approximation of the in-control run length); the rest is slack for
model error. Consecutive alerts are one episode (``merge_episodes``); the budget counts episodes.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.insights.domain.movers import Contributor, spike_contributors


class BucketSize(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"


SEASON_BUCKETS = {BucketSize.HOUR: 168, BucketSize.DAY: 7}  # buckets in a week
WEEKS_IN_BUDGET = 13


class AlertKind(enum.StrEnum):
    SPIKE = "spike"  # one bucket above the band
    SHIFT = "shift"  # a sustained rise found by the CUSUM


class NoVerdict(enum.StrEnum):
    HISTORY = "history"  # fewer than min_history_weeks weeks before the bucket
    VOLUME = "volume"  # expected below min_expected: too small to alert on


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket of a series: its start (aware; a local midnight for day buckets) and its count."""

    start: datetime
    count: int

    def __post_init__(self) -> None:
        if not isinstance(self.start, datetime) or self.start.utcoffset() is None:
            raise ValueError(f"bucket start must be a timezone-aware datetime, got {self.start!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"count must be an int >= 0, got {self.count!r}")


def _norm_ppf(p: float) -> float:
    """Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9, then one
    Newton step on erfc)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p > 1 - 0.02425:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


def _cusum_threshold(k: float, arl: float) -> float:
    """The h whose in-control average run length is ``arl`` for a one-sided CUSUM with reference ``k`` on
    unit-variance residuals: Siegmund's approximation ARL = (exp(2kb) - 2kb - 1) / (2k^2), b = h + 1.166."""
    lo, hi = 0.0, 100.0
    for _ in range(100):
        h = (lo + hi) / 2
        b = 2 * k * (h + 1.166)
        if (math.exp(b) - b - 1) / (2 * k * k) < arl:
            lo = h
        else:
            hi = h
    return (lo + hi) / 2


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """How a series is judged. The defaults are the documented detector (docs/insights-detection.md)."""

    bucket: BucketSize = BucketSize.DAY
    timezone: str = "UTC"  # the region's: day buckets start at its local midnight, weeks on its wall clock
    history_weeks: int = 52  # baseline weeks (same bucket of the week), and the trend's
    min_history_weeks: int = 4  # fewer weeks before a bucket: no verdict
    false_alarms_per_13_weeks: float = 1.0  # the budget: false episodes per series per 13 weeks
    spike_share: float = 0.75  # of the budget, for the spike rule
    shift_share: float = 0.05  # of the budget, for the shift rule (the rest is slack for model error)
    cusum_k: float = 0.5  # reference value, in prediction standard deviations (tuned to 1 sd shifts)
    cusum_clip: float = 2.5  # residuals above this feed the CUSUM as this
    level_window_weeks: int = 2
    level_shrink: float = 1.0  # level corrections within this many standard errors of 1 are ignored
    min_expected: float = 5.0  # minimum-volume guard: no verdict below this expected count per bucket
    min_excess: int = 5  # a spike is at least this many more than expected

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.timezone!r}") from exc
        if not 1 <= self.min_history_weeks <= self.history_weeks:
            raise ValueError("need 1 <= min_history_weeks <= history_weeks")
        if self.false_alarms_per_13_weeks <= 0:
            raise ValueError("false_alarms_per_13_weeks must be > 0")
        if not (0 < self.spike_share and 0 <= self.shift_share and self.spike_share + self.shift_share <= 1):
            raise ValueError("spike_share must be > 0, shift_share >= 0 and together at most 1")
        if self.cusum_k <= 0 or self.cusum_clip <= self.cusum_k:
            raise ValueError("need 0 < cusum_k < cusum_clip")
        if self.level_window_weeks < 1 or self.level_shrink < 0:
            raise ValueError("level_window_weeks must be >= 1, level_shrink >= 0")
        if self.min_expected < 0 or self.min_excess < 0:
            raise ValueError("the volume guards must be >= 0")
        if self.spike_alpha >= 0.5:
            raise ValueError("the budget is too large for its bucket size: the band would be empty")

    @property
    def season(self) -> int:
        return SEASON_BUCKETS[self.bucket]

    @property
    def buckets_in_budget(self) -> int:
        return WEEKS_IN_BUDGET * self.season

    @property
    def spike_alpha(self) -> float:
        """One-sided tail probability of the band per bucket."""
        return self.spike_share * self.false_alarms_per_13_weeks / self.buckets_in_budget

    @property
    def cusum_h(self) -> float:
        if self.shift_share == 0:
            return math.inf
        return _cusum_threshold(self.cusum_k, self.buckets_in_budget / (self.shift_share
                                                                        * self.false_alarms_per_13_weeks))


@dataclass(frozen=True, slots=True)
class Alert:
    kind: AlertKind
    bucket_start: datetime  # UTC
    bucket_end: datetime  # UTC, the next bucket's start
    observed: int
    expected: float
    lower: float  # the band: counts in [lower, upper] are ordinary
    upper: float
    sigma: float  # prediction standard deviation
    z: float  # (observed - expected) / sigma
    cusum: float
    contributors: tuple[Contributor, ...] = ()  # attached by the caller: with_contributors()

    @property
    def excess(self) -> float:
        return self.observed - self.expected


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one bucket was judged (every bucket, for charts of the band); ``alert`` set when it fired."""

    bucket_start: datetime
    bucket_end: datetime
    observed: int
    expected: float | None  # None when there is no verdict
    lower: float | None
    upper: float | None
    no_verdict: NoVerdict | None
    alert: Alert | None


@dataclass(frozen=True, slots=True)
class Episode:
    """Consecutive alerts of one series, reported as one."""

    alerts: tuple[Alert, ...]

    @property
    def start(self) -> datetime:
        return self.alerts[0].bucket_start

    @property
    def end(self) -> datetime:
        return self.alerts[-1].bucket_end

    @property
    def kind(self) -> AlertKind:
        return AlertKind.SPIKE if any(a.kind is AlertKind.SPIKE for a in self.alerts) else AlertKind.SHIFT

    @property
    def peak(self) -> Alert:
        return max(self.alerts, key=lambda a: (a.z, a.bucket_start))

    @property
    def observed(self) -> int:
        return sum(a.observed for a in self.alerts)

    @property
    def expected(self) -> float:
        return sum(a.expected for a in self.alerts)


def merge_episodes(alerts: Sequence[Alert]) -> list[Episode]:
    """Alerts of one series grouped into episodes: an alert whose bucket starts where the previous one's
    ends continues its episode."""
    ordered = sorted(alerts, key=lambda a: a.bucket_start)
    episodes: list[list[Alert]] = []
    for alert in ordered:
        if episodes and alert.bucket_start <= episodes[-1][-1].bucket_end:
            if alert.bucket_start < episodes[-1][-1].bucket_end:
                raise ValueError(f"alerts overlap at {alert.bucket_start.isoformat()}: one series per call")
            episodes[-1].append(alert)
        else:
            episodes.append([alert])
    return [Episode(tuple(e)) for e in episodes]


def with_contributors(alert: Alert, at_bucket: Mapping[str, int], baseline_buckets: Sequence[Mapping[str, int]],
                      *, top: int = 3) -> Alert:
    """The alert with the values that carry its excess (see ``movers.spike_contributors``)."""
    return replace(alert, contributors=spike_contributors(at_bucket, baseline_buckets, top=top))


def baseline_bucket_starts(alert: Alert, params: DetectorParams) -> list[datetime]:
    """Starts (UTC) of the buckets the baseline of ``alert`` compared it with: the same bucket of the week
    in each of the ``history_weeks`` weeks before, on the region's wall clock. The caller reads their
    breakdowns for ``with_contributors``."""
    tz = ZoneInfo(params.timezone)
    local = alert.bucket_start.astimezone(tz)
    out = []
    for j in range(1, params.history_weeks + 1):
        if params.bucket is BucketSize.DAY:
            out.append(datetime.combine(local.date() - timedelta(weeks=j), time(0), tz).astimezone(UTC))
        else:
            out.append((local - timedelta(weeks=j)).astimezone(UTC))
    return out


# --- the series on a calendar --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Calendar:
    starts: list[datetime]  # UTC, one per bucket, contiguous
    ends: list[datetime]
    counts: list[int]
    week_before: list[int]  # index of the same bucket one week earlier, -1 when outside the series


def _day_start(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tz).astimezone(UTC)


def _calendar(series: Sequence[Point], params: DetectorParams, start: datetime | None,
              end: datetime | None) -> _Calendar:
    for bound, name in ((start, "start"), (end, "end")):
        if bound is not None and (not isinstance(bound, datetime) or bound.utcoffset() is None):
            raise ValueError(f"{name} must be a timezone-aware datetime")
    if start is not None and end is not None and end <= start:
        raise ValueError("end must be after start")
    tz = ZoneInfo(params.timezone)
    counts: dict[datetime, int] = {}
    for point in series:
        at = point.start.astimezone(UTC)
        if at in counts:
            raise ValueError(f"two points for the bucket starting {at.isoformat()}")
        counts[at] = point.count
    starts: list[datetime]
    week_before: list[int]
    if params.bucket is BucketSize.DAY:
        def day_of(at: datetime, what: str) -> date:
            day = at.astimezone(tz).date()
            if _day_start(day, tz) != at.astimezone(UTC):
                raise ValueError(f"{what} {at.isoformat()} is not a midnight in {params.timezone}")
            return day
        days = [day_of(at, "bucket start").toordinal() for at in counts]
        first = day_of(start, "start").toordinal() if start is not None else min(days, default=None)
        last = day_of(end, "end").toordinal() - 1 if end is not None else max(days, default=None)
        if first is None or last is None or last < first:
            return _Calendar([], [], [], [])
        bounds = [_day_start(date.fromordinal(o), tz) for o in range(first, last + 2)]
        starts, ends = bounds[:-1], bounds[1:]
        week_before = [i - 7 if i >= 7 else -1 for i in range(len(starts))]
    else:
        hour = timedelta(hours=1)
        anchors = list(counts) + [b.astimezone(UTC) for b in (start, end) if b is not None]
        if not anchors:
            return _Calendar([], [], [], [])
        anchor = anchors[0]
        for at in anchors:
            if (at - anchor) % hour:
                raise ValueError(f"{at.isoformat()} is not on the hour grid of {anchor.isoformat()}")
        first_at = start.astimezone(UTC) if start is not None else min(counts, default=None)
        last_at = end.astimezone(UTC) - hour if end is not None else max(counts, default=None)
        if first_at is None or last_at is None or last_at < first_at:
            return _Calendar([], [], [], [])
        n = (last_at - first_at) // hour + 1
        starts = [first_at + i * hour for i in range(max(n, 0))]
        ends = [s + hour for s in starts]
        index = {s: i for i, s in enumerate(starts)}
        week_before = []
        for i, s in enumerate(starts):
            # the same hour on the region's wall clock a week earlier (167 or 169 hours across DST)
            j = index.get((s.astimezone(tz) - timedelta(weeks=1)).astimezone(UTC))
            week_before.append(j if j is not None and j < i else (i - 168 if i >= 168 else -1))
    outside = [at for at in counts if not (starts and starts[0] <= at <= starts[-1])]
    if outside:
        raise ValueError(f"point at {min(outside).isoformat()} is outside [start, end)")
    return _Calendar(starts, ends, [counts.get(s, 0) for s in starts], week_before)


# --- the count model's tails -----------------------------------------------------------------------------

_EXACT_UP_TO = 400.0  # above this variance the Cornish-Fisher expansion is within a small part of a count


@dataclass(frozen=True, slots=True)
class _CountModel:
    """Counts with mean ``mean`` and variance ``kappa * mean``: Poisson when kappa is 1, else the negative
    binomial (gamma-Poisson) with that variance, whose right tail is as skewed as over-dispersed counts
    are (a normal or a scaled Poisson tail would be too thin)."""

    mean: float
    kappa: float

    def _log_pmf(self, k: int) -> float:
        mu, kappa = self.mean, self.kappa
        if kappa <= 1 + 1e-12:
            return k * math.log(mu) - mu - math.lgamma(k + 1)
        r = mu / (kappa - 1)
        return (math.lgamma(k + r) - math.lgamma(r) - math.lgamma(k + 1) - r * math.log(kappa)
                + k * math.log1p(-1 / kappa))

    def _ratio_terms(self) -> tuple[float, float]:
        """pmf(k + 1) / pmf(k) = (k + a) / (k + 1) * q: returns (a, q); Poisson is the limit a*q = mean."""
        mu, kappa = self.mean, self.kappa
        if kappa <= 1 + 1e-12:
            return mu, 1.0  # (k + mu) * 1 / (k + 1) is not Poisson: handled by the caller
        return mu / (kappa - 1), 1 - 1 / kappa

    def _sum_up(self, k: int) -> float:
        """P(X >= k), summing from k upward (use above the mode)."""
        term = math.exp(self._log_pmf(k))
        total = 0.0
        poisson = self.kappa <= 1 + 1e-12
        a, q = self._ratio_terms()
        while term > 1e-13 * total:
            total += term
            term *= self.mean / (k + 1) if poisson else (k + a) / (k + 1) * q
            k += 1
        return total

    def _sum_down(self, k: int) -> float:
        """P(X <= k), summing from k downward (use below the mode)."""
        term = math.exp(self._log_pmf(k))
        total = 0.0
        poisson = self.kappa <= 1 + 1e-12
        a, q = self._ratio_terms()
        while k >= 0 and term > 1e-13 * total:
            total += term
            k -= 1
            if k >= 0:
                term *= (k + 1) / self.mean if poisson else (k + 1) / ((k + a) * q)
        return total

    def sf(self, k: int) -> float:
        """P(X >= k)."""
        if k <= 0:
            return 1.0
        return self._sum_up(k) if k > self.mean else max(0.0, 1.0 - self._sum_down(k - 1))

    def _cornish_fisher(self, z: float) -> float:
        mu, kappa = self.mean, self.kappa
        sd = math.sqrt(kappa * mu)
        if kappa <= 1 + 1e-12:
            g1, g2 = 1 / math.sqrt(mu), 1 / mu
        else:
            r, q = mu / (kappa - 1), 1 - 1 / kappa
            g1, g2 = (1 + q) / math.sqrt(r * q), 6 / r + (1 - q) ** 2 / (r * q)
        w = z + (z * z - 1) * g1 / 6 + (z ** 3 - 3 * z) * g2 / 24 - (2 * z ** 3 - 5 * z) * g1 * g1 / 36
        return mu + sd * w

    def upper(self, alpha: float, z: float) -> float:
        """Smallest u with P(X > u) <= alpha (``z`` is the normal 1 - alpha quantile)."""
        if self.mean <= 0:
            return 0.0
        if self.kappa * self.mean > _EXACT_UP_TO:
            return self._cornish_fisher(z)
        u = max(0, math.floor(self._cornish_fisher(z)))
        tail = self.sf(u + 1)
        while tail > alpha:
            u += 1
            tail -= math.exp(self._log_pmf(u))
        while u > 0 and tail + math.exp(self._log_pmf(u)) <= alpha:
            tail += math.exp(self._log_pmf(u))
            u -= 1
        return float(u)

    def lower(self, alpha: float, z: float) -> float:
        """Largest l with P(X < l) <= alpha."""
        if self.mean <= 0:
            return 0.0
        if self.kappa * self.mean > _EXACT_UP_TO:
            return max(0.0, self._cornish_fisher(-z))
        low = max(0, math.ceil(self._cornish_fisher(-z)))
        below = 1.0 - self.sf(low)  # P(X < low)
        while low > 0 and below > alpha:
            low -= 1
            below -= math.exp(self._log_pmf(low))
        while below + math.exp(self._log_pmf(low)) <= alpha:
            below += math.exp(self._log_pmf(low))
            low += 1
        return float(low)


# --- the detector ----------------------------------------------------------------------------------------

def _robust_scale(residuals: Sequence[float]) -> float:
    """A winsorised standard deviation: values beyond 3.5 MAD-sigmas of the median are pulled in, so a
    few real spikes do not widen the band for the weeks after them."""
    ordered = sorted(residuals)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    deviations = sorted(abs(r - median) for r in ordered)
    mad = deviations[n // 2] if n % 2 else (deviations[n // 2 - 1] + deviations[n // 2]) / 2
    spread = 1.4826 * mad
    low, high = median - 3.5 * spread, median + 3.5 * spread
    clipped = [min(max(r, low), high) for r in ordered]
    mean = sum(clipped) / n
    return math.sqrt(sum((r - mean) ** 2 for r in clipped) / (n - 1))


@dataclass(frozen=True, slots=True)
class _Trend:
    growth: float  # log growth per week
    spread: float  # sum of w_j (j - mean j)^2 with w_j = the week's count: 1 / var(growth) for Poisson weeks


def _trend(weeks: Sequence[float]) -> _Trend:
    """Log-linear trend of weekly totals (``weeks[0]`` the most recent), weighted least squares with
    Poisson weights; no trend from fewer than 3 weeks or an empty week."""
    if len(weeks) < 3 or min(weeks) <= 0:
        return _Trend(0.0, math.inf)
    total = sum(weeks)
    mean_j = sum(w * j for j, w in enumerate(weeks, 1)) / total
    spread = sum(w * (j - mean_j) ** 2 for j, w in enumerate(weeks, 1))
    mean_log = sum(w * math.log(w) for w in weeks) / total
    slope = sum(w * (j - mean_j) * (math.log(w) - mean_log) for j, w in enumerate(weeks, 1)) / spread
    return _Trend(-slope, spread)


_MIN_RESIDUALS = 14


def evaluate(series: Sequence[Point], params: DetectorParams, *, start: datetime | None = None,
             end: datetime | None = None) -> list[Verdict]:
    """Every bucket of the series judged. Missing buckets count 0 (rollups store no empty buckets);
    ``start``/``end`` (exclusive) extend the series with empty buckets, so pass ``end`` = the current
    bucket's start to judge up to the last complete bucket. Deterministic: the same input gives the
    same verdicts."""
    cal = _calendar(series, params, start, end)
    n = len(cal.counts)
    season = params.season
    alpha = params.spike_alpha
    z_alpha = _norm_ppf(1 - alpha)
    h = params.cusum_h
    cap = 1.5 * h
    level_window = params.level_window_weeks * season

    clean: list[float] = []  # the history as later buckets see it: spikes winsorised to their band
    prefix = [0.0]  # running sums of clean
    baseline: list[float] = [0.0] * n
    residuals: deque[float] = deque(maxlen=params.history_weeks * season)
    recent_c = recent_b = 0.0  # sums over the level window, judged buckets only
    in_window: deque[int] = deque()
    # the trend and the scale are refitted once a week (both move slowly)
    phi, phi_at, trend, cusum, shifting = 1.0, -1, _Trend(0.0, math.inf), 0.0, False
    growth: list[float] = []
    growth_at = -1
    out: list[Verdict] = []
    for t in range(n):
        observed = cal.counts[t]
        while in_window and in_window[0] < t - level_window:
            i = in_window.popleft()
            recent_c -= clean[i]
            recent_b -= baseline[i]
        lags: list[int] = []  # the same bucket 1, 2, ... weeks back
        i = t
        for _ in range(params.history_weeks):
            i = cal.week_before[i]
            if i < 0:
                break
            lags.append(i)
        if len(lags) < params.min_history_weeks:
            clean.append(float(observed))
            prefix.append(prefix[-1] + observed)
            out.append(Verdict(cal.starts[t], cal.ends[t], observed, None, None, None, NoVerdict.HISTORY, None))
            continue

        if t % season == 0 or growth_at < 0:
            full_weeks = min(len(lags), t // season)
            trend = _trend([prefix[t - (j - 1) * season] - prefix[t - j * season] for j in range(1, full_weeks + 1)])
            growth = [math.exp(trend.growth * j) for j in range(1, params.history_weeks + 1)]
            growth_at = t
        if (t % season == 0 or phi_at < 0) and len(residuals) >= _MIN_RESIDUALS:
            phi, phi_at = max(1.0, _robust_scale(residuals)), t

        # the same bucket of the week in each baseline week, carried forward by the trend; the highest and
        # the lowest dropped from 6 weeks on
        samples = sorted([clean[i] * g for i, g in zip(lags, growth, strict=False)])
        m = len(samples)
        b = (sum(samples) - samples[0] - samples[-1]) / (m - 2) if m >= 6 else sum(samples) / m
        mean_lag = (m + 1) / 2
        weeks_eff = m - 1.0 if m >= 6 else float(m)
        # variance of the estimate over the bucket's own (Poisson) variance: the weeks' mean, and the
        # trend's error carried over mean_lag weeks
        var_factor = 1 + 1 / weeks_eff + (b * mean_lag ** 2 / trend.spread if trend.spread < math.inf else 0.0)

        rho = 1.0
        if recent_b > 0:
            ratio = recent_c / recent_b
            gap = abs(ratio - 1) - params.level_shrink * phi * math.sqrt(var_factor / recent_b)
            if gap > 0:
                rho = 1 + math.copysign(gap, ratio - 1)
        expected = max(0.0, b * rho)
        baseline[t] = b

        if expected <= 0 or expected < params.min_expected:
            cusum, shifting = 0.0, False
            clean.append(float(observed))
            prefix.append(prefix[-1] + observed)
            in_window.append(t)
            recent_c += observed
            recent_b += b
            out.append(Verdict(cal.starts[t], cal.ends[t], observed, expected, None, None, NoVerdict.VOLUME, None))
            continue

        kappa = phi * phi * var_factor  # variance of (observed - expected) over a Poisson variance
        sigma = math.sqrt(kappa * expected)
        model = _CountModel(expected, kappa)
        upper = model.upper(alpha, z_alpha)
        lower = model.lower(alpha, z_alpha)
        z = (observed - expected) / sigma
        cusum = min(cap, max(0.0, cusum + min(z, params.cusum_clip) - params.cusum_k))
        kind = None
        kept_value = float(observed)
        if observed > upper and observed - expected >= params.min_excess:
            kind = AlertKind.SPIKE
            kept_value = upper
        elif cusum > h or (shifting and cusum > h / 2):
            # once raised, a shift stays raised until the sum falls below half the threshold, so a rise
            # that hovers around h is one episode, not a string of them
            kind = AlertKind.SHIFT
        shifting = kind is AlertKind.SHIFT or (shifting and kind is AlertKind.SPIKE)
        alert = None
        if kind is not None:
            alert = Alert(kind, cal.starts[t], cal.ends[t], observed, expected, lower, upper, sigma, z, cusum)
        out.append(Verdict(cal.starts[t], cal.ends[t], observed, expected, lower, upper, None, alert))
        clean.append(kept_value)
        prefix.append(prefix[-1] + kept_value)
        # the raw count: a scale fitted to winsorised counts would shrink itself (the robust estimate
        # already keeps real spikes out)
        residuals.append((observed - expected) / math.sqrt(expected * var_factor))
        in_window.append(t)
        recent_c += kept_value
        recent_b += b
    return out


def detect(series: Sequence[Point], params: DetectorParams | None = None, *, start: datetime | None = None,
           end: datetime | None = None) -> list[Alert]:
    """The alerts of one series (see ``evaluate`` for the arguments); ``merge_episodes`` groups them."""
    verdicts = evaluate(series, params or DetectorParams(), start=start, end=end)
    return [v.alert for v in verdicts if v.alert is not None]


__all__ = [
    "Alert", "AlertKind", "BucketSize", "DetectorParams", "Episode", "NoVerdict", "Point", "Verdict",
    "baseline_bucket_starts", "detect", "evaluate", "merge_episodes", "with_contributors",
]
