"""The one codec of the event contracts: one decoder and one encoder per contract, for every service.

Decoding (``decode``), per (event_type, schema_version): the document is parsed once (orjson, the registry's
parser), its envelope and payload validated by the contract's models, and the money-currency rule of the
region checked by reading the money fields each model is known to have (worked out once per model from its
field types, nested models and lists included) instead of walking every field of every payload. The models
are the contracts (the published JSON Schemas are generated from them), so what this accepts and rejects is
exactly what they accept and reject: their bounds, patterns and cross-field rules are not copied anywhere.

Anything this path does not accept goes to the registry's validating decoder (``registry.decode_envelope``),
which words the error: a bad record gives the same ``ContractError`` as before, field paths and messages
included. Tests prove that for valid and broken documents of every contract ``decode`` gives exactly what
``registry.decode_envelope`` gives.

Encoding: ``encode`` writes a validated envelope (models in hand); ``record`` writes the outbox record
(topic, key, value, headers) of data a service has already checked (intake's validated items, auto_comp's
decisions), without building the models again: the envelope's fields in the contract's order, instants
as pydantic writes them (UTC, ``Z``). Tests prove its bytes, key and headers equal those of
``record_for(make_envelope(...))`` for the same event, so one byte layout exists per contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import orjson
from pydantic import BaseModel, ValidationError

from shared.contracts import events as ev
from shared.contracts import registry
from shared.contracts.envelope import Envelope
from shared.contracts.registry import REGISTRY, ContractError, EventSpec
from shared.regions import UnknownRegion, catalogue

# (topic, key, value, headers): ``shared.outbox.Record``, which this module cannot import (the outbox imports
# the Kafka toolkit, whose runner decodes with this module).
Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


# ---------------------------------------------------------------- money fields, worked out once per model

# How a field holds money: the amount itself, a list of amounts, a model with money inside, a list of those.
_MONEY, _MONEY_LIST, _MODEL, _MODEL_LIST = range(4)
MoneyPlan = tuple[tuple[str, int, "MoneyPlan | None"], ...]
_PLANS: dict[type[BaseModel], MoneyPlan] = {}


def _classes(annotation: Any, listed: bool = False) -> list[tuple[bool, type]]:
    """The classes a field annotation can hold, each with whether it comes in a list (unions, Optional
    and Annotated unwrapped)."""
    import types
    import typing

    if annotation is Any:
        raise TypeError("a field of any type could hold money that the plan would not see")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _classes(args[0], listed)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return [c for a in args for c in _classes(a, listed)]
    if origin in (list, tuple, set, frozenset):
        return [c for a in args if a is not Ellipsis for c in _classes(a, True)]
    if origin is not None:
        return []  # dicts, literals: no contract keeps money there
    return [(listed, annotation)] if isinstance(annotation, type) else []


def money_plan(model: type[BaseModel]) -> MoneyPlan:
    """Where ``model`` keeps money: (field, how, plan of the nested model), in field order."""
    plan = _PLANS.get(model)
    if plan is not None:
        return plan
    _PLANS[model] = ()  # a model that refers to itself has no money through that reference
    steps: list[tuple[str, int, MoneyPlan | None]] = []
    for name, field in model.model_fields.items():
        for listed, cls in _classes(field.annotation):
            if issubclass(cls, ev.MoneyAmount):
                steps.append((name, _MONEY_LIST if listed else _MONEY, None))
                break
            if issubclass(cls, BaseModel) and money_plan(cls):
                steps.append((name, _MODEL_LIST if listed else _MODEL, money_plan(cls)))
                break
    plan = _PLANS[model] = tuple(steps)
    return plan


def currency_matches(plan: MoneyPlan, value: Any, currency: str) -> bool:
    """Whether every money amount the plan finds in ``value`` is in ``currency``."""
    for name, how, inner in plan:
        field = getattr(value, name)
        if field is None:
            continue
        if how == _MONEY:
            if field.currency != currency:
                return False
        elif how == _MONEY_LIST:
            if any(m.currency != currency for m in field):
                return False
        elif how == _MODEL:
            if not currency_matches(cast(MoneyPlan, inner), field, currency):
                return False
        elif not all(currency_matches(cast(MoneyPlan, inner), item, currency) for item in field):
            return False
    return True


_CURRENCY: dict[str, str] = {}  # region code -> currency; the catalogue is fixed for the process


def _currency(region: str) -> str | None:
    currency = _CURRENCY.get(region)
    if currency is None:
        try:
            currency = _CURRENCY[region] = catalogue().get(region).currency
        except UnknownRegion:
            return None
    return currency


# ---------------------------------------------------------------- one codec per contract


_TIMES: dict[datetime, str] = {}  # instants written lately: a batch writes the same few (its clock, each ticket's
_TIMES_MAX = 4_096                 # time) into several events each


def json_time(at: datetime) -> str:
    """An instant written as pydantic writes an aware datetime normalised to UTC (``...Z``).

    Equal datetimes are the same instant (aware ones compare in UTC), so they are written alike: the text
    is remembered for the instants of the batch at hand."""
    text = _TIMES.get(at)
    if text is None:
        text = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if len(_TIMES) >= _TIMES_MAX:
            _TIMES.clear()
        _TIMES[at] = text
    return text


class _RegionOnly(NamedTuple):
    """What a region-keyed contract's key function reads of the envelope."""

    region: str


@dataclass(frozen=True)
class EventCodec:
    """The decoder and the encoder of one contract."""

    spec: EventSpec
    money: MoneyPlan

    def decode(self, data: dict[str, Any]) -> tuple[Envelope, ev.Payload] | None:
        """The validated envelope and payload of a parsed document, or None when the registry's decoder must
        decide (it words the error of a bad record)."""
        try:
            envelope = Envelope.model_validate(data)
            payload = self.spec.model.model_validate(envelope.payload)
        except ValidationError:
            return None
        currency = _currency(envelope.region)
        if currency is None or (self.money and not currency_matches(self.money, payload, currency)):
            return None
        return envelope, payload

    def record(self, payload: Mapping[str, Any], *, event_id: str, occurred_at: datetime | str,
               produced_at: datetime | str, source: str, region: str, correlation_id: str,
               causation_id: str | None = None, traceparent: str | None = None, key: str | None = None,
               payload_object: Any = None) -> Record:
        """The outbox record of an event whose data the caller has checked: ``payload`` is the payload
        model's JSON dump (its fields in the model's order); instants may come as ``...Z`` text already.
        ``key`` (else read from ``payload_object``, else from ``payload`` by the contract's key function)."""
        spec = self.spec
        if key is None:
            key = spec.key(cast(Envelope, _RegionOnly(region)), payload_object or _Fields(payload))
        value = orjson.dumps({
            "event_id": event_id, "event_type": spec.event_type, "schema_version": spec.version,
            "occurred_at": occurred_at if isinstance(occurred_at, str) else json_time(occurred_at),
            "produced_at": produced_at if isinstance(produced_at, str) else json_time(produced_at),
            "source": source, "region": region, "correlation_id": correlation_id, "causation_id": causation_id,
            "traceparent": traceparent, "payload": payload})
        return spec.topic.value, key.encode(), value, headers(spec, event_id, correlation_id, region, traceparent)


class _Fields:
    """A payload dict read as attributes, for the contract's key function."""

    __slots__ = ("_d",)

    def __init__(self, d: Mapping[str, Any]) -> None:
        self._d = d

    def __getattr__(self, name: str) -> Any:
        return self._d[name]


def headers(spec: EventSpec, event_id: str, correlation_id: str, region: str, traceparent: str | None
            ) -> list[tuple[str, bytes]]:
    """The record headers every contract defines (``shared.kafka.producer.envelope_headers``)."""
    out: list[tuple[str, bytes]] = [
        ("event_type", spec.event_type.encode()), ("schema_version", str(spec.version).encode()),
        ("event_id", event_id.encode()), ("correlation_id", correlation_id.encode()),
        ("region", region.encode()), ("content-type", b"application/json")]
    if traceparent:
        out.append(("traceparent", traceparent.encode()))
    return out


def _codec(spec: EventSpec) -> EventCodec:
    return EventCodec(spec, money_plan(spec.model))


CODECS: dict[tuple[str, int], EventCodec] = {key: _codec(spec) for key, spec in REGISTRY.items()}


def codec(event_type: str, version: int | None = None) -> EventCodec:
    """The codec of a contract (its latest version unless ``version`` is given)."""
    if version is None:
        version = registry.LATEST[event_type].version
    return CODECS[(event_type, version)]


def decode(raw: bytes) -> tuple[Envelope, ev.Payload]:
    """Decode and validate a record's value; raises ContractError (never anything else) on bad input."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        key = (data.get("event_type"), data.get("schema_version"))
        found = CODECS.get(key) if isinstance(key[0], str) and type(key[1]) is int else None  # type: ignore[arg-type]
        if found is not None:
            decoded = found.decode(data)
            if decoded is not None:
                return decoded
    return registry.decode_envelope(raw)


def encode(envelope: Envelope) -> bytes:
    """A validated envelope's bytes."""
    return orjson.dumps(envelope.model_dump(mode="json"))


Decoder = Callable[[bytes], tuple[Envelope, ev.Payload]]
__all__ = ["CODECS", "ContractError", "Decoder", "EventCodec", "codec", "decode", "encode", "headers",
           "json_time", "money_plan"]
