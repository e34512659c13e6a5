"""The ledger's decoding (services/ledger/decoding.py, the runners' ``decoder=``) gives exactly what the shared decoding
gives: the same envelope and payload, or the same ContractError; and the app wires it in."""

from __future__ import annotations

import types
import typing
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_factories import CURRENCY, NOW, carrier, correction, expired, issued, manual, redeemed, request, seller
from pydantic import BaseModel

from services.ledger import decoding
from services.ledger.app import books_group, build_app
from services.ledger.config import Settings
from shared.contracts import events as ev
from shared.contracts.registry import REGISTRY, ContractError, decode_envelope, encode_envelope
from shared.db import make_engine
from shared.kafka.consumer import ConsumerRunner

SAMPLES = [
    manual("M1", 600, region="US", shares=[(seller(), 400), (carrier(), 200)]),
    manual("M2", 90_000, region="ID"),
    issued("R1", 500),
    request("R2", 500, fallbacks=(300, 100)),
    redeemed("C1", 250),
    expired("C1"),
    correction("K1", "C1", 100),
]
CURRENCIES = ["SGD", "USD", "IDR", "GBP", "EUR"]
REGIONS = ["SG", "US", "ID", "GB", "XX"]


def outcome(decoder: Any, raw: bytes) -> tuple[str, Any]:
    try:
        envelope, payload = decoder(raw)
    except ContractError as exc:
        return "error", (type(exc), str(exc), exc.errors)
    # model equality, and the same field set and types all the way down
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
    assert outcome(decoding.decode, raw)[0] == "error"
    same(raw)


def _money_paths(doc: dict) -> list[list[Any]]:
    """Paths (inside the payload) of every money object of a document."""
    found: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        if isinstance(node, dict):
            if set(node) == {"amount_minor", "currency"}:
                found.append(path)
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])

    walk(doc, [])
    return found


def _set(doc: dict, path: list[Any], value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def _document(sample: Any, region: str, data: Any, order_amount: str | None, min_spend: str | None) -> dict:
    doc = orjson.loads(encode_envelope(sample))
    doc["region"] = region
    payload = doc["payload"]
    if order_amount and sample.event_type == "compensation.manual_issued":
        payload["order_amount"] = {"amount_minor": 1_000, "currency": order_amount}
    if min_spend and sample.event_type == "compensation.issued":
        payload["min_spend"] = {"amount_minor": 0, "currency": min_spend}
    # Every money amount gets a currency of its own, mostly the region's, so that often exactly one of
    # them is off: the case a field missing from MONEY_FIELDS would let through.
    currencies = st.sampled_from([CURRENCY.get(region, "EUR")] * 3 + CURRENCIES)
    for path in _money_paths(payload):
        _set(payload, [*path, "currency"], data.draw(currencies))
    return doc


@settings(max_examples=500, deadline=None)
@given(sample=st.sampled_from(SAMPLES), region=st.sampled_from(REGIONS), data=st.data(),
       order_amount=st.none() | st.sampled_from(CURRENCIES), min_spend=st.none() | st.sampled_from(CURRENCIES))
def test_any_currencies_and_region_decode_as_the_shared_decoder(sample, region, data, order_amount, min_spend):
    same(orjson.dumps(_document(sample, region, data, order_amount, min_spend)))


@settings(max_examples=300, deadline=None)
@given(sample=st.sampled_from(SAMPLES), region=st.sampled_from(REGIONS), data=st.data(),
       drop=st.none() | st.sampled_from(["compensation_id", "amount", "liability", "region", "occurred_at"]),
       amount=st.sampled_from([None, 0, -5, 1, "7", 1.5]))
def test_broken_documents_decode_as_the_shared_decoder(sample, region, data, drop, amount):
    doc = _document(sample, region, data, None, None)
    payload = doc["payload"]
    if amount is not None and isinstance(payload.get("amount"), dict):
        payload["amount"]["amount_minor"] = amount
    if drop == "region" or drop == "occurred_at":
        doc.pop(drop)
    elif drop:
        payload.pop(drop, None)
    same(orjson.dumps(doc))


def _holds_money(annotation: Any, seen: set[type]) -> bool:
    """Whether a field of this type can hold a MoneyAmount, at any depth."""
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
    # A money field added to one of these contracts must be added to MONEY_FIELDS, or its currency would
    # go unchecked by the fast path. Nested money (inside another model) would need more than a name.
    direct = {name for name, f in model.model_fields.items() if _holds_money(f.annotation, set())}
    assert set(decoding.MONEY_FIELDS[model]) == direct
    for name in direct:
        for arg in typing.get_args(model.model_fields[name].annotation) or (model.model_fields[name].annotation,):
            inner = typing.get_args(arg) or (arg,)
            assert all(a is type(None) or issubclass(a, ev.MoneyAmount) for a in inner), (name, arg)


def test_money_fields_cover_the_models_the_ledger_takes_in_bulk():
    models = {spec.model for (event_type, _), spec in REGISTRY.items()
              if event_type in {"compensation.manual_issued", "compensation.issued", "voucher.redeemed",
                                "budget.reservation_requested"}}
    assert models == set(decoding.MONEY_FIELDS)


def _record(value: bytes | None, offset: int = 7) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic="t", partition=3, offset=offset, timestamp=123, timestamp_type=0, key=b"k",
                          value=value, checksum=None, serialized_key_size=1,
                          serialized_value_size=len(value or b""), headers=[])


def _runner(settings_: Settings, **options: Any) -> ConsumerRunner:
    return ConsumerRunner(settings=settings_, engine=make_engine(settings_.database_url, "ledger"), group_id="g",
                          topics=["t"], handler=None, **options)  # type: ignore[arg-type]


def test_ledger_runner_decodes_records_as_the_shared_runner():
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x")
    ours, shared = _runner(s, decoder=decoding.decode), _runner(s)
    bad_currency = orjson.loads(encode_envelope(SAMPLES[0]))
    bad_currency["payload"]["amount"]["currency"] = "SGD"
    for value in [encode_envelope(e) for e in SAMPLES] + [None, b"nope", orjson.dumps(bad_currency)]:
        a, b = ours._decode(_record(value)), shared._decode(_record(value))  # type: ignore[attr-defined]
        assert (a.record, a.delivered, a.error, a.attempts) == (b.record, b.delivered, b.error, b.attempts)


def test_books_group_runs_large_batches_with_the_ledger_runner():
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x", consumer_max_batch=300)
    ctx = build_app(s, housekeeping=False).state.ctx
    batches = {r.group_id: (r.decoder, r.max_batch) for r in ctx.runners}
    assert batches == {books_group(s): (decoding.decode, 2000), "ledger-budget": (decoding.decode, 300)}
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x", books_max_batch=50)
    assert {r.group_id: r.max_batch for r in build_app(s).state.ctx.runners}[books_group(s)] == 50


def test_currency_matches_reads_every_named_field():
    p = ev.BudgetReservationRequested.model_validate(request("R9", 500, fallbacks=(100,)).payload)
    assert decoding.currency_matches("SG", p) is True
    assert decoding.currency_matches("US", p) is False
    assert decoding.currency_matches("XX", p) is None
    wrong = p.model_copy(update={"fallback_amounts": [ev.PositiveMoney(amount_minor=1, currency="USD")]})
    assert decoding.currency_matches("SG", wrong) is False
    ticket_like = ev.VoucherExpired(compensation_id="C", buyer_id="B")
    assert decoding.currency_matches("SG", ticket_like) is None
    assert NOW.tzinfo is not None
