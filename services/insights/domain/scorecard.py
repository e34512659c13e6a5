"""The strategy scorecard: per strategy and region for a period, the facts and a verdict (keep / review /
retire) from the region's thresholds, with every reason written out. Pure: no I/O.

Peeking is safe because the return is judged **only at the planned sample** stated up front in the
thresholds file (``planned_buyers_per_group``, buyers with an elapsed return window in each of the treated
and holdout groups). Before that, the scorecard shows the numbers and their intervals but the verdict is
``review`` with the reason "planned sample not reached", never ``keep`` or ``retire``. Once reached, the
verdict is computed on **each group's first planned buyers** (by decision time; ``judged_treated`` /
``judged_control``), not on everyone seen so far: later looks find the same sample and the same verdict,
so looking every day (one test at a fixed sample, not one per look) cannot turn noise into a keep.
At the planned sample:

- ``retire`` when the 95% upper bound of incremental value per unit of cost is below
  ``retire_below_return_on_cost`` (the strategy cannot plausibly earn its cost);
- ``keep`` when the 95% lower bound reaches ``keep_min_return_on_cost`` (> 0, enforced by the loader)
  and no quality threshold (redemption, CSAT after compensation, time to compensate) fails;
- ``review`` otherwise, each unmet condition named.

With no true effect the lower bound of a two-sided 95% interval exceeds a positive threshold in at most
2.5% of strategies, so simulated A/A populations get "keep" well under 5% of the time (a unit test checks
it). A strategy without holdout buyers has "no evidence of return" and is reviewed, never kept on evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from services.insights.domain.returns import GroupTally, compare
from shared import stats
from shared.regions import catalogue

KEEP, REVIEW, RETIRE = "keep", "review", "retire"

_FIELDS = {
    "planned_buyers_per_group": "whole number >= 30: buyers (windows elapsed) per group before the return is judged",
    "keep_min_return_on_cost": "number > 0: the lower 95% bound of incremental value / cost must reach it to keep",
    "retire_below_return_on_cost": "number >= 0: retire when the upper 95% bound is below it",
    "min_redemption_rate": "number in [0, 1] or null: share of vouchers redeemed",
    "min_csat_after_compensation": "number in [1, 5] or null: mean CSAT of answers given after compensation",
    "min_csat_responses": "whole number >= 1: fewest CSAT answers before the CSAT threshold applies",
    "max_mean_hours_to_compensate": "number > 0 or null: mean hours from ticket to compensation",
}


@dataclass(frozen=True, slots=True)
class Thresholds:
    planned_buyers_per_group: int
    keep_min_return_on_cost: Fraction
    retire_below_return_on_cost: Fraction
    min_redemption_rate: float | None
    min_csat_after_compensation: float | None
    min_csat_responses: int
    max_mean_hours_to_compensate: float | None
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        # the file's name, never the server's path: answers and pages show it to every strategy manager
        return {"planned_buyers_per_group": self.planned_buyers_per_group,
                "keep_min_return_on_cost": str(float(self.keep_min_return_on_cost)),
                "retire_below_return_on_cost": str(float(self.retire_below_return_on_cost)),
                "min_redemption_rate": self.min_redemption_rate,
                "min_csat_after_compensation": self.min_csat_after_compensation,
                "min_csat_responses": self.min_csat_responses,
                "max_mean_hours_to_compensate": self.max_mean_hours_to_compensate, "file": Path(self.source).name}


@dataclass(frozen=True, slots=True)
class ThresholdError:
    file: str
    region: str | None
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.region or '-'}: {self.field}: {self.message}"


class ThresholdsLoadError(ValueError):
    def __init__(self, errors: list[ThresholdError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def _number(v: Any, *, lo: float, hi: float, lo_open: bool = False, nullable: bool = False) -> float | None:
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"must be a number, got {v!r}")
    try:
        x = float(v)
    except ValueError:
        raise ValueError(f"must be a number, got {v!r}") from None
    if not math.isfinite(x) or x < lo or x > hi or (lo_open and x == lo):
        raise ValueError(f"must be {'>' if lo_open else '>='} {lo:g} and <= {hi:g}, got {v!r}")
    return x


def _whole(v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"must be a whole number in {lo}..{hi}, got {v!r}")
    return v


def parse_thresholds(doc: Any, source: str) -> dict[str, Thresholds]:
    """Every region's thresholds, or ThresholdsLoadError listing every mistake (file, region, field)."""
    errors: list[ThresholdError] = []
    out: dict[str, Thresholds] = {}
    if not isinstance(doc, dict) or set(doc) != {"regions"} or not isinstance(doc["regions"], dict):
        raise ThresholdsLoadError([ThresholdError(source, None, "(file)", "must be a mapping with one key, 'regions'")])
    for code, block in doc["regions"].items():
        if code not in catalogue():
            errors.append(ThresholdError(source, str(code), "(region)", "not in the region catalogue"))
            continue
        if not isinstance(block, dict):
            errors.append(ThresholdError(source, code, "(region)", "must be a mapping of thresholds"))
            continue
        for key in sorted(set(block) - set(_FIELDS)):
            errors.append(ThresholdError(source, code, key, f"unknown field; known: {', '.join(_FIELDS)}"))
        for key in _FIELDS:
            if key not in block:
                errors.append(ThresholdError(source, code, key, f"is required ({_FIELDS[key]})"))
        parsers: dict[str, Any] = {
            "planned_buyers_per_group": lambda v: _whole(v, 30, 10_000_000),
            "keep_min_return_on_cost": lambda v: _number(v, lo=0, hi=1000, lo_open=True),
            "retire_below_return_on_cost": lambda v: _number(v, lo=0, hi=1000),
            "min_redemption_rate": lambda v: _number(v, lo=0, hi=1, nullable=True),
            "min_csat_after_compensation": lambda v: _number(v, lo=1, hi=5, nullable=True),
            "min_csat_responses": lambda v: _whole(v, 1, 10_000_000),
            "max_mean_hours_to_compensate": lambda v: _number(v, lo=0, hi=24 * 365, lo_open=True, nullable=True),
        }
        values: dict[str, Any] = {}
        for key, parse in parsers.items():
            if key not in block:
                continue  # reported as required above; every other mistake of the block is reported too
            try:
                values[key] = parse(block[key])
            except ValueError as exc:
                errors.append(ThresholdError(source, code, key, str(exc)))
        if any(e.region == code for e in errors):
            continue
        keep = Fraction(str(block["keep_min_return_on_cost"]))
        retire = Fraction(str(block["retire_below_return_on_cost"]))
        if retire > keep:
            errors.append(ThresholdError(source, code, "retire_below_return_on_cost",
                                         "must not exceed keep_min_return_on_cost"))
            continue
        out[code] = Thresholds(values["planned_buyers_per_group"], keep, retire, values["min_redemption_rate"],
                               values["min_csat_after_compensation"], values["min_csat_responses"],
                               values["max_mean_hours_to_compensate"], source)
    if errors:
        raise ThresholdsLoadError(errors)
    return out


def load_thresholds(path: str | Path) -> dict[str, Thresholds]:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ThresholdsLoadError([ThresholdError(str(p), None, "(file)", f"cannot be read: {exc}")]) from None
    return parse_thresholds(doc, str(p))


@dataclass(frozen=True, slots=True)
class StrategyFacts:
    """What insights knows of one strategy in one region and period."""

    strategy_id: str
    compensations: int = 0
    cost_minor: int = 0
    vouchers: int = 0
    redeemed: int = 0
    timed: int = 0  # compensations with a known ticket time
    ttc_seconds: int = 0  # their total time to compensate
    csat_responses: int = 0  # CSAT answers given after the compensation
    csat_sum: int = 0
    audited: int = 0
    audit_failed: int = 0
    treated: GroupTally = field(default_factory=lambda: GroupTally(0, 0, 0))
    control: GroupTally = field(default_factory=lambda: GroupTally(0, 0, 0))
    maturing: int = 0  # buyers of both groups whose return window is still open
    # Each group's first planned_buyers_per_group buyers, once both groups have that many: what is judged.
    judged_treated: GroupTally | None = None
    judged_control: GroupTally | None = None


@dataclass(frozen=True, slots=True)
class ScorecardRow:
    facts: StrategyFacts
    verdict: str
    reasons: tuple[str, ...]
    at_planned_sample: bool
    judged_buyers_per_group: int | None
    repeat_uplift: stats.Interval | None
    repeat_uplift_point: float | None
    return_on_cost: Fraction | None
    return_on_cost_interval: stats.Interval | None

    def as_dict(self, currency: str) -> dict[str, Any]:
        f = self.facts
        return {
            "strategy_id": f.strategy_id, "verdict": self.verdict, "reasons": list(self.reasons),
            "at_planned_sample": self.at_planned_sample, "judged_buyers_per_group": self.judged_buyers_per_group,
            "currency": currency,
            "compensations": f.compensations, "cost_minor": f.cost_minor,
            "redemption_rate": None if f.vouchers == 0 else f.redeemed / f.vouchers, "vouchers": f.vouchers,
            "mean_hours_to_compensate": None if f.timed == 0 else f.ttc_seconds / f.timed / 3600,
            "csat_after_compensation": None if f.csat_responses == 0 else f.csat_sum / f.csat_responses,
            "csat_responses": f.csat_responses, "audited": f.audited, "audit_findings": f.audit_failed,
            "treated_buyers": f.treated.buyers, "holdout_buyers": f.control.buyers, "maturing_buyers": f.maturing,
            "repeat_rate_uplift": self.repeat_uplift_point,
            "repeat_rate_uplift_ci95": None if self.repeat_uplift is None else [self.repeat_uplift.low,
                                                                                 self.repeat_uplift.high],
            "return_on_cost": None if self.return_on_cost is None else round(float(self.return_on_cost), 4),
            "return_on_cost_ci95": None if self.return_on_cost_interval is None else [
                self.return_on_cost_interval.low, self.return_on_cost_interval.high],
        }


def _fmt(x: float | Fraction) -> str:
    return f"{float(x):.2f}"


def evaluate(facts: StrategyFacts, t: Thresholds) -> ScorecardRow:
    """The verdict and its reasons (see the module's docstring for the rules)."""
    reasons: list[str] = []
    tr, co = facts.treated, facts.control
    at_plan = tr.buyers >= t.planned_buyers_per_group and co.buyers >= t.planned_buyers_per_group
    judged = None
    if at_plan and facts.judged_treated is not None and facts.judged_control is not None:
        # The fixed planned sample: the intervals and the verdict no longer move as buyers accrue.
        tr, co = facts.judged_treated, facts.judged_control
        judged = t.planned_buyers_per_group
    uplift = uplift_point = roc = roc_ci = None
    if tr.buyers >= 1 and co.buyers >= 1:
        uplift = stats.newcombe_interval(tr.returning, tr.buyers, co.returning, co.buyers)
        uplift_point = tr.returning / tr.buyers - co.returning / co.buyers
    if tr.buyers >= 2 and co.buyers >= 2 and tr.cost_minor > 0:
        summary = compare(tr, co, min_group=2)
        assert summary.comparison is not None
        roc = summary.comparison.return_on_cost
        per_buyer = stats.mean_difference_interval(tr.value_minor, tr.value_squares, tr.buyers,
                                                   co.value_minor, co.value_squares, co.buyers)
        scale = tr.buyers / tr.cost_minor
        roc_ci = stats.Interval(per_buyer.low * scale, per_buyer.high * scale)
    verdict = REVIEW
    if co.buyers == 0 and facts.maturing == 0:
        reasons.append("no holdout buyers in the period: no evidence of return")
    elif not at_plan:
        reasons.append(f"planned sample not reached: treated {tr.buyers}/{t.planned_buyers_per_group}, holdout "
                       f"{co.buyers}/{t.planned_buyers_per_group} buyers with an elapsed window; the return is "
                       f"judged only at the planned sample")
    elif roc_ci is None:
        reasons.append("nothing issued to the treated buyers: no return on cost to judge")
    elif roc_ci.high < t.retire_below_return_on_cost:
        verdict = RETIRE
        reasons.append(f"incremental value per unit of cost is at most {_fmt(roc_ci.high)} (95% upper bound), "
                       f"below the retire threshold {_fmt(t.retire_below_return_on_cost)}")
    elif roc_ci.low >= t.keep_min_return_on_cost:
        verdict = KEEP
        reasons.append(f"incremental value per unit of cost is at least {_fmt(roc_ci.low)} (95% lower bound), "
                       f"meeting the keep threshold {_fmt(t.keep_min_return_on_cost)}")
    else:
        reasons.append(f"incremental value per unit of cost {_fmt(roc_ci.low)}..{_fmt(roc_ci.high)} (95%) is "
                       f"neither clearly above {_fmt(t.keep_min_return_on_cost)} (keep) nor below "
                       f"{_fmt(t.retire_below_return_on_cost)} (retire)")
    quality: list[str] = []
    if (t.min_redemption_rate is not None and facts.vouchers > 0
            and facts.redeemed / facts.vouchers < t.min_redemption_rate):
        quality.append(f"redemption {facts.redeemed / facts.vouchers:.1%} of {facts.vouchers} vouchers is below "
                       f"{t.min_redemption_rate:.1%}")
    if (t.min_csat_after_compensation is not None and facts.csat_responses >= t.min_csat_responses
            and facts.csat_sum / facts.csat_responses < t.min_csat_after_compensation):
        quality.append(f"CSAT after compensation {facts.csat_sum / facts.csat_responses:.2f} "
                       f"({facts.csat_responses} answers) is below {t.min_csat_after_compensation:g}")
    if (t.max_mean_hours_to_compensate is not None and facts.timed > 0
            and facts.ttc_seconds / facts.timed / 3600 > t.max_mean_hours_to_compensate):
        quality.append(f"mean time to compensate {facts.ttc_seconds / facts.timed / 3600:.1f} h is above "
                       f"{t.max_mean_hours_to_compensate:g} h")
    if facts.audit_failed:
        quality.append(f"{facts.audit_failed} of {facts.audited} audited compensations had findings")
    if quality and verdict == KEEP:
        verdict = REVIEW
    reasons.extend(quality)
    return ScorecardRow(facts, verdict, tuple(reasons), at_plan, judged, uplift, uplift_point, roc, roc_ci)


_ORDER = {RETIRE: 0, REVIEW: 1, KEEP: 2}


def review_order(rows: list[ScorecardRow]) -> list[ScorecardRow]:
    """Retire first, then review, then keep; within a verdict the costliest first."""
    return sorted(rows, key=lambda r: (_ORDER[r.verdict], -r.facts.cost_minor, r.facts.strategy_id))
