"""The outbox record intake assembles by hand must be exactly what the contract's own encoder gives."""

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.intake.domain.checks import money_of
from services.intake.domain.items import ITEM_MODELS, payload_of
from services.intake.domain.screening import screen
from services.intake.persistence import outbox_record
from shared.contracts.envelope import Envelope
from shared.contracts.registry import LATEST, decode_envelope, encode_envelope, money_fields, partition_key
from shared.kafka.producer import envelope_headers
from shared.regions import catalogue
from tests.unit.intake.intake_samples import sample

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


TRACE = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


@pytest.mark.parametrize("event_type", list(ITEM_MODELS))
@pytest.mark.parametrize("meta", [{}, {"correlation_id": "c-1", "traceparent": TRACE}])
def test_hand_built_record_equals_the_contract_encoding(event_type, meta):
    raw = sample(event_type, occurred_at="2026-11-20T17:30:00.123456+08:00", **meta)
    (candidate,) = screen(event_type, [raw], now=NOW, max_skew=timedelta(0),
                          regions=catalogue(), may_send_to=lambda r: True).candidates
    topic, key, value, headers = outbox_record(event_type, candidate, "order-system", NOW)
    envelope, payload = decode_envelope(value)
    expected = Envelope(event_id=raw["event_id"], event_type=event_type, schema_version=LATEST[event_type].version,
                        occurred_at=candidate.item.occurred_at, produced_at=NOW, source="order-system",
                        region="SG", correlation_id=envelope.correlation_id, traceparent=meta.get("traceparent"),
                        payload=payload_of(candidate.data))
    assert value == encode_envelope(expected)
    assert headers == envelope_headers(expected)
    assert topic == LATEST[event_type].topic.value
    assert key == partition_key(expected, payload).encode()
    if meta:
        assert envelope.correlation_id == "c-1"
    assert orjson.loads(value)["occurred_at"] == "2026-11-20T09:30:00.123456Z"


@pytest.mark.parametrize("event_type", list(ITEM_MODELS))
def test_fast_money_walk_finds_what_the_generic_one_finds(event_type):
    raw = sample(event_type)
    if event_type == "ticket.opened":
        raw["affected_amount"] = {"amount_minor": 5, "currency": "SGD"}
    if event_type == "compensation.manual_issued":
        raw["order_amount"] = {"amount_minor": 5000, "currency": "SGD"}
    it = ITEM_MODELS[event_type].model_validate(raw)
    assert money_of(it) == money_fields(it)
