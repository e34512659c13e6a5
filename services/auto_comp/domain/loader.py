"""Load and validate strategy files. All-or-nothing: one mistake anywhere and nothing of the load applies.

Every error names the file, the strategy id, the field and what is wrong, so a strategy manager can fix
it without reading code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from services.auto_comp.domain.model import (
    AbuseGuard,
    Basis,
    Budget,
    Compensation,
    EvidenceFallback,
    Formula,
    LiabilityCondition,
    LiabilityRule,
    Match,
    Measure,
    Mode,
    Range,
    Share,
    Strategy,
    StrategySet,
    Tier,
)
from shared.contracts.events import CompensationKind, PartyType, TicketReason
from shared.money import Money, Rounding
from shared.regions import catalogue

MAX_FALLBACK_TIERS = 5  # the reservation request carries at most five lower tiers
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
_KINDS = (CompensationKind.VOUCHER, CompensationKind.STORE_CREDIT)


@dataclass(frozen=True, slots=True)
class StrategyError:
    file: str
    strategy: str | None
    field: str
    message: str

    def __str__(self) -> str:
        who = f" strategy {self.strategy}" if self.strategy else ""
        return f"{self.file}:{who} {self.field}: {self.message}"


class StrategyLoadError(ValueError):
    def __init__(self, errors: list[StrategyError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class _Bad(Exception):
    """One field is wrong; caught per field so a file reports all its mistakes at once."""


class _Reader:
    def __init__(self, file: str, strategy: str | None, errors: list[StrategyError]) -> None:
        self.file, self.strategy, self.errors = file, strategy, errors

    def error(self, field: str, message: str) -> None:
        self.errors.append(StrategyError(self.file, self.strategy, field, message))

    def field(self, data: dict[str, Any], path: str, name: str, parse: Any, *, required: bool = True,
              default: Any = None) -> Any:
        where = f"{path}.{name}" if path else name
        if name not in data or data[name] is None:
            if required:
                self.error(where, "is required")
                raise _Bad(where)
            return default
        try:
            return parse(data[name])
        except _Bad:
            raise
        except (ValueError, TypeError, InvalidOperation) as exc:
            self.error(where, str(exc) or type(exc).__name__)
            raise _Bad(where) from exc

    def unknown(self, data: dict[str, Any], path: str, allowed: Iterable[str]) -> None:
        for key in sorted(set(data) - set(allowed)):
            self.error(f"{path}.{key}" if path else str(key), "unknown field (check the spelling)")


# ------------------------------------------------------------------ scalar parsers


def _int(lo: int | None = None, hi: int | None = None) -> Any:
    def parse(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be a whole number, got {v!r}")
        if lo is not None and v < lo:
            raise ValueError(f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi}, got {v}")
        return v
    return parse


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"must be a non-empty string, got {v!r}")
    return v


def _ident(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v) > 100 or not set(v) <= _ID_CHARS:
        raise ValueError(f"must be lower-case letters, digits, '_' or '-' (max 100), got {v!r}")
    return v


def _aware(v: Any) -> datetime:
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {v!r}") from None
    if not isinstance(v, datetime):
        raise ValueError(f"must be a timestamp with a UTC offset (e.g. 2026-01-01T00:00:00Z), got {v!r}")
    if v.tzinfo is None or v.utcoffset() is None:
        raise ValueError("timestamp needs a UTC offset (e.g. 2026-01-01T00:00:00+08:00)")
    return v


def _percent(lo: int = 0, hi: int = 100) -> Any:
    def parse(v: Any) -> Fraction:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError(f"must be a number of percent, got {v!r}")
        # str() of a float is the shortest text that round-trips, i.e. what the author wrote.
        d = Decimal(str(v))
        if not d.is_finite() or d < lo or d > hi:
            raise ValueError(f"must be between {lo} and {hi} percent, got {v!r}")
        return Fraction(d)
    return parse


def _money(currency: str) -> Any:
    def parse(v: Any) -> Money:
        if isinstance(v, float):
            raise ValueError(f"write money as a quoted string of major units (e.g. '2.50'), not {v!r}")
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError(f"must be an amount in major units, got {v!r}")
        try:
            money = Money.from_major(str(v).strip(), currency)
        except InvalidOperation:
            raise ValueError(f"not an amount: {v!r}") from None
        if money.minor < 0:
            raise ValueError(f"must not be negative, got {v!r}")
        return money
    return parse


def _enum(kind: Any, allowed: Iterable[Any] | None = None) -> Any:
    choices = list(allowed if allowed is not None else kind)

    def parse(v: Any) -> Any:
        try:
            member = kind(v)
        except ValueError:
            member = None
        if member is None or member not in choices:
            raise ValueError(f"must be one of {', '.join(str(c.value) for c in choices)}, got {v!r}")
        return member
    return parse


def _mapping(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"must be a mapping, got {type(v).__name__}")
    return v


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list) or not v:
        raise ValueError("must be a non-empty list")
    return v


# ------------------------------------------------------------------ sections


def _range(r: _Reader, data: Any, where: str) -> Range:
    data = _mapping(data)
    r.unknown(data, where, ("min", "max"))
    lo = r.field(data, where, "min", _int(), required=False)
    hi = r.field(data, where, "max", _int(), required=False)
    if lo is None and hi is None:
        r.error(where, "give min, max or both")
        raise _Bad(where)
    if lo is not None and hi is not None and lo > hi:
        r.error(where, f"min {lo} is above max {hi}")
        raise _Bad(where)
    return Range(lo, hi)


def _match(r: _Reader, data: dict[str, Any], currency: str) -> Match:
    w = "match"
    r.unknown(data, w, ("reasons", "thresholds", "order_value", "buyer_segments"))
    reasons = r.field(data, w, "reasons", _list)
    parsed = []
    for i, reason in enumerate(reasons):
        try:
            parsed.append(_enum(TicketReason)(reason))
        except ValueError as exc:
            r.error(f"{w}.reasons[{i}]", str(exc))
    thresholds: dict[Measure, Range] = {}
    raw_t = r.field(data, w, "thresholds", _mapping, required=False, default={})
    for name, spec in raw_t.items():
        try:
            measure = _enum(Measure)(name)
        except ValueError as exc:
            r.error(f"{w}.thresholds.{name}", str(exc))
            continue
        try:
            thresholds[measure] = _range(r, spec, f"{w}.thresholds.{name}")
        except ValueError as exc:
            r.error(f"{w}.thresholds.{name}", str(exc))
        except _Bad:
            pass
    value = r.field(data, w, "order_value", _mapping, required=False, default={})
    r.unknown(value, f"{w}.order_value", ("min", "max"))
    lo = r.field(value, f"{w}.order_value", "min", _money(currency), required=False)
    hi = r.field(value, f"{w}.order_value", "max", _money(currency), required=False)
    if lo is not None and hi is not None and lo > hi:
        r.error(f"{w}.order_value", "min is above max")
    segments = r.field(data, w, "buyer_segments", _list, required=False)
    return Match(frozenset(parsed), thresholds, (lo, hi),
                 frozenset(map(str, segments)) if segments is not None else None)


def _formula(r: _Reader, data: Any, where: str, currency: str) -> Formula:
    data = _mapping(data)
    r.unknown(data, where, ("fixed", "percent", "of", "floor", "cap"))
    fixed = r.field(data, where, "fixed", _money(currency), required=False)
    pct = r.field(data, where, "percent", _percent(), required=False)
    if (fixed is None) == (pct is None):
        r.error(where, "give exactly one of fixed or percent")
        raise _Bad(where)
    basis = r.field(data, where, "of", _enum(Basis), required=False, default=Basis.ORDER)
    floor = r.field(data, where, "floor", _money(currency), required=False)
    cap = r.field(data, where, "cap", _money(currency), required=False)
    if fixed is not None:
        if fixed.minor == 0:
            r.error(f"{where}.fixed", "must be above zero")
        if floor is not None or cap is not None or "of" in data:
            r.error(where, "floor, cap and of apply to percent only")
    if floor is not None and cap is not None and floor > cap:
        r.error(where, f"floor {floor.format()} is above cap {cap.format()}")
    if cap is not None and cap.minor == 0:
        r.error(f"{where}.cap", "must be above zero")
    return Formula(fixed, pct, basis, floor, cap)


def _compensation(r: _Reader, data: dict[str, Any], currency: str) -> Compensation:
    w = "compensation"
    r.unknown(data, w, ("kind", "rounding", "amount", "tiers", "severity", "voucher"))
    kind = r.field(data, w, "kind", _enum(CompensationKind, _KINDS))
    rounding = r.field(data, w, "rounding", _enum(Rounding), required=False, default=Rounding.HALF_UP)
    formula, severity = None, None
    tiers: tuple[Tier, ...] = ()
    if ("amount" in data) == ("tiers" in data):
        r.error(w, "give exactly one of amount or tiers")
        raise _Bad(w)
    if "amount" in data:
        formula = _formula(r, data["amount"], f"{w}.amount", currency)
    else:
        severity = r.field(data, w, "severity", _enum(Measure))
        raw = r.field(data, w, "tiers", _list)
        parsed: list[Tier] = []
        for i, t in enumerate(raw):
            tw = f"{w}.tiers[{i}]"
            try:
                t = _mapping(t)
                r.unknown(t, tw, ("name", "from", "to", "amount"))
                name = r.field(t, tw, "name", _ident)
                lo = r.field(t, tw, "from", _int())
                hi = r.field(t, tw, "to", _int(), required=False)
                if hi is not None and hi < lo:
                    r.error(tw, f"to {hi} is below from {lo}")
                parsed.append(Tier(name, Range(lo, hi), _formula(r, r.field(t, tw, "amount", _mapping),
                                                                   f"{tw}.amount", currency)))
            except ValueError as exc:
                r.error(tw, str(exc))
            except _Bad:
                pass
        parsed.sort(key=lambda t: t.severity.min or 0)
        for a, b in pairwise(parsed):
            if a.severity.max is None or a.severity.max >= (b.severity.min or 0):
                r.error(f"{w}.tiers", f"tier {a.name} overlaps tier {b.name}")
        if len({t.name for t in parsed}) != len(parsed):
            r.error(f"{w}.tiers", "tier names must be unique")
        if len(parsed) > MAX_FALLBACK_TIERS + 1:
            r.error(f"{w}.tiers", f"at most {MAX_FALLBACK_TIERS + 1} tiers")
        tiers = tuple(parsed)
    voucher = r.field(data, w, "voucher", _mapping, required=False)
    validity, min_spend = None, None
    if kind is CompensationKind.VOUCHER:
        if voucher is None:
            r.error(f"{w}.voucher", "is required for kind voucher (validity_days, min_spend)")
            raise _Bad(w)
        r.unknown(voucher, f"{w}.voucher", ("validity_days", "min_spend"))
        validity = r.field(voucher, f"{w}.voucher", "validity_days", _int(1, 3650))
        min_spend = r.field(voucher, f"{w}.voucher", "min_spend", _money(currency), required=False,
                            default=Money.zero(currency))
    elif voucher is not None:
        r.error(f"{w}.voucher", f"applies to kind voucher only, not {kind.value}")
    return Compensation(kind, rounding, formula, tiers, severity, validity, min_spend)


def _liability(r: _Reader, raw: list[Any]) -> tuple[LiabilityRule, ...]:
    rules: list[LiabilityRule] = []
    for i, item in enumerate(raw):
        w = f"liability[{i}]"
        try:
            item = _mapping(item)
            r.unknown(item, w, ("when", "shares", "if_handoff_missing"))
            when = r.field(item, w, "when", _enum(LiabilityCondition))
            fallback = None
            if when is LiabilityCondition.OTHERWISE:
                if "if_handoff_missing" in item:
                    r.error(f"{w}.if_handoff_missing", "'otherwise' needs no evidence: remove it")
            else:
                # Whom to charge when the ticket lacks the carrier hand-off time is a policy choice the
                # strategy states, never a silent default (issue 13).
                if item.get("if_handoff_missing") is None:
                    r.error(f"{w}.if_handoff_missing", "is required: next_rule, applies or ticket_time (whom "
                                                       "to charge when the ticket lacks the carrier hand-off time)")
                    raise _Bad(w)
                fallback = r.field(item, w, "if_handoff_missing", _enum(EvidenceFallback))
            shares: list[Share] = []
            for j, s in enumerate(r.field(item, w, "shares", _list)):
                sw = f"{w}.shares[{j}]"
                s = _mapping(s)
                r.unknown(s, sw, ("party", "percent"))
                party = r.field(s, sw, "party", _enum(PartyType))
                shares.append(Share(party, r.field(s, sw, "percent", _int(1, 100))))
            if sum(s.percent for s in shares) != 100:
                r.error(f"{w}.shares", f"percents must sum to 100, got {sum(s.percent for s in shares)}")
            if len({s.party for s in shares}) != len(shares):
                r.error(f"{w}.shares", "a party appears twice")
            if when is LiabilityCondition.SELLER_LATE_DISPATCH and any(
                    s.party is PartyType.CARRIER for s in shares):
                r.error(f"{w}.shares", "a carrier cannot be charged for the seller's late dispatch")
            rules.append(LiabilityRule(when, tuple(shares), fallback))
        except ValueError as exc:
            r.error(w, str(exc))
        except _Bad:
            pass
    if rules and rules[-1].when is not LiabilityCondition.OTHERWISE:
        r.error("liability", "the last rule must be 'when: otherwise' so every ticket has a liable party")
    if [x.when for x in rules].count(LiabilityCondition.OTHERWISE) > 1:
        r.error("liability", "only one 'otherwise' rule")
    for rule in rules[:-1]:
        if rule.when is LiabilityCondition.OTHERWISE:
            r.error("liability", "'otherwise' must be the last rule")
    return tuple(rules)


_TOP = ("id", "version", "scenario", "regions", "currency", "effective_from", "effective_to", "enabled",
        "mode", "priority", "match", "compensation", "liability", "abuse_guard", "holdout_percent", "budget",
        "description")


def _guard(r: _Reader, raw: dict[str, Any], currency: str) -> AbuseGuard:
    r.unknown(raw, "abuse_guard", ("window_days", "max_count", "max_amount"))
    window = r.field(raw, "abuse_guard", "window_days", _int(1, 366))
    max_count = r.field(raw, "abuse_guard", "max_count", _int(0), required=False)
    max_amount = r.field(raw, "abuse_guard", "max_amount", _money(currency), required=False)
    if max_count is None and max_amount is None:
        r.error("abuse_guard", "give max_count, max_amount or both")
    return AbuseGuard(window, max_count, max_amount)


def _budget(r: _Reader, raw: dict[str, Any]) -> Budget:
    r.unknown(raw, "budget", ("pacing_allowance_percent", "degrade_to_lower_tier"))
    return Budget(r.field(raw, "budget", "pacing_allowance_percent", _int(0, 100), required=False),
                  r.field(raw, "budget", "degrade_to_lower_tier", _bool, required=False, default=False))


def _soft(r: _Reader, where: str, parse: Any, *args: Any, **kw: Any) -> Any:
    """Run one section's parser; its mistakes are recorded and the other sections still get checked."""
    try:
        return parse(*args, **kw)
    except _Bad:
        return None
    except ValueError as exc:
        r.error(where, str(exc))
        return None


def _strategy(file: str, index: int, data: Any, errors: list[StrategyError]) -> Strategy | None:
    if not isinstance(data, dict):
        errors.append(StrategyError(file, None, f"strategies[{index}]", "must be a mapping"))
        return None
    sid = data.get("id") if isinstance(data.get("id"), str) else None
    r = _Reader(file, sid or f"#{index}", errors)
    before = len(errors)
    r.unknown(data, "", _TOP)

    def top(name: str, parse: Any, **kw: Any) -> Any:
        return _soft(r, name, r.field, data, "", name, parse, **kw)

    sid, version, scenario = top("id", _ident), top("version", _int(1)), top("scenario", _ident)
    regions, currency = top("regions", _list), top("currency", _text)
    if regions is None or currency is None:
        return None
    cat = catalogue()
    for i, code in enumerate(regions):
        if code not in cat:
            r.error(f"regions[{i}]", f"unknown region {code!r}")
        elif cat.get(code).currency != currency:
            r.error("currency", f"{currency} is not the currency of region {code} ({cat.get(code).currency})")
    if len(errors) > before:
        return None  # amounts cannot be read without a valid currency
    start, end = top("effective_from", _aware), top("effective_to", _aware, required=False)
    if start is not None and end is not None and end <= start:
        r.error("effective_to", "must be after effective_from")
    enabled, priority = top("enabled", _bool), top("priority", _int(0, 1_000_000))
    mode = top("mode", _enum(Mode), required=False, default=Mode.ACTIVE)
    match_raw, comp_raw = top("match", _mapping), top("compensation", _mapping)
    match = _soft(r, "match", _match, r, match_raw, currency) if match_raw is not None else None
    comp = _soft(r, "compensation", _compensation, r, comp_raw, currency) if comp_raw is not None else None
    liability_raw = top("liability", _list)
    liability = _liability(r, liability_raw) if liability_raw is not None else ()
    guard_raw = top("abuse_guard", _mapping, required=False)
    guard = _soft(r, "abuse_guard", _guard, r, guard_raw, currency) if guard_raw is not None else None
    holdout = top("holdout_percent", _percent(0, 100), required=False, default=Fraction(0))
    if holdout is not None and (holdout * 100).denominator != 1:
        r.error("holdout_percent", "at most two decimals (it is kept in basis points)")
    budget = _soft(r, "budget", _budget, r, top("budget", _mapping, required=False, default={}) or {})
    if budget is not None and comp is not None and budget.degrade_to_lower_tier and len(comp.tiers) < 2:
        r.error("budget.degrade_to_lower_tier", "needs at least two compensation tiers")
    if match is not None and comp is not None:
        _consistency(r, match, comp)
    if len(errors) > before or match is None or comp is None:
        return None
    return Strategy(sid, version, scenario, frozenset(regions), currency, start, end, enabled, mode, priority,
                    match, comp, liability, guard, int(holdout * 100), budget, file)


def _consistency(r: _Reader, match: Match, comp: Compensation) -> None:
    if comp.severity is not None and comp.severity not in match.thresholds:
        # Without a threshold on the tier measure a ticket could lack the evidence the tiers need.
        r.error("compensation.severity", f"add a match.thresholds.{comp.severity.value} for the tiers to cut on")
    if comp.tiers and comp.severity in match.thresholds:
        lowest = match.thresholds[comp.severity].min
        first = comp.tiers[0].severity.min
        if lowest is not None and first is not None and first > lowest:
            r.error("compensation.tiers", f"no tier covers {comp.severity.value} {lowest}..{first - 1} "
                                          "that the match thresholds accept")


def _parse_file(path: Path, errors: list[StrategyError]) -> list[Strategy]:
    file = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        errors.append(StrategyError(file, None, "(file)", f"cannot read: {exc}"))
        return []
    except yaml.YAMLError as exc:
        errors.append(StrategyError(file, None, "(file)", f"not valid YAML: {exc}"))
        return []
    if not isinstance(raw, dict) or not isinstance(raw.get("strategies"), list):
        errors.append(StrategyError(file, None, "strategies", "the file must be a mapping with a "
                                                              "'strategies' list"))
        return []
    extra = set(raw) - {"strategies", "description"}
    for key in sorted(extra):
        errors.append(StrategyError(file, None, str(key), "unknown top-level field"))
    out = []
    for i, item in enumerate(raw["strategies"]):
        s = _strategy(file, i, item, errors)
        if s is not None:
            out.append(s)
    return out


def _overlap(a: Strategy, b: Strategy) -> bool:
    if not (a.regions & b.regions and a.match.reasons & b.match.reasons):
        return False
    a_end, b_end = a.effective_to, b.effective_to
    return (b_end is None or a.effective_from < b_end) and (a_end is None or b.effective_from < a_end)


def _cross_checks(strategies: list[Strategy], errors: list[StrategyError]) -> None:
    seen: dict[str, Strategy] = {}
    for s in strategies:
        if s.id in seen:
            errors.append(StrategyError(s.source, s.id, "id", f"duplicate strategy id (also in "
                                                               f"{seen[s.id].source})"))
        seen[s.id] = s
    live = [s for s in strategies if s.enabled]
    for i, a in enumerate(live):
        for b in live[i + 1:]:
            if a.priority == b.priority and a.mode == b.mode and _overlap(a, b):
                errors.append(StrategyError(
                    b.source, b.id, "priority",
                    f"ties with strategy {a.id} (priority {a.priority}) for overlapping regions, reasons "
                    "and dates; give one a higher priority"))


def strategy_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load_strategies(path: str | Path) -> StrategySet:
    """Load a directory (every *.yaml / *.yml) or one file; raise StrategyLoadError listing every mistake."""
    if not Path(path).exists():
        raise StrategyLoadError([StrategyError(str(path), None, "(path)", "does not exist")])
    return _load(strategy_files(path), str(path))


def load_with_proposal(in_force: str | Path, proposed: str | Path) -> StrategySet:
    """The strategy files in force with a proposed file (or directory of files) put in place, as a deploy
    of it would: a proposed file replaces the file of the same name, a new name is added. Checked like any
    set (every mistake listed, overlaps across files included)."""
    missing = [StrategyError(str(p), None, "(path)", "does not exist") for p in (in_force, proposed)
               if not Path(p).exists()]
    if missing:
        raise StrategyLoadError(missing)
    replacing = {f.name: f for f in strategy_files(proposed)}
    files = [f for f in strategy_files(in_force) if f.name not in replacing] + list(replacing.values())
    return _load(sorted(files, key=lambda f: f.name), f"{in_force} + {proposed}")


def _load(files: list[Path], where: str) -> StrategySet:
    errors: list[StrategyError] = []
    if not files:
        errors.append(StrategyError(where, None, "(directory)", "no strategy files (*.yaml) found"))
    strategies: list[Strategy] = []
    digest = hashlib.sha256()
    for f in files:
        strategies.extend(_parse_file(f, errors))
        try:
            digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        except OSError:
            pass
    _cross_checks(strategies, errors)
    if errors:
        raise StrategyLoadError(errors)
    return StrategySet(tuple(strategies), digest.hexdigest()[:12], tuple(str(f) for f in files))
