"""Compensation Quality Audit verdicts: the scorecard, its consistency rules and the money correction.

Only three attributes move money: ``warranted`` (not warranted -> the right amount is 0),
``amount_correct`` (a corrected amount) and ``liable_party_correct`` (corrected liability shares). The
others (kind, evidence, policy, duplicate) are quality findings without a ledger effect; an auditor who
finds a duplicate that should not have been paid scores ``warranted`` false as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.money import Money

ATTRIBUTES: tuple[str, ...] = ("warranted", "amount_correct", "kind_correct", "liable_party_correct",
                               "evidence_sufficient", "policy_compliant", "not_duplicate")
PARTY_TYPES = ("seller", "carrier", "platform")


class VerdictError(ValueError):
    """A verdict breaks the scorecard rules; ``errors`` lists (field, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


@dataclass(frozen=True)
class Share:
    party_type: str  # seller | carrier | platform
    party_id: str | None
    amount_minor: int

    @property
    def account_key(self) -> str:
        return self.party_type if self.party_id is None else f"{self.party_type}:{self.party_id}"


@dataclass(frozen=True)
class VerdictInput:
    attributes: Mapping[str, bool]
    passed: bool
    error_category: str | None = None
    note: str | None = None
    corrected_amount_minor: int | None = None
    corrected_liability: tuple[Share, ...] | None = None


@dataclass(frozen=True)
class Correction:
    amount_minor: int
    liability: tuple[Share, ...]  # empty when the amount is 0


def validate(v: VerdictInput, *, original_amount_minor: int, categories: frozenset[str]) -> None:
    """Raise VerdictError naming every field that breaks the rules."""
    errors: list[tuple[str, str]] = []
    for name in ATTRIBUTES:
        if name not in v.attributes:
            errors.append((f"attributes.{name}", "required"))
        elif not isinstance(v.attributes[name], bool):
            errors.append((f"attributes.{name}", "must be true or false"))
    for name in v.attributes:
        if name not in ATTRIBUTES:
            errors.append((f"attributes.{name}", f"unknown attribute (known: {', '.join(ATTRIBUTES)})"))
    if errors:
        raise VerdictError(errors)
    all_ok = all(v.attributes[name] for name in ATTRIBUTES)
    if v.passed != all_ok:
        errors.append(("passed", "must be true exactly when every attribute is true"))
    if v.passed:
        if v.error_category is not None:
            errors.append(("error_category", "must be empty for a passed audit"))
    elif v.error_category is None:
        errors.append(("error_category", "required for a failed audit"))
    elif v.error_category not in categories:
        errors.append(("error_category", f"unknown category (known: {', '.join(sorted(categories))})"))
    warranted = v.attributes["warranted"]
    amount_ok = v.attributes["amount_correct"]
    amount = v.corrected_amount_minor
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int) or amount < 0):
        errors.append(("corrected_amount_minor", "must be a non-negative integer of minor units"))
    elif not warranted:
        if amount not in (None, 0):
            errors.append(("corrected_amount_minor", "a compensation that was not warranted corrects to 0"))
    elif not amount_ok:
        if amount is None:
            errors.append(("corrected_amount_minor", "required when the amount is not correct"))
        elif amount == original_amount_minor:
            errors.append(("corrected_amount_minor", "equals the original amount, yet amount_correct is false"))
        elif amount == 0:
            errors.append(("corrected_amount_minor", "0 means not warranted: score warranted false instead"))
    elif amount is not None and amount != original_amount_minor:
        errors.append(("corrected_amount_minor", "only allowed when amount_correct is false"))
    liable_ok = v.attributes["liable_party_correct"]
    if v.corrected_liability is not None and liable_ok:
        errors.append(("corrected_liability", "only allowed when liable_party_correct is false"))
    if not liable_ok and warranted and v.corrected_liability is None:
        errors.append(("corrected_liability", "required when the liable party is not correct"))
    if v.corrected_liability is not None and warranted and not errors:
        target = original_amount_minor if amount_ok else int(amount or 0)
        errors.extend(_share_errors(v.corrected_liability, target))
    if errors:
        raise VerdictError(errors)


def _share_errors(shares: Sequence[Share], total: int) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    if not shares:
        return [("corrected_liability", "at least one liable party is required")]
    for i, s in enumerate(shares):
        where = f"corrected_liability.{i}"
        if s.party_type not in PARTY_TYPES:
            errors.append((f"{where}.party_type", f"must be one of {', '.join(PARTY_TYPES)}"))
        elif (s.party_type == "platform") != (s.party_id is None):
            errors.append((f"{where}.party_id", "the platform has no id; sellers and carriers need one"))
        if isinstance(s.amount_minor, bool) or not isinstance(s.amount_minor, int) or s.amount_minor < 0:
            errors.append((f"{where}.amount_minor", "must be a non-negative integer"))
    if not errors and sum(s.amount_minor for s in shares) != total:
        errors.append(("corrected_liability", f"shares must sum exactly to the corrected amount ({total})"))
    keys = [s.account_key for s in shares]
    if len(set(keys)) != len(keys):
        errors.append(("corrected_liability", "a liable party appears twice"))
    return errors


def correction_for(v: VerdictInput, *, original_amount_minor: int, currency: str,
                   original_liability: Sequence[Share]) -> Correction | None:
    """The ledger correction a validated verdict implies, or None when the money was right."""
    if v.attributes["warranted"] and v.attributes["amount_correct"] and v.attributes["liable_party_correct"]:
        return None
    if not v.attributes["warranted"]:
        return Correction(0, ())
    amount = original_amount_minor if v.attributes["amount_correct"] else int(v.corrected_amount_minor or 0)
    if v.corrected_liability is not None:
        return Correction(amount, tuple(v.corrected_liability))
    return Correction(amount, rescale(original_liability, amount, currency))


def rescale(liability: Sequence[Share], amount_minor: int, currency: str) -> tuple[Share, ...]:
    """The same parties in the same proportions, summing exactly to the new amount (largest remainder)."""
    if amount_minor == 0:
        return ()
    weights = [s.amount_minor for s in liability]
    if not weights or sum(weights) == 0:
        raise ValueError("cannot rescale an empty liability")
    parts = Money(amount_minor, currency).allocate(weights)
    return tuple(Share(s.party_type, s.party_id, p.minor) for s, p in zip(liability, parts, strict=True))


def gold_agreement(expected: Mapping[str, bool], actual: Mapping[str, bool]) -> dict[str, bool]:
    """Per attribute of the known answer: did the auditor score it the same?"""
    return {name: actual.get(name) == value for name, value in expected.items() if name in ATTRIBUTES}


def parse_expected(raw: Mapping[str, object]) -> dict[str, bool]:
    """Validate a gold item's known answer: every attribute, booleans only."""
    errors = [(f"expected.{n}", "required true or false") for n in ATTRIBUTES
              if not isinstance(raw.get(n), bool)]
    errors += [(f"expected.{n}", "unknown attribute") for n in raw if n not in ATTRIBUTES]
    if errors:
        raise VerdictError(errors)
    return {n: bool(raw[n]) for n in ATTRIBUTES}
