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


STANDARD = frozenset({"wrong_amount", "not_warranted", "wrong_kind", "wrong_liable_party", "missing_evidence",
                      "policy_breach", "duplicate", "other"})


def only(v: VerdictInput) -> list[tuple[str, str]]:
    """The errors of a verdict that breaks exactly one consistency rule."""
    with pytest.raises(VerdictError) as info:
        validate(v, original_amount_minor=1000, categories=STANDARD)
    return info.value.errors


@pytest.mark.parametrize(("category", "attribute"), [
    ("duplicate", "not_duplicate"), ("not_warranted", "warranted"), ("wrong_amount", "amount_correct"),
    ("wrong_kind", "kind_correct"), ("wrong_liable_party", "liable_party_correct"),
    ("missing_evidence", "evidence_sufficient"), ("policy_breach", "policy_compliant")])
def test_a_category_must_name_an_attribute_answered_no(category, attribute):
    """The field case: "duplicate" with not_duplicate answered yes. The verdict failed on something else
    (the kind), so the category must be that one's (or "other")."""
    errors = only(VerdictInput(attrs(kind_correct=False) if attribute != "kind_correct"
                               else attrs(policy_compliant=False), False, category))
    assert [f for f, _ in errors] == ["error_category"]
    message = errors[0][1]
    assert f"{attribute} is no, but it was answered yes" in message
    assert "other" in message  # what would fit instead
    # with the attribute answered no it is accepted
    check_all = attrs(**{attribute: False})
    validate(VerdictInput(check_all, False, category,
                          corrected_amount_minor=500 if attribute == "amount_correct" else None,
                          corrected_liability=(Share("platform", None, 1000),)
                          if attribute == "liable_party_correct" else None),
             original_amount_minor=1000, categories=STANDARD)


def test_other_and_custom_categories_go_with_any_failed_attribute():
    validate(VerdictInput(attrs(not_duplicate=False), False, "other"), original_amount_minor=1000,
             categories=STANDARD)
    custom = {"fraud_suspected": None, "wrong_voucher_rules": "policy_compliant", "duplicate": "not_duplicate"}
    validate(VerdictInput(attrs(kind_correct=False), False, "fraud_suspected"), original_amount_minor=1000,
             categories=custom)
    with pytest.raises(VerdictError) as info:
        validate(VerdictInput(attrs(kind_correct=False), False, "wrong_voucher_rules"),
                 original_amount_minor=1000, categories=custom)
    assert info.value.errors[0][0] == "error_category"
    assert "fraud_suspected" in info.value.errors[0][1]  # the one that fits is suggested


def test_a_category_with_every_answer_yes_is_refused_not_dropped():
    errors = only(VerdictInput(ALL_OK, True, "duplicate"))
    assert errors == [("error_category", "duplicate chosen, but every attribute was answered yes: answer no to "
                                         "what is wrong, or leave the category empty")]


@pytest.mark.parametrize(("verdict", "field", "says"), [
    # an amount correction only when amount_correct is no (even one equal to the original)
    (VerdictInput(attrs(evidence_sufficient=False), False, "missing_evidence", corrected_amount_minor=1000),
     "corrected_amount_minor", "only when amount_correct is no"),
    (VerdictInput(attrs(evidence_sufficient=False), False, "missing_evidence", corrected_amount_minor=400),
     "corrected_amount_minor", "only when amount_correct is no"),
    (VerdictInput(attrs(warranted=False), False, "not_warranted", corrected_amount_minor=0),
     "corrected_amount_minor", "only when amount_correct is no"),
    (VerdictInput(attrs(warranted=False, amount_correct=False), False, "not_warranted", corrected_amount_minor=5),
     "corrected_amount_minor", "not warranted corrects to 0"),
    # liable parties only when liable_party_correct is no, and never for a compensation not warranted
    (VerdictInput(attrs(amount_correct=False), False, "wrong_amount", corrected_amount_minor=500,
                  corrected_liability=(Share("platform", None, 500),)),
     "corrected_liability", "only when liable_party_correct is no"),
    (VerdictInput(attrs(warranted=False, liable_party_correct=False), False, "not_warranted",
                  corrected_liability=(Share("platform", None, 1000),)),
     "corrected_liability", "charged to nobody"),
])
def test_corrections_only_where_the_answer_is_no(verdict, field, says):
    errors = only(verdict)
    assert [f for f, _ in errors] == [field]
    assert says in errors[0][1]


def test_not_warranted_with_an_amount_answered_wrong_may_leave_the_amount_empty_or_zero():
    for amount in (None, 0):
        c = correct(VerdictInput(attrs(warranted=False, amount_correct=False), False, "not_warranted",
                                 corrected_amount_minor=amount))
        assert c is not None and c.amount_minor == 0 and c.liability == ()


def test_policy_files_map_categories_to_attributes():
    from services.audit_sampler.domain.policy import PolicyError, parse_policy

    base = {"region": "US", "seed": "unit-test-seed-1", "baseline_rate": 0.1}
    assert parse_policy(base).error_categories["duplicate"] == "not_duplicate"
    assert parse_policy(base).error_categories["other"] is None
    listed = parse_policy({**base, "error_categories": ["duplicate", "fraud_suspected"]}).error_categories
    assert listed == {"duplicate": "not_duplicate", "fraud_suspected": None}
    mapped = parse_policy({**base, "error_categories": {"duplicate": None, "voucher_rules": "policy_compliant"}})
    assert mapped.error_categories == {"duplicate": "not_duplicate", "voucher_rules": "policy_compliant"}
    with pytest.raises(PolicyError) as info:
        parse_policy({**base, "error_categories": {"duplicate": "warranted", "x": "vibes"}})
    assert {p for p, _ in info.value.errors} == {"error_categories.duplicate", "error_categories.x"}


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
