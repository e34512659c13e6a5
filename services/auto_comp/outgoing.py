"""auto_comp's outgoing events as outbox records, built straight from data the handlers already checked.

The batch path used to build each payload model (validation), wrap it in an ``Envelope`` (validation again,
including every timestamp), then let ``shared.outbox.enqueue`` validate the payload a third time and dump
it. Every field here comes from a ticket that passed its contract on decode, a strategy the loader
validated, or amounts the engine computed (positive, in the strategy's currency, which the engine checked
against the order's), so the JSON is written directly. Unit tests prove the bytes, key, topic and headers
equal what ``shared.kafka.producer.record_for`` gives for the validated models, and that the documents
pass their contracts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.contracts.registry import LATEST
from shared.outbox import Record

SOURCE = "auto_comp"

_REQUESTED = LATEST["budget.reservation_requested"]
_ISSUED = LATEST["compensation.issued"]
_DECIDED = LATEST["decision.recorded"]


def json_time(at: datetime) -> str:
    """A timestamp written as pydantic writes an aware datetime normalised to UTC (``...Z``)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def money(minor: int, currency: str) -> dict[str, Any]:
    return {"amount_minor": minor, "currency": currency}


def reservation_requested(*, reservation_id: str, compensation_id: str, ticket_id: str, buyer_id: str,
                          strategy_id: str, strategy_version: int, kind: str, amount_minor: int, currency: str,
                          fallback_minor: Sequence[int], pacing_allowance_percent: int | None,
                          expires_at: datetime) -> dict[str, Any]:
    """``BudgetReservationRequested(...).model_dump(mode="json")``, field for field."""
    return {
        "reservation_id": reservation_id, "compensation_id": compensation_id, "ticket_id": ticket_id,
        "buyer_id": buyer_id, "strategy_id": strategy_id, "strategy_version": strategy_version, "kind": kind,
        "amount": money(amount_minor, currency), "fallback_amounts": [money(m, currency) for m in fallback_minor],
        "pacing_allowance_percent": pacing_allowance_percent, "expires_at": json_time(expires_at)}


def compensation_issued(*, compensation_id: str, reservation_id: str, ticket_id: str, order_id: str,
                        buyer_id: str, strategy_id: str, strategy_version: int, reason: str, kind: str,
                        amount_minor: int, currency: str, liability: Sequence[tuple[str, str | None, int]],
                        voucher_code: str | None, min_spend_minor: int | None, valid_until: datetime | None
                        ) -> dict[str, Any]:
    """``CompensationIssued(...).model_dump(mode="json")``; liability is (party type, party id, minor)."""
    return {
        "compensation_id": compensation_id, "reservation_id": reservation_id, "ticket_id": ticket_id,
        "order_id": order_id, "buyer_id": buyer_id, "strategy_id": strategy_id,
        "strategy_version": strategy_version, "reason": reason, "kind": kind,
        "amount": money(amount_minor, currency),
        "liability": [{"party": {"type": t, "id": i}, "amount_minor": m} for t, i, m in liability],
        "voucher_code": voucher_code,
        "min_spend": money(min_spend_minor, currency) if min_spend_minor is not None else None,
        "valid_until": json_time(valid_until) if valid_until is not None else None}


def _record(topic: str, event_type: str, version: int, payload: dict[str, Any], *, key: str, region: str,
            event_id: str, occurred_at: datetime, produced_at: datetime, correlation_id: str,
            causation_id: str | None, traceparent: str | None) -> Record:
    """The record ``record_for(make_envelope(...))`` gives: envelope fields in the model's order."""
    value = orjson.dumps({
        "event_id": event_id, "event_type": event_type, "schema_version": version,
        "occurred_at": json_time(occurred_at), "produced_at": json_time(produced_at), "source": SOURCE,
        "region": region, "correlation_id": correlation_id, "causation_id": causation_id,
        "traceparent": traceparent, "payload": payload})
    headers = [("event_type", event_type.encode()), ("schema_version", str(version).encode()),
               ("event_id", event_id.encode()), ("correlation_id", correlation_id.encode()),
               ("region", region.encode()), ("content-type", b"application/json")]
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    return topic, key.encode(), value, headers


def reservation_requested_record(payload: dict[str, Any], **envelope: Any) -> Record:
    """Keyed by buyer, like every buyer-scoped event."""
    return _record(_REQUESTED.topic.value, _REQUESTED.event_type, _REQUESTED.version, payload,
                   key=payload["buyer_id"], **envelope)


def compensation_issued_record(payload: dict[str, Any], **envelope: Any) -> Record:
    return _record(_ISSUED.topic.value, _ISSUED.event_type, _ISSUED.version, payload,
                   key=payload["buyer_id"], **envelope)


def decision_recorded(*, ticket_id: str, order_id: str, buyer_id: str, seller_id: str | None,
                      carrier_id: str | None, reason: str, ticket_occurred_at: datetime, shadow: bool, outcome: str,
                      failed_rule: str | None, detail: str, strategy_id: str | None, strategy_version: int | None,
                      tier: str | None, kind: str | None, amount_minor: int | None, currency: str,
                      liability: Sequence[tuple[str, str | None, int]] = (), compensation_id: str | None = None
                      ) -> dict[str, Any]:
    """``DecisionRecorded(...).model_dump(mode="json")``; liability is (party type, party id, minor)."""
    return {
        "ticket_id": ticket_id, "order_id": order_id, "buyer_id": buyer_id, "seller_id": seller_id,
        "carrier_id": carrier_id, "reason": reason, "ticket_occurred_at": json_time(ticket_occurred_at),
        "shadow": shadow, "outcome": outcome, "failed_rule": failed_rule, "detail": detail[:2000],
        "strategy_id": strategy_id, "strategy_version": strategy_version, "tier": tier, "kind": kind,
        "amount": money(amount_minor, currency) if amount_minor else None,
        "liability": [{"party": {"type": t, "id": i}, "amount_minor": m} for t, i, m in liability],
        "compensation_id": compensation_id}


def decision_event_id(ticket_id: str, strategy_id: str | None, shadow: bool) -> str:
    """One final decision per ticket (live) and per ticket and shadow strategy: a replay maps to the same id
    (hashed: a ticket id may hold characters an event id may not)."""
    key = f"{ticket_id}\x1f{strategy_id or ''}\x1f{'shadow' if shadow else 'live'}"
    return "decision-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def decision_recorded_record(payload: dict[str, Any], **envelope: Any) -> Record:
    """Keyed by buyer, like the ticket it decides."""
    return _record(_DECIDED.topic.value, _DECIDED.event_type, _DECIDED.version, payload,
                   key=payload["buyer_id"], **envelope)
