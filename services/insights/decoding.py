"""insights' record decoding: the shared contract check, with the region-currency check of its hot event types
done by reading their money fields by name (as the ledger does, services/ledger/decoding.py).

``shared.contracts.registry.decode_envelope`` finds money amounts by walking every field of the payload, a
generic walk that cost about a quarter of the shared decoding of a ticket. The event types insights takes
in bulk have fixed money fields (``MONEY_FIELDS``); anything else (another type, an unknown region, a
currency that does not match, a record that does not parse) goes to the shared code, so errors and their
wording are the shared ones. Unit tests prove ``decode`` gives what ``decode_envelope`` gives, and that
``MONEY_FIELDS`` names exactly each model's money fields.
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

MONEY_FIELDS: dict[type[ev.Payload], tuple[str, ...]] = {
    ev.TicketOpened: ("order_amount", "affected_amount"),
    ev.ManualCompensationIssued: ("amount", "order_amount"),
    ev.CompensationIssued: ("amount", "min_spend"),
    ev.VoucherRedeemed: ("discount",),
    ev.VoucherExpired: (),
    ev.VoucherRevoked: (),
    ev.DecisionRecorded: ("amount",),
    ev.BuyerFeedbackGiven: (),
}

_CURRENCY: dict[str, str] = {}


def _currency(region: str) -> str | None:
    currency = _CURRENCY.get(region)
    if currency is None:
        try:
            currency = _CURRENCY[region] = catalogue().get(region).currency
        except UnknownRegion:
            return None
    return currency


def currency_matches(region: str, payload: ev.Payload) -> bool | None:
    """True/False when every money amount of a hot type is (not) in the region's currency; None when this
    module cannot tell (another type, an unknown region)."""
    names = MONEY_FIELDS.get(type(payload))
    currency = _currency(region)
    if names is None or currency is None:
        return None
    for name in names:
        value = getattr(payload, name)
        if value is not None and value.currency != currency:
            return False
    return True


def decode(raw: bytes) -> tuple[Envelope, Any]:
    """``registry.decode_envelope``: raises ContractError (never anything else) on bad input."""
    try:
        envelope = Envelope.model_validate(orjson.loads(raw))
        model = registry.payload_model(envelope.event_type, envelope.schema_version)
        payload = model.model_validate(envelope.payload)
    except (orjson.JSONDecodeError, ValidationError, ContractError):
        return registry.decode_envelope(raw)  # raises the shared ContractError, worded as there
    if currency_matches(envelope.region, payload):
        return envelope, payload
    return registry.decode_envelope(raw)
