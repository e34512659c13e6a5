"""Agent authority limits of a region (issue 14): a validated YAML file per region, and the pure judgement
of a compensation request and of an issued compensation against its approval.

Amounts are integer minor units of the region's currency (the file names the currency and it must be the
catalogue's, so a 0-decimal currency like IDR is written in whole rupiah). A request is *within* its
authority when it is at most every limit of the first rule that matches it: equal to a limit is within.
Validation collects every problem with its path (``rules[1].max_single``) so an operator fixes a file in
one pass, as for sampling policies and strategies.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from shared.money import MAX_AMOUNT_MINOR, Money
from shared.regions import UnknownRegion, catalogue

_CODE = re.compile(r"^[a-z0-9_]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_ID = re.compile(r"^[^\x00-\x1f]{1,128}$")

# The limits a request can be above (also the values of ``exceeded`` in decision events).
MAX_SINGLE = "max_single"
DAILY_TOTAL = "daily_total_per_agent"
BUYER_WINDOW = "buyer_window_total"
NO_RULE = "no_rule"


class LimitsError(ValueError):
    """A limits file is invalid; ``errors`` lists (path, message) for every problem found."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: invalid authority limits\n{lines}")


@dataclass(frozen=True)
class AuthorityRule:
    name: str
    teams: frozenset[str]  # empty: any team
    agent_tiers: frozenset[str]  # empty: any tier (or none)
    reasons: frozenset[str]  # empty: any reason code
    max_single_minor: int
    daily_total_per_agent_minor: int
    buyer_window_total_minor: int

    def matches(self, team: str, tier: str | None, reason: str) -> bool:
        return ((not self.teams or team in self.teams)
                and (not self.agent_tiers or (tier is not None and tier in self.agent_tiers))
                and (not self.reasons or reason in self.reasons))


@dataclass(frozen=True)
class AuthorityLimits:
    region: str
    currency: str
    version: str  # content hash: which limits judged a request
    buyer_window_days: int  # the per-buyer total runs over this many local days, today included
    approval_sla_hours: int  # a queued request is escalated when it waits longer
    escalation_sla_hours: int  # an escalated request is overdue after this much longer
    request_required_above_minor: int | None  # a manual compensation above this needs an approved request
    rules: tuple[AuthorityRule, ...]  # first match wins

    def rule_for(self, team: str, tier: str | None, reason: str) -> AuthorityRule | None:
        return next((r for r in self.rules if r.matches(team, tier, reason)), None)

    def window(self, day: date) -> tuple[date, date]:
        """The per-buyer window ending on ``day`` (a local day of the region): first and last day."""
        return day - timedelta(days=self.buyer_window_days - 1), day


@dataclass(frozen=True)
class Judgement:
    within: bool
    rule: str | None
    exceeded: tuple[str, ...]
    detail: str


def judge(limits: AuthorityLimits | None, *, team: str, tier: str | None, reason: str, amount_minor: int,
          agent_day_total_minor: int, buyer_window_total_minor: int) -> Judgement:
    """Within the agent's authority? Totals are what was already approved (this request not included)."""
    if limits is None:
        return Judgement(False, None, (NO_RULE,), "no authority limits for the region: every request needs "
                                                  "an approver")
    rule = limits.rule_for(team, tier, reason)
    if rule is None:
        return Judgement(False, None, (NO_RULE,), f"no authority rule covers team {team}, tier {tier or '-'} "
                                                  f"and reason {reason}")
    exceeded: list[str] = []
    notes: list[str] = []
    if amount_minor > rule.max_single_minor:
        exceeded.append(MAX_SINGLE)
        notes.append(f"amount {amount_minor} above the single limit {rule.max_single_minor}")
    if agent_day_total_minor + amount_minor > rule.daily_total_per_agent_minor:
        exceeded.append(DAILY_TOTAL)
        notes.append(f"agent's day total {agent_day_total_minor} + {amount_minor} above "
                     f"{rule.daily_total_per_agent_minor}")
    if buyer_window_total_minor + amount_minor > rule.buyer_window_total_minor:
        exceeded.append(BUYER_WINDOW)
        notes.append(f"buyer's {limits.buyer_window_days}-day total {buyer_window_total_minor} + {amount_minor} "
                     f"above {rule.buyer_window_total_minor}")
    if exceeded:
        return Judgement(False, rule.name, tuple(exceeded), f"rule {rule.name}: " + "; ".join(notes))
    return Judgement(True, rule.name, (), f"within rule {rule.name} (limits {limits.version})")


# ------------------------------------------------------------------ issued vs approved


@dataclass(frozen=True)
class ApprovedRequest:
    request_id: str
    buyer_id: str
    status: str  # approved, awaiting_approval, escalated, rejected
    approved_amount_minor: int | None


@dataclass(frozen=True)
class IssueCheck:
    mismatches: tuple[str, ...]  # IssueMismatch values
    finding: str

    @property
    def flagged(self) -> bool:
        return bool(self.mismatches)


def check_issue(*, request_id: str | None, request: ApprovedRequest | None, buyer_id: str, amount_minor: int,
                currency: str, limits: AuthorityLimits | None) -> IssueCheck:
    """What an issued manual compensation does wrong against its request (empty: nothing). A referenced
    request not known yet is not judged here: the caller waits for it. The finding is written for people
    (major units), as the audit item shows it."""

    def show(minor: int) -> str:
        return Money(minor, currency).format()

    if request_id is None:
        required = limits.request_required_above_minor if limits is not None else None
        if required is not None and amount_minor > required:
            return IssueCheck(("no_request",), f"issued {show(amount_minor)} without a request; the region requires "
                                               f"an approved request above {show(required)}")
        return IssueCheck((), "")
    assert request is not None
    mismatches: list[str] = []
    notes: list[str] = []
    if request.buyer_id != buyer_id:
        mismatches.append("other_buyer")
        notes.append(f"request {request.request_id} was for buyer {request.buyer_id}, issued to {buyer_id}")
    if request.status != "approved":
        mismatches.append("not_approved")
        notes.append(f"request {request.request_id} is {request.status.replace('_', ' ')}, not approved")
    elif request.approved_amount_minor is not None and amount_minor > request.approved_amount_minor:
        mismatches.append("above_approved")
        notes.append(f"issued {show(amount_minor)}, request {request.request_id} approved "
                     f"{show(request.approved_amount_minor)}")
    return IssueCheck(tuple(mismatches), "; ".join(notes))


# ------------------------------------------------------------------ the file


class _Reader:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, path: str, msg: str) -> None:
        self.errors.append((path, msg))

    def mapping(self, raw: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(path or "(root)", "expected a mapping")
            return {}
        for key in raw:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.fail(where, f"unknown field (allowed: {', '.join(sorted(allowed))})")
        return raw

    def integer(self, raw: Mapping[str, Any], key: str, path: str, *, lo: int, hi: int,
                default: int | None = None, required: bool = True) -> int | None:
        where = f"{path}.{key}" if path else key
        value = raw.get(key, default)
        if value is None:
            if required:
                self.fail(where, "required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"must be an integer, got {value!r}")
            return None
        if not lo <= value <= hi:
            self.fail(where, f"must be between {lo} and {hi}, got {value}")
            return None
        return value

    def amount(self, raw: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> int | None:
        where = f"{path}.{key}" if path else key
        value = raw.get(key)
        if value is None:
            if required:
                self.fail(where, "required: integer minor units of the region's currency")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT_MINOR:
            self.fail(where, f"must be an integer of minor units between 0 and {MAX_AMOUNT_MINOR}, got {value!r} "
                             "(no decimals: 12.50 SGD is 1250)")
            return None
        return value

    def names(self, raw: Any, path: str, pattern: re.Pattern[str], what: str) -> frozenset[str]:
        if raw is None:
            return frozenset()
        if not isinstance(raw, list) or not raw or not all(isinstance(c, str) and pattern.match(c) for c in raw):
            self.fail(path, f"expected a non-empty list of {what}")
            return frozenset()
        return frozenset(raw)


def parse_limits(data: Any, source: str = "<limits>") -> AuthorityLimits:
    """Validate raw limits data (already parsed YAML) into AuthorityLimits, or raise LimitsError."""
    r = _Reader()
    top = r.mapping(data, "", {"region", "currency", "buyer_window_days", "approval_sla_hours",
                               "escalation_sla_hours", "request_required_above", "rules"})
    code = top.get("region")
    currency = top.get("currency")
    try:
        region = catalogue().get(code) if isinstance(code, str) else None
    except UnknownRegion:
        region = None
    if region is None:
        r.fail("region", f"required: a region code of the catalogue ({', '.join(catalogue().codes())})")
    elif currency != region.currency:
        r.fail("currency", f"must be {region.currency}, the currency of region {region.code} (amounts are its "
                           f"minor units, exponent {region.exponent})")
    window = r.integer(top, "buyer_window_days", "", lo=1, hi=366, default=30)
    sla = r.integer(top, "approval_sla_hours", "", lo=1, hi=720, default=4)
    escalation = r.integer(top, "escalation_sla_hours", "", lo=1, hi=720, default=8)
    required = r.amount(top, "request_required_above", "", required=False)
    rules: list[AuthorityRule] = []
    raw_rules = top.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        r.fail("rules", "required: a non-empty list of rules (first match wins)")
        raw_rules = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        p = f"rules[{i}]"
        s = r.mapping(raw, p, {"name", "teams", "agent_tiers", "reasons", "max_single", "daily_total_per_agent",
                               "buyer_window_total"})
        name = s.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            r.fail(f"{p}.name", "required: letters, digits, '_', '.', '-' (at most 64)")
            name = f"rule{i}"
        elif name in seen:
            r.fail(f"{p}.name", f"{name} is used by an earlier rule")
        seen.add(name)
        single = r.amount(s, "max_single", p)
        daily = r.amount(s, "daily_total_per_agent", p)
        buyer = r.amount(s, "buyer_window_total", p)
        if single is not None and daily is not None and daily < single:
            r.fail(f"{p}.daily_total_per_agent", f"must be at least max_single ({single})")
        rules.append(AuthorityRule(
            name=name, teams=r.names(s.get("teams"), f"{p}.teams", _ID, "team ids"),
            agent_tiers=r.names(s.get("agent_tiers"), f"{p}.agent_tiers", _CODE, "lower-case tier codes"),
            reasons=r.names(s.get("reasons"), f"{p}.reasons", _CODE, "lower-case reason codes"),
            max_single_minor=single or 0, daily_total_per_agent_minor=daily or 0, buyer_window_total_minor=buyer or 0))
    if r.errors:
        raise LimitsError(source, r.errors)
    assert region is not None and window is not None and sla is not None and escalation is not None
    canonical = yaml.safe_dump(data, sort_keys=True).encode()
    return AuthorityLimits(region=region.code, currency=region.currency,
                           version=hashlib.sha256(canonical).hexdigest()[:12], buyer_window_days=window,
                           approval_sla_hours=sla, escalation_sla_hours=escalation,
                           request_required_above_minor=required, rules=tuple(rules))


def load_limits_file(path: str | Path) -> AuthorityLimits:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LimitsError(str(path), [("(file)", f"cannot read: {exc.strerror or exc}")]) from exc
    except yaml.YAMLError as exc:
        raise LimitsError(str(path), [("(file)", f"not valid YAML: {exc}")]) from exc
    return parse_limits(data, str(path))


@dataclass
class LimitsSet:
    """Limits by region; a region without a file delegates no authority (every request needs an approver).
    ``reload()`` re-reads the folder and keeps the limits in force when any file is invalid."""

    directory: Path
    limits: dict[str, AuthorityLimits] = field(default_factory=dict)
    signature: tuple[tuple[str, float], ...] = ()

    @classmethod
    def load(cls, directory: str | Path) -> LimitsSet:
        store = cls(Path(directory))
        store.reload()
        return store

    @classmethod
    def of(cls, limits: Iterable[AuthorityLimits]) -> LimitsSet:
        return cls(Path("."), {lim.region: lim for lim in limits}, (("<memory>", 0.0),))

    def reload(self) -> bool:
        files = sorted(p for p in self.directory.glob("*.yaml") if p.is_file())
        signature = tuple((str(p), p.stat().st_mtime) for p in files)
        if signature == self.signature:
            return False
        loaded: dict[str, AuthorityLimits] = {}
        for path in files:
            limits = load_limits_file(path)
            if limits.region in loaded:
                raise LimitsError(str(path), [("region", f"region {limits.region} is defined twice")])
            loaded[limits.region] = limits
        self.limits, self.signature = loaded, signature
        return True

    def for_region(self, region: str) -> AuthorityLimits | None:
        return self.limits.get(region)


def due(at: datetime, hours: int) -> datetime:
    return at + timedelta(hours=hours)
