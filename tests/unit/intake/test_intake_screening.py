from datetime import UTC, datetime, timedelta

import pytest

from services.intake.domain.checks import item_errors
from services.intake.domain.items import ITEM_MODELS, payload_of
from services.intake.domain.screening import Status, screen, settle
from shared.contracts.registry import LATEST
from shared.regions import catalogue
from tests.unit.intake.intake_samples import sample

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
SKEW = timedelta(seconds=300)


def run(event_type, items, may_send_to=lambda region: True, stored=None):
    screened = screen(event_type, items, now=NOW, max_skew=SKEW, regions=catalogue(), may_send_to=may_send_to)
    on_record = {c.item.event_id: None for c in screened.candidates}
    on_record.update(stored or {})
    return screened, settle(screened, on_record)


@pytest.mark.parametrize("event_type", list(ITEM_MODELS))
def test_every_example_is_valid_and_its_payload_meets_the_contract(event_type):
    (outcome,) = run(event_type, [sample(event_type)])[1]
    assert outcome.status is Status.ACCEPTED and outcome.errors == []
    item = ITEM_MODELS[event_type].model_validate(sample(event_type))
    LATEST[event_type].model.model_validate(payload_of(item.model_dump(mode="json")))


@pytest.mark.parametrize("event_type", list(ITEM_MODELS))
def test_unknown_fields_are_rejected_by_name(event_type):
    (outcome,) = run(event_type, [sample(event_type, surprise=1)])[1]
    assert outcome.status is Status.REJECTED
    assert [(e.field, e.reason) for e in outcome.errors] == [("surprise", "schema")]


@pytest.mark.parametrize("bad, field", [
    ({"order_amount": {"amount_minor": 10.5, "currency": "SGD"}}, "order_amount.amount_minor"),
    ({"order_amount": {"amount_minor": "1000", "currency": "SGD"}}, "order_amount.amount_minor"),
    ({"order_amount": {"amount_minor": 0, "currency": "SGD"}}, "order_amount.amount_minor"),
    ({"occurred_at": "2026-11-20T09:30:00"}, "occurred_at"),
    ({"occurred_at": "yesterday"}, "occurred_at"),
    ({"region": "sg"}, "region"),
    ({"event_id": ""}, "event_id"),
    ({"event_id": "has space"}, "event_id"),
    ({"reason": "bored"}, "reason"),
    ({"buyer_id": 4711}, "buyer_id"),
])
def test_schema_errors_name_the_field(bad, field):
    (outcome,) = run("ticket.opened", [sample("ticket.opened", **bad)])[1]
    assert outcome.status is Status.REJECTED
    assert field in [e.field for e in outcome.errors]


def test_missing_required_field_is_named():
    item = sample("ticket.opened")
    del item["buyer_id"]
    (outcome,) = run("ticket.opened", [item])[1]
    assert [e.field for e in outcome.errors] == ["buyer_id"]


def test_contract_rules_apply_to_items():
    item = sample("ticket.opened")
    del item["delivered_at"]
    (outcome,) = run("ticket.opened", [item])[1]
    assert outcome.status is Status.REJECTED and "late_delivery" in outcome.errors[0].message
    manual = sample("compensation.manual_issued",
                    liability=[{"party": {"type": "seller", "id": "S-310"}, "amount_minor": 499}])
    (outcome,) = run("compensation.manual_issued", [manual])[1]
    assert outcome.status is Status.REJECTED and "sum exactly" in outcome.errors[0].message


def test_unknown_region_is_named():
    (outcome,) = run("buyer.order_placed", [sample("buyer.order_placed", region="ZZ")])[1]
    assert [(e.field, e.reason) for e in outcome.errors] == [("region", "unknown_region")]
    assert outcome.region == "unknown"


def test_money_must_be_in_the_regions_currency_every_amount_named():
    item = sample("ticket.opened", region="GB", affected_amount={"amount_minor": 100, "currency": "SGD"})
    (outcome,) = run("ticket.opened", [item])[1]
    assert sorted(e.field for e in outcome.errors) == ["affected_amount.currency", "order_amount.currency"]
    assert {e.reason for e in outcome.errors} == {"currency"}
    fine = sample("ticket.opened", region="GB", order_amount={"amount_minor": 100, "currency": "GBP"})
    assert run("ticket.opened", [fine])[1][0].status is Status.ACCEPTED


def test_future_timestamps_beyond_the_skew_are_rejected_but_promises_may_lie_ahead():
    within = sample("ticket.opened", occurred_at=(NOW + SKEW).isoformat())
    assert run("ticket.opened", [within])[1][0].status is Status.ACCEPTED
    beyond = sample("ticket.opened", occurred_at=(NOW + SKEW + timedelta(seconds=1)).isoformat())
    (outcome,) = run("ticket.opened", [beyond])[1]
    assert [(e.field, e.reason) for e in outcome.errors] == [("occurred_at", "clock_skew")]
    delivered_later = sample("ticket.opened", delivered_at="2026-12-01T00:00:00Z",
                             promised_delivery_at="2026-12-24T00:00:00Z")
    (outcome,) = run("ticket.opened", [delivered_later])[1]
    assert [e.field for e in outcome.errors] == ["delivered_at"]


def test_other_offsets_are_normalised_to_utc():
    item = ITEM_MODELS["ticket.opened"].model_validate(sample("ticket.opened", occurred_at="2026-11-20T17:30:00+08:00"))
    assert item.occurred_at == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    assert not item_errors("ticket.opened", item, now=NOW, max_skew=SKEW, regions=catalogue())


def test_region_outside_the_credential_is_forbidden():
    (outcome,) = run("ticket.opened", [sample("ticket.opened")], may_send_to=lambda r: r == "GB")[1]
    assert [(e.field, e.reason) for e in outcome.errors] == [("region", "forbidden_region")]


def test_non_objects_are_rejected_not_crashed():
    outcomes = run("voucher.expired", [None, 5, "x", [], {}])[1]
    assert [o.status for o in outcomes] == [Status.REJECTED] * 5
    assert all(o.event_id is None and o.errors for o in outcomes)


def test_batch_mixes_good_bad_duplicate_and_conflict_in_request_order():
    good = sample("voucher.expired", event_id="e1")
    again = sample("voucher.expired", event_id="e1")
    changed = sample("voucher.expired", event_id="e1", buyer_id="someone-else")
    bad = sample("voucher.expired", event_id="e2", region="XX")
    old_same = sample("voucher.expired", event_id="e3")
    old_changed = sample("voucher.expired", event_id="e4")
    screened = screen("voucher.expired", [good, bad, again, changed, old_same, old_changed], now=NOW,
                      max_skew=SKEW, regions=catalogue(), may_send_to=lambda r: True)
    assert [c.item.event_id for c in screened.candidates] == ["e1", "e3", "e4"]
    fp3 = next(c.fingerprint for c in screened.candidates if c.item.event_id == "e3")
    outcomes = settle(screened, {"e1": None, "e3": fp3, "e4": "0" * 64})
    assert [(o.index, o.status) for o in outcomes] == [
        (0, Status.ACCEPTED), (1, Status.REJECTED), (2, Status.DUPLICATE), (3, Status.CONFLICT),
        (4, Status.DUPLICATE), (5, Status.CONFLICT)]
    assert outcomes[3].errors[0].field == "event_id"


def test_repeat_of_a_conflicting_item_matching_the_record_is_a_duplicate():
    first = sample("voucher.expired", event_id="e9", buyer_id="new")
    on_record = sample("voucher.expired", event_id="e9")
    screened = screen("voucher.expired", [first, on_record], now=NOW, max_skew=SKEW, regions=catalogue(),
                      may_send_to=lambda r: True)
    record_fp = screened.repeats[0].fingerprint
    outcomes = settle(screened, {"e9": record_fp})
    assert [o.status for o in outcomes] == [Status.CONFLICT, Status.DUPLICATE]


def test_order_volume_of_a_day_not_begun_in_the_region_is_rejected():
    # NOW is 16:00 on 2026-11-22 in Singapore: that day may be reported, the next may not.
    today = sample("order.volume_reported", occurred_at=NOW.isoformat(), day="2026-11-22")
    assert run("order.volume_reported", [today])[1][0].status is Status.ACCEPTED
    (outcome,) = run("order.volume_reported", [sample("order.volume_reported", occurred_at=NOW.isoformat(),
                                                      day="2026-11-23")])[1]
    assert [(e.field, e.reason) for e in outcome.errors] == [("day", "clock_skew")]


def test_feedback_scores_are_one_to_five():
    for score, ok in ((1, True), (5, True), (0, False), (6, False)):
        (outcome,) = run("buyer.feedback_given", [sample("buyer.feedback_given", score=score)])[1]
        assert (outcome.status is Status.ACCEPTED) is ok, score
        if not ok:
            assert [e.field for e in outcome.errors] == ["score"]
