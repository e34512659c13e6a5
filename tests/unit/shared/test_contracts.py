import copy
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from shared.contracts import events as ev
from shared.contracts.export import REPO_CONTRACTS, check, compatibility_errors, event_schema
from shared.contracts.registry import (
    REGISTRY,
    ContractError,
    decode_envelope,
    encode_envelope,
    make_envelope,
    partition_key,
)

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def ticket(**over):
    data = dict(ticket_id="T1", order_id="O1", buyer_id="B1", seller_id="S1", reason="late_delivery",
                order_amount={"amount_minor": 5000, "currency": "SGD"},
                promised_delivery_at=NOW - timedelta(days=5), delivered_at=NOW)
    data.update(over)
    return ev.TicketOpened(**data)


def test_committed_schemas_are_compatible_with_the_models():
    assert check(REPO_CONTRACTS) == []


def test_every_registered_event_has_a_committed_schema():
    names = {p.name for p in REPO_CONTRACTS.glob("*.schema.json")}
    for spec in REGISTRY.values():
        assert f"{spec.event_type}.v{spec.version}.schema.json" in names
    assert (REPO_CONTRACTS / "asyncapi.yaml").exists()


def test_compatibility_check_catches_breaking_changes():
    spec = REGISTRY[("ticket.opened", 1)]
    old = event_schema(spec)
    removed = copy.deepcopy(old)
    del removed["properties"]["payload"]["properties"]["reason"]
    assert any("reason: property removed" in e for e in compatibility_errors(old, removed))
    required = copy.deepcopy(old)
    required["properties"]["payload"]["required"].append("carrier_id")
    assert any("carrier_id: newly required" in e for e in compatibility_errors(old, required))
    narrowed = copy.deepcopy(old)
    reason_def = narrowed["$defs"]["TicketReason"]
    reason_def["enum"] = [v for v in reason_def["enum"] if v != "damaged"]
    assert any("enum values removed" in e for e in compatibility_errors(old, narrowed))
    added = copy.deepcopy(old)
    added["properties"]["payload"]["properties"]["new_optional"] = {"type": "string"}
    assert compatibility_errors(old, added) == []


def test_roundtrip_and_key():
    env = make_envelope("ticket.opened", ticket(), source="logistics", region="SG", occurred_at=NOW)
    decoded, payload = decode_envelope(encode_envelope(env))
    assert decoded == env
    assert partition_key(decoded, payload) == "B1"


def test_money_must_be_in_the_region_currency():
    env = make_envelope("ticket.opened", ticket(), source="x", region="GB", occurred_at=NOW)
    with pytest.raises(ContractError) as exc:
        decode_envelope(encode_envelope(env))
    assert exc.value.errors == [("payload.order_amount.currency", "must be GBP, the currency of region GB")]


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d.update(occurred_at="2026-11-22T08:00:00"), "occurred_at"),
    (lambda d: d.update(region="ZZ"), "region"),
    (lambda d: d.update(unexpected=1), "unexpected"),
    (lambda d: d["payload"]["order_amount"].update(amount_minor=12.5), "payload.order_amount.amount_minor"),
    (lambda d: d["payload"]["order_amount"].update(amount_minor="100"), "payload.order_amount.amount_minor"),
    (lambda d: d["payload"].update(reason="alien_abduction"), "payload.reason"),
    (lambda d: d.update(schema_version=99), "event_type"),
])
def test_bad_events_name_the_field(mutate, field):
    env = make_envelope("ticket.opened", ticket(), source="x", region="SG", occurred_at=NOW)
    data = orjson.loads(encode_envelope(env))
    mutate(data)
    with pytest.raises(ContractError) as exc:
        decode_envelope(orjson.dumps(data))
    assert any(f == field or f.startswith(field) for f, _ in exc.value.errors), exc.value.errors


def test_not_json_is_a_contract_error():
    with pytest.raises(ContractError, match="not JSON"):
        decode_envelope(b"\x00garbage")


def test_liability_shares_must_sum_to_the_amount():
    base = dict(compensation_id="C1", ticket_id="T1", order_id="O1", buyer_id="B1", agent_id="A1", team="t",
                kind="voucher", amount={"amount_minor": 1000, "currency": "USD"}, reason_code="late_delivery")
    ok = ev.ManualCompensationIssued(**base, liability=[
        {"party": {"type": "seller", "id": "S1"}, "amount_minor": 500},
        {"party": {"type": "platform"}, "amount_minor": 500}])
    assert ok.liability[0].party.account_key == "seller:S1"
    with pytest.raises(ValueError, match="sum exactly"):
        ev.ManualCompensationIssued(**base, liability=[{"party": {"type": "platform"}, "amount_minor": 999}])
    with pytest.raises(ValueError, match="needs an id"):
        ev.LiableParty(type="carrier")
    with pytest.raises(ValueError, match="no id"):
        ev.LiableParty(type="platform", id="P")


def test_late_delivery_needs_both_dates():
    with pytest.raises(ValueError, match="promised_delivery_at and delivered_at"):
        ticket(delivered_at=None)


def test_reservation_tiers_must_descend():
    base = dict(reservation_id="R1", compensation_id="C1", ticket_id="T1", buyer_id="B1", strategy_id="s",
                strategy_version=1, kind="voucher", amount={"amount_minor": 1000, "currency": "USD"},
                expires_at=NOW)
    ev.BudgetReservationRequested(**base, fallback_amounts=[{"amount_minor": 500, "currency": "USD"}])
    with pytest.raises(ValueError, match="strictly descending"):
        ev.BudgetReservationRequested(**base, fallback_amounts=[{"amount_minor": 1000, "currency": "USD"}])
