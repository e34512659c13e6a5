"""The ledger's record decoding: the shared contract check, with the region-currency check of the hot event
types done by reading their money fields directly.

``shared.contracts.registry.decode_envelope`` validates the envelope and payload (pydantic), then checks
that every money amount is in the region's currency by walking every field of the payload
(``money_fields``: generic, for any model). Profiled in the running ledger, that walk was about an eighth
of the consumer's CPU. Payload models are frozen and their money fields are fixed per class, so for the
event types the ledger takes in bulk the amounts are read by name (``MONEY_FIELDS``). Anything unusual
(another event type, an unknown region, a currency that does not match) is handed to the shared code, so
errors and their wording are the shared ones. Unit tests prove that ``decode`` gives what the shared
``decode_envelope`` gives (the same envelope and payload, or a ``ContractError`` with the same message and
errors) for valid and broken records, and that ``MONEY_FIELDS`` names exactly the money fields each model
has, so a money field added to a contract cannot slip past the check.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from shared.contracts import events as ev
from shared.contracts import registry
from shared.contracts.envelope import Envelope
from shared.contracts.registry import ContractError
from shared.regions import UnknownRegion, catalogue

# Money fields per payload model, by name: a MoneyAmount (or None) each; ``fallback_amounts`` is a list.
MONEY_FIELDS: dict[type[ev.Payload], tuple[str, ...]] = {
    ev.ManualCompensationIssued: ("amount", "order_amount"),
    ev.CompensationIssued: ("amount", "min_spend"),
    ev.VoucherRedeemed: ("discount",),
    ev.BudgetReservationRequested: ("amount", "fallback_amounts"),
}

_CURRENCY: dict[str, str] = {}  # region code -> currency; the catalogue is fixed for the process


def _currency(region: str) -> str | None:
    currency = _CURRENCY.get(region)
    if currency is None:
        try:
            currency = _CURRENCY[region] = catalogue().get(region).currency
        except UnknownRegion:
            return None
    return currency


def currency_matches(region: str, payload: ev.Payload) -> bool | None:
    """True/False when every money amount of a known hot type is (not) in the region's currency; None when
    this module cannot tell (another type, an unknown region) and the shared check must decide."""
    names = MONEY_FIELDS.get(type(payload))
    currency = _currency(region)
    if names is None or currency is None:
        return None
    for name in names:
        value = getattr(payload, name)
        if value is None:
            continue
        if isinstance(value, list):
            if any(m.currency != currency for m in value):
                return False
        elif value.currency != currency:
            return False
    return True


def validate_payload(envelope: Envelope) -> ev.Payload:
    """``registry.validate_payload``: the same schema check, the same errors."""
    model = registry.payload_model(envelope.event_type, envelope.schema_version)
    try:
        payload = model.model_validate(envelope.payload)
    except ValidationError:
        return registry.validate_payload(envelope)  # raises the shared ContractError, worded as there
    if currency_matches(envelope.region, payload):
        return payload
    errors = registry.region_currency_errors(envelope.region, payload)
    if errors:
        raise ContractError("payload money is not in the region's currency", errors)
    return payload


def decode(raw: bytes) -> tuple[Envelope, Any]:
    """``registry.decode_envelope``: raises ContractError (never anything else) on bad input."""
    try:
        data = orjson.loads(raw)
        envelope = Envelope.model_validate(data)
    except (orjson.JSONDecodeError, ValidationError):
        return registry.decode_envelope(raw)  # raises the shared ContractError, worded as there
    return envelope, validate_payload(envelope)
