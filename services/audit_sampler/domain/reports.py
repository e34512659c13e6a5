"""Accuracy and calibration reports: periods in the region's time zone, weighted accuracy estimates,
error rates with Wilson intervals, root causes against the previous period, auditor agreement.

Pure: the rows come in as dataclasses (read by ``web/queries.py``), the report goes out as plain dicts
(JSON) or rows (CSV). Which items count:
- The accuracy estimate uses audited items of kind ``sample`` whose compensation was issued in the period
  (the compensation's local day), weighted by ``1 / effective inclusion probability``, with the estimator
  of ``shared.stats`` (the one every service reports with). Gold and calibration re-audits are not draws
  from the population and never enter it. Sampled items still waiting in a queue are non-response: the
  report counts them, gives their share, treats them as missing at random and shows what the estimate
  would be if every one of them failed or passed; the interval is exact (Clopper-Pearson, or Korn and
  Graubard's on the effective sample size), and "census" only when every compensation of the period was
  audited.
- A verdict overturned on dispute counts with the lead's decision, not the auditor's.
- Error rates by agent, team, reason code and attribute are shares of *audited* items (unweighted): they
  describe what the audits found, with Wilson intervals, not population rates.
- Money estimates are statistics reported in whole minor units (half up), never amounts to post.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from services.audit_sampler.domain.stats import (
    Estimate,
    cohens_kappa,
    percent_agreement,
    proportion_estimate,
    total_estimate,
    wilson_interval,
)
from services.audit_sampler.domain.verdicts import ATTRIBUTES
from shared.money import round_fraction


class PeriodKind(enum.StrEnum):
    DAY = "day"
    WEEK = "week"  # ISO week, Monday to Sunday
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class Period:
    kind: PeriodKind
    start: date  # first local day
    end: date  # first local day after the period
    timezone: str

    @property
    def label(self) -> str:
        if self.kind is PeriodKind.DAY:
            return self.start.isoformat()
        if self.kind is PeriodKind.WEEK:
            year, week, _ = self.start.isocalendar()
            return f"{year}-W{week:02d}"
        return f"{self.start.year:04d}-{self.start.month:02d}"

    @property
    def start_utc(self) -> datetime:
        return datetime.combine(self.start, time(0), tzinfo=ZoneInfo(self.timezone)).astimezone(UTC)

    @property
    def end_utc(self) -> datetime:
        return datetime.combine(self.end, time(0), tzinfo=ZoneInfo(self.timezone)).astimezone(UTC)

    def contains(self, day: date) -> bool:
        return self.start <= day < self.end

    def previous(self) -> Period:
        return period_containing(self.kind, self.start - timedelta(days=1), self.timezone)


def period_containing(kind: PeriodKind | str, day: date, timezone: str) -> Period:
    """The day, ISO week or calendar month holding the local date ``day``."""
    kind = PeriodKind(kind)
    if kind is PeriodKind.DAY:
        return Period(kind, day, day + timedelta(days=1), timezone)
    if kind is PeriodKind.WEEK:
        start = day - timedelta(days=day.weekday())
        return Period(kind, start, start + timedelta(days=7), timezone)
    start = day.replace(day=1)
    end = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    return Period(kind, start, end, timezone)


def recent_periods(period: Period, count: int) -> list[Period]:
    """``count`` consecutive periods ending with ``period``, oldest first."""
    out = [period]
    while len(out) < count:
        out.append(out[-1].previous())
    return out[::-1]


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True, slots=True)
class AuditedCompensation:
    """One audited sample item with its final verdict."""

    compensation_id: str
    agent_id: str
    team: str
    reason_code: str
    amount_minor: int
    probability: float  # effective inclusion probability of the draw
    passed: bool
    error_category: str | None = None
    corrected_amount_minor: int | None = None  # None: the amount stood
    failed_attributes: frozenset[str] = frozenset()

    @property
    def right_amount_minor(self) -> int:
        if self.passed:
            return self.amount_minor
        if "warranted" in self.failed_attributes:
            return 0
        return self.amount_minor if self.corrected_amount_minor is None else self.corrected_amount_minor

    @property
    def over_minor(self) -> int:
        return max(0, self.amount_minor - self.right_amount_minor)

    @property
    def under_minor(self) -> int:
        return max(0, self.right_amount_minor - self.amount_minor)


@dataclass(frozen=True, slots=True)
class PopulationCount:
    """Every manual compensation of the region and period (the sampling frame) and how many were drawn."""

    size: int
    sampled: int
    amount_minor: int
    dropped_by_capacity: int = 0


@dataclass(frozen=True, slots=True)
class CalibrationPair:
    """A blind double audit: the first auditor's and the second auditor's scores on one compensation."""

    primary_auditor: str
    second_auditor: str
    primary: Mapping[str, bool]
    second: Mapping[str, bool]
    primary_passed: bool
    second_passed: bool


@dataclass(frozen=True, slots=True)
class GoldResult:
    auditor_id: str
    local_day: date
    correct: bool


# ------------------------------------------------------------------ output helpers


def _minor(value: float) -> int | None:
    if value != value or value in (float("inf"), float("-inf")):  # NaN or unbounded: nothing to report
        return None
    return round_fraction(Fraction(value))


def _share(value: float) -> float | None:
    return None if value != value else round(value, 6)


INTERVAL_METHODS = {
    "census": "census: every compensation of the period was audited, no sampling error",
    "clopper_pearson": "exact binomial (Clopper-Pearson) interval on the audited items",
    "clopper_pearson_effective_n": "exact binomial interval on the effective sample size of the weighted "
                                   "sample (Korn-Graubard)",
    "no_sample": "nothing audited: no estimate",
    "normal": "normal interval on the linearised variance",
    "error_rate_bound": "no misstatement found: upper bound = exact upper bound of the misstated share "
                        "times the amount paid",
    "no_errors_seen": "no misstatement found, and no largest misstatement to bound it by",
    "not_estimable": "too few audits with a misstatement to estimate its variance",
}


def _nonresponse_json(est: Estimate) -> dict[str, Any] | None:
    nr = est.nonresponse
    if nr is None:
        return None
    return {"unaudited": nr.unaudited, "sampled": nr.sampled, "share": _share(nr.share),
            "weighted_share": _share(nr.weighted_share), "treatment": nr.treatment,
            "if_all_unaudited_failed": None if nr.bounds is None else _share(nr.bounds.low),
            "if_all_unaudited_passed": None if nr.bounds is None else _share(nr.bounds.high)}


def _estimate_json(est: Estimate) -> dict[str, Any]:
    return {"estimate": _share(est.value), "ci95_low": _share(est.interval.low),
            "ci95_high": _share(est.interval.high), "confidence": est.confidence,
            "standard_error": _share(est.standard_error), "audited": est.sample_size,
            "effective_sample_size": round(est.effective_sample_size, 2), "interval_method": est.method,
            "interval_method_text": INTERVAL_METHODS.get(est.method, est.method),
            "nonresponse": _nonresponse_json(est)}


def _money_json(est: Estimate) -> dict[str, Any]:
    return {"estimate_minor": _minor(est.value), "ci95_low_minor": _minor(est.interval.low),
            "ci95_high_minor": _minor(est.interval.high), "upper_bound_minor": _minor(est.interval.high),
            "interval_method": est.method, "interval_method_text": INTERVAL_METHODS.get(est.method, est.method)}


@dataclass(frozen=True, slots=True)
class RateRow:
    key: str
    audited: int
    errors: int
    rate: float
    ci_low: float
    ci_high: float
    amount_minor: int = 0  # money misstated (over + under) among the audited items of this row

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "audited": self.audited, "errors": self.errors,
                "error_rate": round(self.rate, 6), "ci95_low": round(self.ci_low, 6),
                "ci95_high": round(self.ci_high, 6), "misstated_minor": self.amount_minor}


def _rates(items: Iterable[AuditedCompensation], key: Callable[[AuditedCompensation], Iterable[str]],
           failed: Callable[[AuditedCompensation, str], bool]) -> list[RateRow]:
    audited: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    amount: dict[str, int] = defaultdict(int)
    for item in items:
        for k in key(item):
            audited[k] += 1
            if failed(item, k):
                errors[k] += 1
                amount[k] += item.over_minor + item.under_minor
    rows = []
    for k, n in audited.items():
        iv = wilson_interval(errors[k], n)
        rows.append(RateRow(k, n, errors[k], errors[k] / n, iv.low, iv.high, amount[k]))
    # most errors first, then highest rate: what a lead looks at first
    rows.sort(key=lambda r: (-r.errors, -r.rate, r.key))
    return rows


def error_rates(items: Sequence[AuditedCompensation]) -> dict[str, list[RateRow]]:
    return {
        "agent": _rates(items, lambda i: [i.agent_id], lambda i, _: not i.passed),
        "team": _rates(items, lambda i: [i.team], lambda i, _: not i.passed),
        "reason_code": _rates(items, lambda i: [i.reason_code], lambda i, _: not i.passed),
        "attribute": _rates(items, lambda _: ATTRIBUTES, lambda i, a: a in i.failed_attributes),
    }


@dataclass(frozen=True, slots=True)
class RootCause:
    category: str
    count: int
    misstated_minor: int
    share_of_audited: float
    previous_count: int
    previous_share: float

    @property
    def trend(self) -> str:
        if self.previous_count == 0:
            return "new" if self.count else "flat"
        delta = self.share_of_audited - self.previous_share
        if abs(delta) < 0.005:  # half a percentage point: noise at typical audit volumes
            return "flat"
        return "up" if delta > 0 else "down"

    def as_json(self) -> dict[str, Any]:
        return {"category": self.category, "count": self.count, "misstated_minor": self.misstated_minor,
                "share_of_audited": round(self.share_of_audited, 6), "previous_count": self.previous_count,
                "previous_share_of_audited": round(self.previous_share, 6), "trend": self.trend}


def root_causes(current: Sequence[AuditedCompensation], previous: Sequence[AuditedCompensation],
                top: int = 10) -> list[RootCause]:
    def tally(items: Sequence[AuditedCompensation]) -> tuple[dict[str, int], dict[str, int]]:
        counts: dict[str, int] = defaultdict(int)
        money: dict[str, int] = defaultdict(int)
        for i in items:
            if not i.passed:
                category = i.error_category or "uncategorised"
                counts[category] += 1
                money[category] += i.over_minor + i.under_minor
        return counts, money

    now_counts, now_money = tally(current)
    prev_counts, _ = tally(previous)
    n_now, n_prev = max(len(current), 1), max(len(previous), 1)
    causes = [RootCause(c, now_counts.get(c, 0), now_money.get(c, 0), now_counts.get(c, 0) / n_now,
                        prev_counts.get(c, 0), prev_counts.get(c, 0) / n_prev)
              for c in set(now_counts) | set(prev_counts)]
    causes.sort(key=lambda r: (-r.count, -r.misstated_minor, r.category))
    return causes[:top]


# ------------------------------------------------------------------ accuracy report


@dataclass(frozen=True)
class AccuracyReport:
    region: str
    currency: str
    period: Period
    population: PopulationCount
    audited: int
    accuracy: Estimate
    error_rate: Estimate
    over_compensation: Estimate
    under_compensation: Estimate
    rates: dict[str, list[RateRow]]
    causes: list[RootCause]
    previous_accuracy: Estimate | None = None
    unaudited: int = 0  # sampled items of the period still waiting for their audit (non-response)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self) -> dict[str, Any]:
        previous = self.previous_accuracy
        return {
            "region": self.region, "currency": self.currency,
            "period": {"kind": self.period.kind.value, "label": self.period.label,
                       "start_local": self.period.start.isoformat(), "end_local": self.period.end.isoformat(),
                       "timezone": self.period.timezone, "start_utc": self.period.start_utc.isoformat(),
                       "end_utc": self.period.end_utc.isoformat()},
            "population": {"compensations": self.population.size, "amount_minor": self.population.amount_minor,
                           "sampled": self.population.sampled, "audited": self.audited,
                           "unaudited": self.unaudited, "dropped_by_capacity": self.population.dropped_by_capacity},
            "accuracy": _estimate_json(self.accuracy),
            "error_rate": _estimate_json(self.error_rate),
            "previous_period_accuracy": None if previous is None else _estimate_json(previous),
            "misstated": {"over_compensation": _money_json(self.over_compensation),
                          "under_compensation": _money_json(self.under_compensation)},
            "error_rates": {dim: [r.as_json() for r in rows] for dim, rows in self.rates.items()},
            "root_causes": [c.as_json() for c in self.causes],
            "method": METHOD,
            "generated_at": self.generated_at.isoformat(),
        }

    def csv_rows(self) -> list[list[Any]]:
        """Tidy rows under ``CSV_HEADER``: one line per figure, so a spreadsheet filters by section."""
        rows: list[list[Any]] = []
        base = [self.region, self.period.kind.value, self.period.label]

        def est(section: str, key: str, e: Estimate, audited: int) -> None:
            rows.append([*base, section, key, audited, "", _share(e.value), _share(e.interval.low),
                         _share(e.interval.high), "", self.currency])

        est("accuracy", "all", self.accuracy, self.audited)
        est("error_rate", "all", self.error_rate, self.audited)
        nr = self.accuracy.nonresponse
        if nr is not None:
            # the unaudited count in the "errors" column is not an error count: the key says what it is
            rows.append([*base, "nonresponse", "unaudited_sampled", self.audited, nr.unaudited, _share(nr.share),
                         None if nr.bounds is None else _share(nr.bounds.low),
                         None if nr.bounds is None else _share(nr.bounds.high), "", self.currency])
        for name, e in (("over_compensation", self.over_compensation),
                        ("under_compensation", self.under_compensation)):
            rows.append([*base, "misstated", name, self.audited, "", "", _minor(e.interval.low),
                         _minor(e.interval.high), _minor(e.value), self.currency])
        for dim, rate_rows in self.rates.items():
            for r in rate_rows:
                rows.append([*base, f"error_rate_by_{dim}", r.key, r.audited, r.errors, round(r.rate, 6),
                             round(r.ci_low, 6), round(r.ci_high, 6), r.amount_minor, self.currency])
        for c in self.causes:
            rows.append([*base, "root_cause", c.category, self.audited, c.count, round(c.share_of_audited, 6),
                         "", "", c.misstated_minor, self.currency])
        return rows


CSV_HEADER = ["region", "period", "period_label", "section", "key", "audited", "errors", "value",
              "ci95_low", "ci95_high", "amount_minor", "currency"]


METHOD = ("Hajek (Horvitz-Thompson ratio) estimate over the audited sample items, weighted by 1/effective "
          "inclusion probability, with the Poisson-sampling variance by linearisation (shared.stats). Sampled "
          "items not audited yet are non-response: counted, treated as missing at random (the audited items "
          "stand for them) and bounded (the estimate if every one of them failed or passed). 95% exact "
          "interval: Clopper-Pearson on the audited items, or with unequal weights on the design-based "
          "effective sample size (Korn-Graubard); census (no interval) only when every compensation of the "
          "period was audited. Money misstated: N times the Hajek mean with a normal interval; with no "
          "misstatement found, the exact upper bound of the misstated share times the amount paid. Error "
          "rates by dimension: shares of the audited items with Wilson 95% intervals.")


def accuracy_estimates(audited: Sequence[AuditedCompensation], unaudited: Sequence[float],
                       population_size: int | None) -> tuple[Estimate, Estimate]:
    """(accuracy, error rate) of a period: the shared estimator with its non-response and population."""
    probs = [i.probability for i in audited]
    accuracy = proportion_estimate([i.passed for i in audited], probs, unaudited_probs=unaudited,
                                   population_size=population_size)
    error = proportion_estimate([not i.passed for i in audited], probs, unaudited_probs=unaudited,
                                population_size=population_size)
    return accuracy, error


def accuracy_report(*, region: str, currency: str, period: Period, population: PopulationCount,
                    audited: Sequence[AuditedCompensation],
                    previous_audited: Sequence[AuditedCompensation] = (),
                    unaudited: Sequence[float] = (), previous_unaudited: Sequence[float] = ()) -> AccuracyReport:
    """``unaudited``: the effective inclusion probabilities of the period's sampled items that have no
    audit yet (and ``previous_unaudited`` of the previous period's)."""
    items = list(audited)
    probs = [i.probability for i in items]
    accuracy, error = accuracy_estimates(items, unaudited, population.size)
    over = total_estimate([i.over_minor for i in items], probs, population.size, unaudited_probs=unaudited,
                          value_cap_total=population.amount_minor)
    under = total_estimate([i.under_minor for i in items], probs, population.size, unaudited_probs=unaudited)
    previous = (accuracy_estimates(previous_audited, previous_unaudited, None)[0]
                if previous_audited else None)
    return AccuracyReport(region, currency, period, population, len(items), accuracy, error, over, under,
                          error_rates(items), root_causes(items, previous_audited), previous, len(unaudited))


# ------------------------------------------------------------------ calibration report


@dataclass(frozen=True, slots=True)
class AgreementRow:
    key: str
    pairs: int
    percent_agreement: float | None
    kappa: float | None

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "pairs": self.pairs,
                "percent_agreement": None if self.percent_agreement is None else round(self.percent_agreement, 6),
                "kappa": None if self.kappa is None else round(self.kappa, 6)}


def agreement_by_attribute(pairs: Sequence[CalibrationPair]) -> list[AgreementRow]:
    rows = []
    for attribute in ATTRIBUTES:
        scored = [(p.primary[attribute], p.second[attribute]) for p in pairs
                  if attribute in p.primary and attribute in p.second]
        a = [x for x, _ in scored]
        b = [y for _, y in scored]
        rows.append(AgreementRow(attribute, len(scored), percent_agreement(a, b), cohens_kappa(a, b)))
    passed_a = [p.primary_passed for p in pairs]
    passed_b = [p.second_passed for p in pairs]
    rows.append(AgreementRow("overall_verdict", len(pairs), percent_agreement(passed_a, passed_b),
                             cohens_kappa(passed_a, passed_b)))
    return rows


def agreement_by_auditor(pairs: Sequence[CalibrationPair]) -> list[AgreementRow]:
    """Each auditor against whoever double-audited with them: the verdict (pass/fail) kappa and the
    percent agreement over every attribute scored in those pairs."""
    verdicts: dict[str, tuple[list[bool], list[bool]]] = defaultdict(lambda: ([], []))
    attributes: dict[str, list[bool]] = defaultdict(list)
    for p in pairs:
        for me, mine, theirs, my_pass, their_pass in (
                (p.primary_auditor, p.primary, p.second, p.primary_passed, p.second_passed),
                (p.second_auditor, p.second, p.primary, p.second_passed, p.primary_passed)):
            verdicts[me][0].append(my_pass)
            verdicts[me][1].append(their_pass)
            attributes[me].extend(mine[a] == theirs[a] for a in ATTRIBUTES if a in mine and a in theirs)
    rows = []
    for auditor, (mine_v, theirs_v) in verdicts.items():
        agreed = attributes[auditor]
        rows.append(AgreementRow(auditor, len(mine_v), sum(agreed) / len(agreed) if agreed else None,
                                 cohens_kappa(mine_v, theirs_v)))
    rows.sort(key=lambda r: (r.kappa is None, r.kappa if r.kappa is not None else 0.0, r.key))
    return rows


@dataclass(frozen=True, slots=True)
class GoldPoint:
    period: str
    auditor_id: str  # "*" for every auditor together
    items: int
    correct: int
    accuracy: float | None
    ci_low: float
    ci_high: float

    def as_json(self) -> dict[str, Any]:
        return {"period": self.period, "auditor_id": self.auditor_id, "items": self.items,
                "correct": self.correct, "accuracy": None if self.accuracy is None else round(self.accuracy, 6),
                "ci95_low": round(self.ci_low, 6), "ci95_high": round(self.ci_high, 6)}


def gold_accuracy(results: Sequence[GoldResult], periods: Sequence[Period]) -> list[GoldPoint]:
    """Accuracy on known-answer items per period (oldest first), for everyone and per auditor."""
    points = []
    for period in periods:
        inside = [r for r in results if period.contains(r.local_day)]
        groups: dict[str, list[GoldResult]] = defaultdict(list)
        for r in inside:
            groups[r.auditor_id].append(r)
        for auditor, rs in [("*", inside), *sorted(groups.items())]:
            correct = sum(r.correct for r in rs)
            iv = wilson_interval(correct, len(rs))
            points.append(GoldPoint(period.label, auditor, len(rs), correct,
                                    correct / len(rs) if rs else None, iv.low, iv.high))
    return points


@dataclass(frozen=True)
class CalibrationReport:
    region: str
    period: Period
    by_attribute: list[AgreementRow]
    by_auditor: list[AgreementRow]
    gold: list[GoldPoint]

    def as_json(self) -> dict[str, Any]:
        return {"region": self.region, "period": {"kind": self.period.kind.value, "label": self.period.label,
                                                  "timezone": self.period.timezone},
                "agreement_by_attribute": [r.as_json() for r in self.by_attribute],
                "agreement_by_auditor": [r.as_json() for r in self.by_auditor],
                "gold_accuracy": [g.as_json() for g in self.gold],
                "method": "Cohen's kappa and percent agreement over blind double audits in the period; "
                          "gold accuracy with Wilson 95% intervals."}

    def csv_rows(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        base = [self.region, self.period.kind.value, self.period.label]
        for section, agreement in (("agreement_by_attribute", self.by_attribute),
                                   ("agreement_by_auditor", self.by_auditor)):
            for r in agreement:
                rows.append([*base, section, r.key, r.pairs, r.percent_agreement, r.kappa, "", ""])
        for g in self.gold:
            rows.append([*base, f"gold_accuracy:{g.period}", g.auditor_id, g.items, g.accuracy, "",
                         round(g.ci_low, 6), round(g.ci_high, 6)])
        return rows


CALIBRATION_CSV_HEADER = ["region", "period", "period_label", "section", "key", "count",
                          "percent_agreement_or_accuracy", "kappa", "ci95_low", "ci95_high"]


def calibration_report(*, region: str, period: Period, pairs: Sequence[CalibrationPair],
                       gold: Sequence[GoldResult], history: int = 6) -> CalibrationReport:
    periods = recent_periods(period, history)
    return CalibrationReport(region, period, agreement_by_attribute(pairs), agreement_by_auditor(pairs),
                             gold_accuracy(gold, periods))
