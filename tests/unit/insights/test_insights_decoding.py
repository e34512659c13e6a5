"""insights' decoding (services/insights/decoding.py, its runner's ``decoder=``) gives exactly what the shared
decoding gives: the same envelope and payload, or the same ContractError."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from services.insights import decoding
from services.insights.app import build_app
from services.insights.config import Settings
from shared.contracts import events as ev
from shared.contracts.registry import ContractError, decode_envelope, encode_envelope, make_envelope

NOW = datetime(2026, 11, 20, 9, tzinfo=UTC)


def _env(event_type: str, payload: ev.Payload, region: str = "SG") -> Any:
    return make_envelope(event_type, payload, source="t", region=region, occurred_at=NOW, event_id=f"e-{event_type}")


def _m(minor: int, currency: str = "SGD") -> ev.PositiveMoney:
    return ev.PositiveMoney(amount_minor=minor, currency=currency)


SAMPLES = [
    _env("ticket.opened", ev.TicketOpened(
        ticket_id="T1", order_id="O1", buyer_id="B1", seller_id="S1", carrier_id="C1",
        reason=ev.TicketReason.LATE_DELIVERY, order_amount=_m(5000), affected_amount=ev.NonNegativeMoney(
            amount_minor=100, currency="SGD"), promised_delivery_at=NOW - timedelta(days=3), delivered_at=NOW,
        raised_by=ev.RaisedBy.LOGISTICS)),
    _env("compensation.manual_issued", ev.ManualCompensationIssued(
        compensation_id="M1", ticket_id="T1", order_id="O1", buyer_id="B1", agent_id="A", team="t",
        kind=ev.CompensationKind.VOUCHER, amount=_m(500), order_amount=_m(5000), reason_code="late",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=500)])),
    _env("compensation.issued", ev.CompensationIssued(
        compensation_id="A1", reservation_id="R1", ticket_id="T1", order_id="O1", buyer_id="B1", strategy_id="s",
        strategy_version=1, reason=ev.TicketReason.DAMAGED, kind=ev.CompensationKind.VOUCHER, amount=_m(300),
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=300)],
        min_spend=ev.NonNegativeMoney(amount_minor=0, currency="SGD"))),
    _env("voucher.redeemed", ev.VoucherRedeemed(compensation_id="A1", buyer_id="B1", order_id="O2",
                                                discount=_m(200))),
    _env("voucher.expired", ev.VoucherExpired(compensation_id="A1", buyer_id="B1")),
    _env("decision.recorded", ev.DecisionRecorded(
        ticket_id="T1", order_id="O1", buyer_id="B1", reason=ev.TicketReason.DAMAGED, ticket_occurred_at=NOW,
        shadow=False, outcome=ev.DecisionOutcome.HOLDOUT, failed_rule="holdout", detail="x", strategy_id="s",
        strategy_version=1, amount=_m(100))),
    _env("buyer.feedback_given", ev.BuyerFeedbackGiven(feedback_id="F", ticket_id="T1", order_id="O1",
                                                       buyer_id="B1", kind=ev.FeedbackKind.CSAT, score=4,
                                                       channel="survey")),
    _env("budget.limit_set", ev.BudgetLimitSet(budget_period="2026-11", limit=ev.NonNegativeMoney(
        amount_minor=10, currency="SGD"), actor="a")),
]
CURRENCIES = ["SGD", "USD", "IDR"]
REGIONS = ["SG", "US", "ID", "XX"]


def outcome(decoder: Any, raw: bytes) -> tuple[str, Any]:
    try:
        envelope, payload = decoder(raw)
    except ContractError as exc:
        return "error", (type(exc), str(exc), exc.errors)
    return "ok", (envelope, payload, type(payload), payload.model_fields_set, payload.model_dump(mode="python"))


def same(raw: bytes) -> None:
    assert outcome(decoding.decode, raw) == outcome(decode_envelope, raw)


@pytest.mark.parametrize("envelope", SAMPLES, ids=lambda e: e.event_type)
def test_decodes_valid_records_as_the_shared_decoder(envelope):
    raw = encode_envelope(envelope)
    assert outcome(decoding.decode, raw)[0] == "ok"
    same(raw)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"{}", b'{"event_id": 1}', b"\xff\xfe"])
def test_rejects_broken_records_as_the_shared_decoder(raw):
    same(raw)


def _money_paths(node: Any, path: list[Any]) -> list[list[Any]]:
    if isinstance(node, dict):
        found = [path] if set(node) == {"amount_minor", "currency"} else []
        for k, v in node.items():
            found += _money_paths(v, [*path, k])
        return found
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _money_paths(v, [*path, i])]
    return []


@settings(max_examples=400, deadline=None)
@given(sample=st.sampled_from(SAMPLES), region=st.sampled_from(REGIONS), data=st.data(),
       drop=st.none() | st.sampled_from(["ticket_id", "amount", "region", "score", "reason"]))
def test_any_currencies_regions_and_gaps_decode_as_the_shared_decoder(sample, region, data, drop):
    doc = orjson.loads(encode_envelope(sample))
    doc["region"] = region
    for path in _money_paths(doc["payload"], []):
        target = doc["payload"]
        for step in path:
            target = target[step]
        target["currency"] = data.draw(st.sampled_from(["SGD", "SGD", *CURRENCIES]))
    if drop == "region":
        doc.pop("region")
    elif drop:
        doc["payload"].pop(drop, None)
    same(orjson.dumps(doc))


def _holds_money(annotation: Any, seen: set[type]) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, ev.MoneyAmount):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return False
        seen.add(annotation)
        return any(_holds_money(f.annotation, seen) for f in annotation.model_fields.values())
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or args:
        return any(_holds_money(a, seen) for a in args)
    return False


@pytest.mark.parametrize("model", list(decoding.MONEY_FIELDS), ids=lambda m: m.__name__)
def test_money_fields_name_every_money_field_of_the_model(model):
    direct = {name for name, f in model.model_fields.items() if _holds_money(f.annotation, set())}
    assert set(decoding.MONEY_FIELDS[model]) == direct
    for name in direct:  # a name reaches the money itself, not money nested in another model
        for arg in typing.get_args(model.model_fields[name].annotation) or (model.model_fields[name].annotation,):
            assert arg is type(None) or issubclass(arg, ev.MoneyAmount), (name, arg)


def test_the_service_runner_uses_it_with_large_batches():
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x")
    (runner,) = build_app(s, compactor=False).state.ctx.runners
    assert (runner.decoder, runner.max_batch, runner.pause_gc) == (decoding.decode, 2000, True)
