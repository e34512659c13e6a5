"""Sampling policy of a region: a validated YAML file, one per region, plus a ``default`` fallback.

Probabilities and multipliers are plain numbers (they are not money); amounts are integer minor units
keyed by currency. Validation collects every problem with its path (``risk_boosts.new_agent.first_days``)
so an operator fixes a file in one pass.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.audit_sampler.domain.verdicts import ATTRIBUTES, CATEGORY_ATTRIBUTES

DEFAULT_POLICY = "default"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_CODE = re.compile(r"^[a-z0-9_]+$")
_REGION = re.compile(r"^([A-Z]{2,3}|default)$")


class PolicyError(ValueError):
    """A policy file is invalid; ``errors`` lists (path, message) for every problem found."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: invalid sampling policy\n{lines}")


class SamplingMode(enum.StrEnum):
    RISK = "risk"  # baseline rate times risk multipliers
    MONETARY_UNIT = "monetary_unit"  # probability proportional to amount, times risk multipliers


class SamplingState(enum.StrEnum):
    """Per-agent inspection level, switched by recent audit results as in ISO 2859-1."""

    TIGHTENED = "tightened"
    NORMAL = "normal"
    REDUCED = "reduced"


@dataclass(frozen=True)
class AgentErrorBoost:
    threshold: float  # boost when the agent's error rate over the last audits exceeds this
    multiplier: float
    last_audits: int  # window of the agent's most recent audits
    min_audits: int  # fewer audits than this: the rate is noise, no boost


@dataclass(frozen=True)
class NewAgentBoost:
    first_days: int
    first_compensations: int
    multiplier: float


@dataclass(frozen=True)
class AmountToOrderBoost:
    percent_above: int  # compensation above this percent of the order value
    multiplier: float


@dataclass(frozen=True)
class ReasonBoost:
    codes: frozenset[str]
    multiplier: float


@dataclass(frozen=True)
class RepeatBuyerBoost:
    within_days: int
    multiplier: float


@dataclass(frozen=True)
class UsualForReason:
    kinds: frozenset[str]  # empty: any kind is usual
    max_amount_minor: Mapping[str, int]  # currency -> the largest usual amount


@dataclass(frozen=True)
class UnusualBoost:
    multiplier: float
    reasons: Mapping[str, UsualForReason]


@dataclass(frozen=True)
class RiskBoosts:
    agent_error_rate: AgentErrorBoost | None = None
    new_agent: NewAgentBoost | None = None
    amount_to_order: AmountToOrderBoost | None = None
    error_prone_reasons: ReasonBoost | None = None
    repeat_buyer: RepeatBuyerBoost | None = None
    unusual_for_reason: UnusualBoost | None = None


@dataclass(frozen=True)
class SwitchingRules:
    """ISO 2859-style switching: tightened after repeated failures, reduced after a clean run."""

    tightened_multiplier: float = 2.0
    reduced_multiplier: float = 0.5
    to_tightened_failures: int = 2  # normal -> tightened: this many failures ...
    to_tightened_window: int = 5  # ... among the last this many audits
    tightened_to_normal_passes: int = 5  # consecutive passes
    to_reduced_passes: int = 10  # normal -> reduced: consecutive passes
    reduced_to_normal_failures: int = 1  # reduced -> normal: any failure among the last audits


@dataclass(frozen=True)
class QueueRule:
    name: str
    sla_hours: int
    daily_capacity: int | None  # None: unbounded
    min_risk: float  # items at or above this risk score (or mandatory) go to this queue


@dataclass(frozen=True)
class Policy:
    region: str
    version: str  # content hash: which policy sampled an item
    seed: str
    mode: SamplingMode
    baseline_rate: float
    max_rate: float
    always_audit_above_minor: Mapping[str, int]
    monetary_interval_minor: Mapping[str, int]
    boosts: RiskBoosts
    switching: SwitchingRules
    agent_weekly_minimum: int
    queues: tuple[QueueRule, ...]  # highest min_risk first
    calibration_share: float
    lease_seconds: int
    error_categories: Mapping[str, str | None]  # code -> the attribute it means was wrong (None: any)

    def queue_for(self, risk: float, mandatory: bool) -> QueueRule:
        if mandatory:
            return self.queues[0]
        for rule in self.queues:
            if risk >= rule.min_risk:
                return rule
        return self.queues[-1]

    def queue(self, name: str) -> QueueRule | None:
        return next((q for q in self.queues if q.name == name), None)


class _Reader:
    """Walks raw YAML data, recording every error with its path instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, path: str, msg: str) -> None:
        self.errors.append((path, msg))

    def mapping(self, raw: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(path or "(root)", "expected a mapping")
            return {}
        for key in raw:
            if key not in allowed:
                self.fail(f"{path}.{key}".lstrip("."), f"unknown field (allowed: {', '.join(sorted(allowed))})")
        return raw

    def number(self, raw: dict[str, Any], key: str, path: str, default: float | None, *,
               lo: float, hi: float, lo_open: bool = False) -> float:
        where = f"{path}.{key}".lstrip(".")
        value = raw.get(key, default)
        if value is None:
            self.fail(where, "required")
            return lo
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, f"must be a number, got {value!r}")
            return lo
        if value < lo or value > hi or (lo_open and value == lo):
            self.fail(where, f"must be {'>' if lo_open else '>='} {lo} and <= {hi}, got {value}")
        return float(value)

    def integer(self, raw: dict[str, Any], key: str, path: str, default: int | None, *,
                lo: int, hi: int) -> int:
        where = f"{path}.{key}".lstrip(".")
        value = raw.get(key, default)
        if value is None:
            self.fail(where, "required")
            return lo
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"must be an integer, got {value!r}")
            return lo
        if not lo <= value <= hi:
            self.fail(where, f"must be between {lo} and {hi}, got {value}")
        return value

    def amounts(self, raw: Any, path: str) -> dict[str, int]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(path, "expected a mapping of currency -> integer minor units")
            return {}
        out: dict[str, int] = {}
        for currency, amount in raw.items():
            where = f"{path}.{currency}"
            if not isinstance(currency, str) or not _CURRENCY.match(currency):
                self.fail(where, "currency must be an ISO 4217 code like USD")
            elif isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
                self.fail(where, f"must be a positive integer of minor units, got {amount!r}")
            else:
                out[currency] = amount
        return out

    def codes(self, raw: Any, path: str) -> frozenset[str]:
        if not isinstance(raw, list) or not all(isinstance(c, str) and _CODE.match(c) for c in raw):
            self.fail(path, "expected a list of lower-case codes")
            return frozenset()
        return frozenset(raw)


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    """Validate raw policy data (already parsed YAML) into a Policy, or raise PolicyError."""
    r = _Reader()
    top = r.mapping(data, "", {"region", "seed", "mode", "baseline_rate", "max_rate", "always_audit_above",
                               "monetary_unit_interval", "risk_boosts", "switching", "agent_weekly_minimum",
                               "queues", "calibration_share", "lease_seconds", "error_categories"})
    region = top.get("region")
    if not isinstance(region, str) or not _REGION.match(region):
        r.fail("region", "required: a region code like US, or 'default'")
        region = "?"
    seed = top.get("seed")
    if not isinstance(seed, str) or len(seed) < 8:
        r.fail("seed", "required: a string of at least 8 characters (the reproducible sampling seed)")
        seed = ""
    try:
        mode = SamplingMode(top.get("mode", "risk"))
    except ValueError:
        r.fail("mode", f"must be one of {', '.join(m.value for m in SamplingMode)}")
        mode = SamplingMode.RISK
    baseline = r.number(top, "baseline_rate", "", None, lo=0.0, hi=1.0)
    max_rate = r.number(top, "max_rate", "", 1.0, lo=0.0, hi=1.0, lo_open=True)
    if baseline > max_rate:
        r.fail("baseline_rate", "must not exceed max_rate")
    always = r.amounts(top.get("always_audit_above"), "always_audit_above")
    interval = r.amounts(top.get("monetary_unit_interval"), "monetary_unit_interval")
    if mode is SamplingMode.MONETARY_UNIT and not interval:
        r.fail("monetary_unit_interval", "required in monetary_unit mode: currency -> minor units per hit")
    boosts = _parse_boosts(r, top.get("risk_boosts"))
    switching = _parse_switching(r, top.get("switching"))
    weekly_min = r.integer(top, "agent_weekly_minimum", "", 0, lo=0, hi=1000)
    queues = _parse_queues(r, top.get("queues"))
    calibration = r.number(top, "calibration_share", "", 0.0, lo=0.0, hi=1.0)
    lease = r.integer(top, "lease_seconds", "", 1800, lo=10, hi=86_400)
    categories = _parse_categories(r, top.get("error_categories", [*CATEGORY_ATTRIBUTES, "other"]))
    if r.errors:
        raise PolicyError(source, r.errors)
    canonical = yaml.safe_dump(data, sort_keys=True).encode()
    return Policy(region=str(region), version=hashlib.sha256(canonical).hexdigest()[:12], seed=str(seed),
                  mode=mode, baseline_rate=baseline, max_rate=max_rate, always_audit_above_minor=always,
                  monetary_interval_minor=interval, boosts=boosts, switching=switching,
                  agent_weekly_minimum=weekly_min, queues=queues, calibration_share=calibration,
                  lease_seconds=lease, error_categories=categories)


def _parse_categories(r: _Reader, raw: Any) -> dict[str, str | None]:
    """A list of codes (the standard ones keep their attribute, others go with any failed attribute), or
    a mapping of code -> the attribute it means was wrong (null: none in particular)."""
    if isinstance(raw, list):
        return {code: CATEGORY_ATTRIBUTES.get(code) for code in r.codes(raw, "error_categories")}
    if not isinstance(raw, dict) or not raw:
        r.fail("error_categories", "expected a list of codes or a mapping of code -> attribute")
        return {}
    out: dict[str, str | None] = {}
    for code, attribute in raw.items():
        where = f"error_categories.{code}"
        if not isinstance(code, str) or not _CODE.match(code):
            r.fail(where, "category code must be lower-case letters, digits and _")
        elif attribute is not None and attribute not in ATTRIBUTES:
            r.fail(where, f"must be an attribute ({', '.join(ATTRIBUTES)}) or null")
        elif code in CATEGORY_ATTRIBUTES and attribute not in (None, CATEGORY_ATTRIBUTES[code]):
            r.fail(where, f"{code} is a standard category: it means {CATEGORY_ATTRIBUTES[code]} is no")
        else:
            out[code] = CATEGORY_ATTRIBUTES.get(code) if attribute is None else attribute
    return out


def _parse_boosts(r: _Reader, raw: Any) -> RiskBoosts:
    p = "risk_boosts"
    top = r.mapping(raw, p, {"agent_error_rate", "new_agent", "amount_to_order", "error_prone_reasons",
                             "repeat_buyer", "unusual_for_reason"})

    def mult(section: dict[str, Any], path: str) -> float:
        return r.number(section, "multiplier", path, None, lo=1.0, hi=100.0)

    agent = None
    if "agent_error_rate" in top:
        q = f"{p}.agent_error_rate"
        s = r.mapping(top["agent_error_rate"], q, {"threshold", "multiplier", "last_audits", "min_audits"})
        agent = AgentErrorBoost(r.number(s, "threshold", q, None, lo=0.0, hi=1.0), mult(s, q),
                                r.integer(s, "last_audits", q, 20, lo=1, hi=100),
                                r.integer(s, "min_audits", q, 5, lo=1, hi=100))
    new = None
    if "new_agent" in top:
        q = f"{p}.new_agent"
        s = r.mapping(top["new_agent"], q, {"first_days", "first_compensations", "multiplier"})
        new = NewAgentBoost(r.integer(s, "first_days", q, 30, lo=0, hi=3650),
                            r.integer(s, "first_compensations", q, 50, lo=0, hi=1_000_000), mult(s, q))
    ratio = None
    if "amount_to_order" in top:
        q = f"{p}.amount_to_order"
        s = r.mapping(top["amount_to_order"], q, {"percent_above", "multiplier"})
        ratio = AmountToOrderBoost(r.integer(s, "percent_above", q, None, lo=1, hi=1000), mult(s, q))
    reasons = None
    if "error_prone_reasons" in top:
        q = f"{p}.error_prone_reasons"
        s = r.mapping(top["error_prone_reasons"], q, {"codes", "multiplier"})
        reasons = ReasonBoost(r.codes(s.get("codes"), f"{q}.codes"), mult(s, q))
    repeat = None
    if "repeat_buyer" in top:
        q = f"{p}.repeat_buyer"
        s = r.mapping(top["repeat_buyer"], q, {"within_days", "multiplier"})
        repeat = RepeatBuyerBoost(r.integer(s, "within_days", q, 30, lo=1, hi=365), mult(s, q))
    unusual = None
    if "unusual_for_reason" in top:
        q = f"{p}.unusual_for_reason"
        s = r.mapping(top["unusual_for_reason"], q, {"multiplier", "reasons"})
        usual: dict[str, UsualForReason] = {}
        reasons_raw = s.get("reasons")
        if not isinstance(reasons_raw, dict) or not reasons_raw:
            r.fail(f"{q}.reasons", "expected a mapping of reason code -> {kinds, max_amount}")
        else:
            for code, spec in reasons_raw.items():
                qq = f"{q}.reasons.{code}"
                if not isinstance(code, str) or not _CODE.match(code):
                    r.fail(qq, "reason code must be lower-case letters, digits and _")
                    continue
                ss = r.mapping(spec, qq, {"kinds", "max_amount"})
                kinds = r.codes(ss.get("kinds", []), f"{qq}.kinds")
                usual[code] = UsualForReason(kinds, r.amounts(ss.get("max_amount"), f"{qq}.max_amount"))
        unusual = UnusualBoost(mult(s, q), usual)
    return RiskBoosts(agent, new, ratio, reasons, repeat, unusual)


def _parse_switching(r: _Reader, raw: Any) -> SwitchingRules:
    p = "switching"
    s = r.mapping(raw, p, {"tightened_multiplier", "reduced_multiplier", "to_tightened_failures",
                           "to_tightened_window", "tightened_to_normal_passes", "to_reduced_passes",
                           "reduced_to_normal_failures"})
    d = SwitchingRules()
    rules = SwitchingRules(
        tightened_multiplier=r.number(s, "tightened_multiplier", p, d.tightened_multiplier, lo=1.0, hi=100.0),
        reduced_multiplier=r.number(s, "reduced_multiplier", p, d.reduced_multiplier, lo=0.0, hi=1.0,
                                    lo_open=True),
        to_tightened_failures=r.integer(s, "to_tightened_failures", p, d.to_tightened_failures, lo=1, hi=100),
        to_tightened_window=r.integer(s, "to_tightened_window", p, d.to_tightened_window, lo=1, hi=100),
        tightened_to_normal_passes=r.integer(s, "tightened_to_normal_passes", p, d.tightened_to_normal_passes,
                                             lo=1, hi=100),
        to_reduced_passes=r.integer(s, "to_reduced_passes", p, d.to_reduced_passes, lo=1, hi=100),
        reduced_to_normal_failures=r.integer(s, "reduced_to_normal_failures", p, d.reduced_to_normal_failures,
                                             lo=1, hi=100),
    )
    if rules.to_tightened_failures > rules.to_tightened_window:
        r.fail(f"{p}.to_tightened_failures", "cannot exceed to_tightened_window")
    return rules


def _parse_queues(r: _Reader, raw: Any) -> tuple[QueueRule, ...]:
    if raw is None:
        return (QueueRule("high", 24, None, 3.0), QueueRule("normal", 72, None, 0.0))
    if not isinstance(raw, dict) or not raw:
        r.fail("queues", "expected a mapping of queue name -> {sla_hours, daily_capacity, min_risk}")
        return (QueueRule("normal", 72, None, 0.0),)
    rules = []
    for name, spec in raw.items():
        q = f"queues.{name}"
        if not isinstance(name, str) or not _CODE.match(name):
            r.fail(q, "queue name must be lower-case letters, digits and _")
            continue
        s = r.mapping(spec, q, {"sla_hours", "daily_capacity", "min_risk"})
        capacity = s.get("daily_capacity")
        rules.append(QueueRule(
            name, r.integer(s, "sla_hours", q, None, lo=1, hi=24 * 90),
            None if capacity is None else r.integer(s, "daily_capacity", q, None, lo=1, hi=10_000_000),
            r.number(s, "min_risk", q, 0.0, lo=0.0, hi=1e6)))
    rules.sort(key=lambda q: -q.min_risk)
    if rules and rules[-1].min_risk != 0.0:
        r.fail("queues", "one queue must have min_risk 0 so every sampled item has a queue")
    return tuple(rules)


def load_policy_file(path: str | Path) -> Policy:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(str(path), [("(file)", f"cannot read: {exc.strerror or exc}")]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError(str(path), [("(file)", f"not valid YAML: {exc}")]) from exc
    return parse_policy(data, str(path))


@dataclass
class PolicySet:
    """Policies by region with the ``default`` fallback; ``reload()`` re-reads the folder atomically."""

    directory: Path
    policies: dict[str, Policy] = field(default_factory=dict)
    signature: tuple[tuple[str, float], ...] = ()

    @classmethod
    def load(cls, directory: str | Path) -> PolicySet:
        store = cls(Path(directory))
        store.reload()
        return store

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.yaml") if p.is_file())

    def reload(self) -> bool:
        """Re-read every file; on any error keep the old policies and raise. True if something changed."""
        files = self._files()
        signature = tuple((str(p), p.stat().st_mtime) for p in files)
        if signature == self.signature and self.policies:
            return False
        loaded: dict[str, Policy] = {}
        for path in files:
            policy = load_policy_file(path)
            if policy.region in loaded:
                raise PolicyError(str(path), [("region", f"region {policy.region} is defined twice")])
            loaded[policy.region] = policy
        if DEFAULT_POLICY not in loaded:
            raise PolicyError(str(self.directory), [("(folder)", "a policy with region: default is required")])
        self.policies, self.signature = loaded, signature
        return True

    def for_region(self, region: str) -> Policy:
        return self.policies.get(region) or self.policies[DEFAULT_POLICY]
