"""Verdict rules and the corrections they imply."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.audit_sampler.domain.verdicts import (
    ATTRIBUTES,
    Share,
    VerdictError,
    VerdictInput,
    correction_for,
    gold_agreement,
    parse_expected,
    rescale,
    validate,
)

CATEGORIES = frozenset({"wrong_amount", "not_warranted", "wrong_liable_party", "missing_evidence", "other"})
ORIGINAL = (Share("seller", "S1", 700), Share("platform", None, 300))
ALL_OK = dict.fromkeys(ATTRIBUTES, True)


def attrs(**failed: bool) -> dict[str, bool]:
    return {**ALL_OK, **failed}


def check(v: VerdictInput) -> None:
    validate(v, original_amount_minor=1000, categories=CATEGORIES)


def fields(v: VerdictInput) -> set[str]:
    with pytest.raises(VerdictError) as info:
        check(v)
    return {f for f, _ in info.value.errors}


def correct(v: VerdictInput):
    check(v)
    return correction_for(v, original_amount_minor=1000, currency="USD", original_liability=ORIGINAL)


def test_a_pass_needs_no_correction():
    assert correct(VerdictInput(ALL_OK, True)) is None


def test_not_warranted_corrects_to_zero_without_parties():
    c = correct(VerdictInput(attrs(warranted=False), False, "not_warranted"))
    assert c is not None and c.amount_minor == 0 and c.liability == ()


def test_wrong_amount_rescales_the_original_parties_exactly():
    c = correct(VerdictInput(attrs(amount_correct=False), False, "wrong_amount", corrected_amount_minor=333))
    assert c is not None and c.amount_minor == 333
    assert sum(s.amount_minor for s in c.liability) == 333
    assert [s.account_key for s in c.liability] == ["seller:S1", "platform"]


def test_wrong_party_uses_the_given_shares():
    shares = (Share("carrier", "K9", 1000),)
    c = correct(VerdictInput(attrs(liable_party_correct=False), False, "wrong_liable_party",
                             corrected_liability=shares))
    assert c is not None and c.amount_minor == 1000 and c.liability == shares


def test_wrong_amount_and_party_together():
    shares = (Share("carrier", "K9", 200), Share("platform", None, 300))
    c = correct(VerdictInput(attrs(amount_correct=False, liable_party_correct=False), False, "wrong_amount",
                             corrected_amount_minor=500, corrected_liability=shares))
    assert c is not None and c.amount_minor == 500 and c.liability == shares


def test_non_money_findings_fail_without_correction():
    assert correct(VerdictInput(attrs(evidence_sufficient=False), False, "missing_evidence")) is None


@pytest.mark.parametrize(("verdict", "field"), [
    (VerdictInput({k: v for k, v in ALL_OK.items() if k != "warranted"}, True), "attributes.warranted"),
    (VerdictInput({**ALL_OK, "vibes": True}, True), "attributes.vibes"),
    (VerdictInput({**ALL_OK, "warranted": "yes"}, True), "attributes.warranted"),
    (VerdictInput(attrs(kind_correct=False), True), "passed"),
    (VerdictInput(ALL_OK, False, "other"), "passed"),
    (VerdictInput(ALL_OK, True, "other"), "error_category"),
    (VerdictInput(attrs(kind_correct=False), False), "error_category"),
    (VerdictInput(attrs(kind_correct=False), False, "made_up"), "error_category"),
    (VerdictInput(attrs(amount_correct=False), False, "wrong_amount"), "corrected_amount_minor"),
    (VerdictInput(attrs(amount_correct=False), False, "wrong_amount", corrected_amount_minor=1000),
     "corrected_amount_minor"),
    (VerdictInput(attrs(amount_correct=False), False, "wrong_amount", corrected_amount_minor=0),
     "corrected_amount_minor"),
    (VerdictInput(attrs(amount_correct=False), False, "wrong_amount", corrected_amount_minor=-5),
     "corrected_amount_minor"),
    (VerdictInput(attrs(warranted=False), False, "not_warranted", corrected_amount_minor=10),
     "corrected_amount_minor"),
    (VerdictInput(ALL_OK, True, corrected_amount_minor=500), "corrected_amount_minor"),
    (VerdictInput(attrs(liable_party_correct=False), False, "wrong_liable_party"), "corrected_liability"),
    (VerdictInput(ALL_OK, True, corrected_liability=(Share("platform", None, 1000),)), "corrected_liability"),
    (VerdictInput(attrs(liable_party_correct=False), False, "wrong_liable_party",
                  corrected_liability=(Share("carrier", "K9", 999),)), "corrected_liability"),
    (VerdictInput(attrs(liable_party_correct=False), False, "wrong_liable_party",
                  corrected_liability=(Share("platform", "P1", 1000),)), "corrected_liability.0.party_id"),
    (VerdictInput(attrs(liable_party_correct=False), False, "wrong_liable_party",
                  corrected_liability=(Share("seller", None, 1000),)), "corrected_liability.0.party_id"),
    (VerdictInput(attrs(liable_party_correct=False), False, "wrong_liable_party",
                  corrected_liability=(Share("bank", "X", 1000),)), "corrected_liability.0.party_type"),
    (VerdictInput(attrs(liable_party_correct=False), False, "wrong_liable_party",
                  corrected_liability=(Share("seller", "S1", 500), Share("seller", "S1", 500))),
     "corrected_liability"),
    (VerdictInput(attrs(liable_party_correct=False), False, "wrong_liable_party", corrected_liability=()),
     "corrected_liability"),
])
def test_invalid_verdicts_name_the_field(verdict, field):
    assert field in fields(verdict)


@given(amount=st.integers(1, 10**12), weights=st.lists(st.integers(0, 10**9), min_size=1, max_size=8))
def test_rescale_always_sums_exactly(amount, weights):
    if sum(weights) == 0:
        weights = [*weights[:-1], 1]
    shares = tuple(Share("seller", f"S{i}", w) for i, w in enumerate(weights))
    out = rescale(shares, amount, "USD")
    assert sum(s.amount_minor for s in out) == amount
    assert all(s.amount_minor >= 0 for s in out)
    assert rescale(shares, 0, "USD") == ()


def test_gold_agreement_and_expected():
    expected = parse_expected({**ALL_OK, "warranted": False})
    assert gold_agreement(expected, attrs(warranted=False)) == dict.fromkeys(ATTRIBUTES, True)
    assert not gold_agreement(expected, ALL_OK)["warranted"]
    with pytest.raises(VerdictError) as info:
        parse_expected({"warranted": "no", "extra": True})
    fields_ = {f for f, _ in info.value.errors}
    assert {"expected.warranted", "expected.amount_correct", "expected.extra"} <= fields_
