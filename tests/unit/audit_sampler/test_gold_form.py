"""The gold form's translation of fields into the workflow's input: exact amounts in the region's currency,
local times, skipped empty rows, and error positions mapped back to the rows the lead filled in."""

from services.audit_sampler.web.forms import gold_from_form, without_covered
from shared.regions import region


def test_amounts_are_exact_minor_units_of_the_regions_currency():
    parsed = gold_from_form({"amount": "15000", "order_amount": "0.5", "share_0_type": "platform",
                             "share_0_amount": "15000"}, region("ID"))  # IDR has no minor units
    assert parsed.gold.compensation["amount"] == {"amount_minor": 15000, "currency": "IDR"}
    assert parsed.gold.compensation["liability"] == [{"party": {"type": "platform"}, "amount_minor": 15000}]
    assert "order_amount" not in parsed.gold.compensation  # 0.5 rupiah cannot be paid
    assert [e["field"] for e in parsed.errors] == ["compensation.order_amount"]
    us = gold_from_form({"amount": "12.50"}, region("US"))
    assert us.gold.compensation["amount"] == {"amount_minor": 1250, "currency": "USD"} and not us.errors


def test_unreadable_values_are_left_out_and_reported():
    parsed = gold_from_form({"amount": "1e3", "valid_until": "next tuesday", "ticket_id": "  ",
                             "expect_warranted": "maybe", "expect_kind_correct": "no"}, region("US"))
    comp = parsed.gold.compensation
    assert "amount" not in comp and "valid_until" not in comp and "ticket_id" not in comp
    assert {e["field"] for e in parsed.errors} == {"compensation.amount", "compensation.valid_until"}
    assert parsed.gold.expected == {"kind_correct": False}  # the workflow names the unanswered ones


def test_local_times_take_the_regions_zone():
    parsed = gold_from_form({"valid_until": "2030-07-01T09:00"}, region("SG"))
    assert parsed.gold.compensation["valid_until"] == "2030-07-01T09:00:00+08:00"


def test_errors_land_on_the_rows_the_lead_filled_in():
    parsed = gold_from_form({"share_1_type": "seller", "share_1_id": "S1", "share_1_amount": "x",
                             "evidence_2_kind": "photo"}, region("US"))
    assert parsed.share_rows == (1,) and parsed.evidence_rows == (2,)
    assert parsed.errors == [{"field": "compensation.liability.0.amount_minor",
                              "message": "not an amount in USD: write it like 12.50"}]
    moved = parsed.on_rows([*parsed.errors, {"field": "compensation.evidence.0.uri", "message": "Field required"},
                            {"field": "compensation.liability", "message": "too many"}])
    assert [e["field"] for e in moved] == ["compensation.liability.1.amount_minor", "compensation.evidence.2.uri",
                                           "compensation.liability"]


def test_errors_already_reported_are_not_repeated():
    form_errors = [{"field": "compensation.amount", "message": "write it like 12.50"}]
    workflow_errors = [{"field": "compensation.amount", "message": "Field required"},
                       {"field": "compensation.amount.currency", "message": "x"},
                       {"field": "compensation.amount_x", "message": "kept"}, {"field": "queue", "message": "kept"}]
    assert [e["field"] for e in without_covered(workflow_errors, form_errors)] == ["compensation.amount_x", "queue"]
