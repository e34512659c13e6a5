"""Workbench security rules that need no infrastructure: password hashing, user validation, verdict forms,
redirect targets. (Pure and fast; kept next to the workbench's integration tests.)"""

import pytest
from starlette.datastructures import FormData

from services.audit_sampler.domain.verdicts import ATTRIBUTES
from services.audit_sampler.web.pages import _safe_next, _verdict_from_form, safe_link
from services.audit_sampler.web.security import (
    UserError,
    check_password,
    hash_password,
    same_token,
    validate_user,
    verify_password,
)
from shared.http import Problem


def test_scrypt_hashes_are_salted_and_verify():
    a, b = hash_password("correct horse battery"), hash_password("correct horse battery")
    assert a != b and a.startswith("scrypt$32768$8$1$")
    assert verify_password("correct horse battery", a)
    assert not verify_password("correct horse batterY", a)
    for broken in (None, "", "md5$x", "scrypt$1$2", "scrypt$x$8$1$AA$AA"):
        assert not verify_password("anything", broken)


def test_password_rules():
    check_password("twelve chars")
    with pytest.raises(UserError):
        check_password("short")
    with pytest.raises(UserError):
        check_password("x" * 2000)


def test_user_validation_names_every_problem():
    user = validate_user("ann.lee", ["auditor", " lead", "auditor"], ["us", "GB "])
    assert user.roles == ("auditor", "lead") and user.regions == ("GB", "US")
    assert validate_user("ops", ["ops_admin"], ["*"]).regions == ("*",)
    with pytest.raises(UserError) as caught:
        validate_user("A", ["finance"], ["XX"])
    fields = [f for f, _ in caught.value.errors]
    assert fields == ["username", "roles", "regions"]


def test_tokens_compare_safely():
    assert same_token("abc", "abc")
    assert not same_token("abc", "abd") and not same_token(None, "abc") and not same_token("", "")


def test_redirect_targets_stay_on_the_workbench():
    assert _safe_next("/workbench/items/3") == "/workbench/items/3"
    for bad in ("https://evil.example/", "//evil.example/workbench/", "/workbench\\..\\x", None, "/v1/x"):
        assert _safe_next(bad) == "/workbench/queues"


def test_only_http_links():
    assert safe_link("https://a.example/x") == "https://a.example/x"
    assert safe_link("javascript:alert(1)") is None and safe_link("data:text/html,x") is None


def _form(**fields):
    base = {f"attr_{n}": "yes" for n in ATTRIBUTES}
    return FormData({**base, "currency": "USD", **fields})


def test_verdict_form_parses_major_units_exactly():
    v = _verdict_from_form(_form(attr_amount_correct="no", corrected_amount="12.50", error_category="wrong_amount",
                                 share_0_type="seller", share_0_id="S1", share_0_amount="12.50"))
    assert v.passed is False and v.corrected_amount_minor == 1250
    assert v.corrected_liability is not None and v.corrected_liability[0].amount_minor == 1250
    clean = _verdict_from_form(_form(error_category="wrong_amount"))
    # every answer yes with a category chosen: sent as chosen, for the workflow to refuse the contradiction
    # (test_workbench_audit); dropping it would quietly pass a compensation the auditor meant to fail
    assert clean.passed and clean.error_category == "wrong_amount"


@pytest.mark.parametrize("fields, field", [
    ({"attr_warranted": "maybe"}, "attributes.warranted"),
    ({"corrected_amount": "12.345"}, "corrected_amount_minor"),
    ({"corrected_amount": "ten"}, "corrected_amount_minor"),
    ({"share_1_type": "carrier", "share_1_amount": "1e9999"}, "corrected_liability.1.amount_minor"),
])
def test_verdict_form_rejects_bad_input_naming_the_field(fields, field):
    with pytest.raises(Problem) as caught:
        _verdict_from_form(_form(**fields))
    assert caught.value.status == 422
    assert field in [e["field"] for e in caught.value.errors or []]
