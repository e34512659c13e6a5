"""Compensation Quality Audit verdicts: the scorecard, its consistency rules and the money correction.

Only three attributes move money: ``warranted`` (not warranted -> the right amount is 0),
``amount_correct`` (a corrected amount) and ``liable_party_correct`` (corrected liability shares). The
others (kind, evidence, policy, duplicate) are quality findings without a ledger effect; an auditor who
finds a duplicate that should not have been paid scores ``warranted`` false as well.

A verdict must agree with itself (``validate``): the error category names an attribute answered no (no
"duplicate" when ``not_duplicate`` is yes; a category of the region's own without an attribute, such as
"other", goes with any failed one); a corrected amount only when ``amount_correct`` is no, corrected
liable parties only when ``liable_party_correct`` is no, and neither when the compensation was not
warranted at all (it corrects to 0, charged to nobody). Root causes and error rates are read from these
fields, so a contradiction would count an error under an attribute the auditor passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.money import Money

ATTRIBUTES: tuple[str, ...] = ("warranted", "amount_correct", "kind_correct", "liable_party_correct",
                               "evidence_sufficient", "policy_compliant", "not_duplicate")
PARTY_TYPES = ("seller", "carrier", "platform")
# The standard error categories and the attribute each one means was wrong. A region's policy may add
# categories of its own (mapped to an attribute, or to none: any failed attribute).
CATEGORY_ATTRIBUTES: Mapping[str, str] = {
    "not_warranted": "warranted", "wrong_amount": "amount_correct", "wrong_kind": "kind_correct",
    "wrong_liable_party": "liable_party_correct", "missing_evidence": "evidence_sufficient",
    "policy_breach": "policy_compliant", "duplicate": "not_duplicate"}


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


def category_map(categories: Mapping[str, str | None] | Iterable[str]) -> dict[str, str | None]:
    """Categories as code -> attribute (None: no particular attribute); a plain set of codes takes the
    standard meaning of the standard codes."""
    if isinstance(categories, Mapping):
        return dict(categories)
    return {c: CATEGORY_ATTRIBUTES.get(c) for c in categories}


def validate(v: VerdictInput, *, original_amount_minor: int,
             categories: Mapping[str, str | None] | Iterable[str]) -> None:
    """Raise VerdictError naming every field that breaks the rules."""
    meaning = category_map(categories)
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
    failed = [name for name in ATTRIBUTES if not v.attributes[name]]
    if v.passed != all_ok:
        errors.append(("passed", "must be true exactly when every attribute is true"))
    if all_ok:
        if v.error_category is not None:
            errors.append(("error_category", f"{v.error_category} chosen, but every attribute was answered yes: "
                                             "answer no to what is wrong, or leave the category empty"))
    elif v.passed:
        pass  # the contradiction is ``passed`` itself (reported above); a category would only add noise
    elif v.error_category is None:
        errors.append(("error_category", "required for a failed audit"))
    elif v.error_category not in meaning:
        errors.append(("error_category", f"unknown category (known: {', '.join(sorted(meaning))})"))
    elif (attribute := meaning[v.error_category]) is not None and v.attributes.get(attribute, True):
        fitting = sorted(c for c, a in meaning.items() if a in failed or a is None)
        errors.append(("error_category", f"{v.error_category} means {attribute} is no, but it was answered yes; "
                                         f"for the answers given choose one of {', '.join(fitting)}"))
    warranted = v.attributes["warranted"]
    amount_ok = v.attributes["amount_correct"]
    amount = v.corrected_amount_minor
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int) or amount < 0):
        errors.append(("corrected_amount_minor", "must be a non-negative integer of minor units"))
    elif amount is not None and amount_ok:
        errors.append(("corrected_amount_minor", "only when amount_correct is no (the amount was answered "
                                                 "correct): leave it empty"))
    elif not warranted:
        if amount not in (None, 0):
            errors.append(("corrected_amount_minor", "a compensation that was not warranted corrects to 0: "
                                                     "leave it empty"))
    elif not amount_ok:
        if amount is None:
            errors.append(("corrected_amount_minor", "required when the amount is not correct"))
        elif amount == original_amount_minor:
            errors.append(("corrected_amount_minor", "equals the original amount, yet amount_correct is no"))
        elif amount == 0:
            errors.append(("corrected_amount_minor", "0 means not warranted: answer warranted no instead"))
    liable_ok = v.attributes["liable_party_correct"]
    if v.corrected_liability is not None and liable_ok:
        errors.append(("corrected_liability", "only when liable_party_correct is no (the liable party was "
                                              "answered correct): leave it empty"))
    elif v.corrected_liability is not None and not warranted:
        errors.append(("corrected_liability", "a compensation that was not warranted is charged to nobody: "
                                              "leave it empty"))
    if not liable_ok and warranted and v.corrected_liability is None:
        errors.append(("corrected_liability", "required when the liable party is not correct"))
    if v.corrected_liability is not None and warranted and not liable_ok and not errors:
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
