"""What upstream systems post: the producer's envelope fields plus the event's payload fields, flat.

Each item model is the contract's payload model plus the producer-side envelope fields, so the HTTP schema
can never drift from the event contract, and unknown fields are rejected exactly as the contract does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import events as ev
from shared.contracts.envelope import W3C_TRACEPARENT, AwareDatetime, EventId, RegionCode, TraceId

ENVELOPE_FIELDS: set[str] = {"event_id", "occurred_at", "region", "correlation_id", "traceparent"}


class ProducerFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId = Field(description="The producer's unique id of this event; retries reuse it.")
    occurred_at: AwareDatetime = Field(description="When the business fact happened: an RFC 3339 string with an "
                                                   "offset, years 1970 to 2199, at most the clock skew ahead.")
    region: RegionCode = Field(description="Region code from the catalogue; money must be in its currency.")
    correlation_id: TraceId | None = Field(default=None, description="Ties this event to the producer's "
                                           "logs; default: the request's X-Correlation-Id.")
    traceparent: str | None = Field(default=None, max_length=55, pattern=W3C_TRACEPARENT,
                                    description="W3C trace context, passed on to consumers.")


def _examples(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [example]})


_AT = "2026-11-20T09:30:00Z"


class TicketItem(ProducerFields, ev.TicketOpened):
    model_config = _examples({
        "event_id": "ord-sys-7f3a91", "occurred_at": _AT, "region": "SG",
        "ticket_id": "T-100234", "order_id": "O-88812", "buyer_id": "B-4711", "seller_id": "S-310",
        "carrier_id": "C-ninja", "reason": "late_delivery",
        "order_amount": {"amount_minor": 4590, "currency": "SGD"},
        "promised_delivery_at": "2026-11-15T10:00:00Z", "delivered_at": "2026-11-19T16:20:00Z",
        "evidence": [{"kind": "tracking_scan", "uri": "https://tracking.example/ninja/TRK998"}],
    })


class ManualCompensationItem(ProducerFields, ev.ManualCompensationIssued):
    model_config = _examples({
        "event_id": "cs-tool-55aa01", "occurred_at": _AT, "region": "SG",
        "compensation_id": "MC-20931", "ticket_id": "T-100234", "order_id": "O-88812", "buyer_id": "B-4711",
        "seller_id": "S-310", "agent_id": "A-77", "team": "sg-tier1", "kind": "voucher",
        "amount": {"amount_minor": 500, "currency": "SGD"}, "reason_code": "damaged_item",
        "liability": [{"party": {"type": "seller", "id": "S-310"}, "amount_minor": 500}],
        "voucher_code": "SGV-9QX2", "valid_until": "2026-12-20T15:59:59Z",
        "evidence": [{"kind": "photo", "uri": "https://cs.example/att/991"}],
    })


class CompensationRequestItem(ProducerFields, ev.CompensationRequested):
    model_config = _examples({
        "event_id": "cs-tool-req-7710", "occurred_at": _AT, "region": "SG",
        "request_id": "RQ-7710", "ticket_id": "T-100234", "order_id": "O-88812", "buyer_id": "B-4711",
        "seller_id": "S-310", "agent_id": "A-77", "team": "sg-tier1", "agent_tier": "tier1", "kind": "voucher",
        "amount": {"amount_minor": 1500, "currency": "SGD"},
        "order_amount": {"amount_minor": 4590, "currency": "SGD"}, "reason_code": "late_delivery",
        "proposed_liability": [{"party": {"type": "carrier", "id": "C-ninja"}, "amount_minor": 1500}],
        "evidence": [{"kind": "tracking_scan", "uri": "https://tracking.example/ninja/TRK998"}],
        "note": "Parcel four days late; buyer missed an event.",
        "case": {"ticket_reason": "late_delivery", "ticket_opened_at": "2026-11-19T18:00:00Z",
                 "promised_delivery_at": "2026-11-15T10:00:00Z", "delivered_at": "2026-11-19T16:20:00Z",
                 "carrier_id": "C-ninja", "tracking_status": "delivered"},
    })


class VoucherRedeemedItem(ProducerFields, ev.VoucherRedeemed):
    model_config = _examples({
        "event_id": "promo-red-0001", "occurred_at": _AT, "region": "SG",
        "compensation_id": "MC-20931", "voucher_code": "SGV-9QX2", "buyer_id": "B-4711",
        "order_id": "O-90001", "discount": {"amount_minor": 450, "currency": "SGD"},
    })


class VoucherExpiredItem(ProducerFields, ev.VoucherExpired):
    model_config = _examples({
        "event_id": "promo-exp-0001", "occurred_at": _AT, "region": "SG",
        "compensation_id": "MC-20931", "voucher_code": "SGV-9QX2", "buyer_id": "B-4711",
    })


class VoucherRevokedItem(ProducerFields, ev.VoucherRevoked):
    model_config = _examples({
        "event_id": "promo-rev-0001", "occurred_at": _AT, "region": "SG",
        "compensation_id": "MC-20931", "voucher_code": "SGV-9QX2", "buyer_id": "B-4711",
        "reason": "fraud_suspected",
    })


class BuyerOrderItem(ProducerFields, ev.BuyerOrderPlaced):
    model_config = _examples({
        "event_id": "ord-sys-9c0d12", "occurred_at": _AT, "region": "SG",
        "order_id": "O-90001", "buyer_id": "B-4711", "amount": {"amount_minor": 12900, "currency": "SGD"},
    })


class BuyerFeedbackItem(ProducerFields, ev.BuyerFeedbackGiven):
    model_config = _examples({
        "event_id": "survey-7781", "occurred_at": _AT, "region": "SG",
        "feedback_id": "CSAT-20931", "ticket_id": "T-100234", "order_id": "O-88812", "buyer_id": "B-4711",
        "kind": "csat", "score": 4, "channel": "email_survey",
    })


class OrderVolumeItem(ProducerFields, ev.OrderVolumeReported):
    model_config = _examples({
        "event_id": "ord-vol-SG-2026-11-19", "occurred_at": _AT, "region": "SG",
        "day": "2026-11-19", "orders": 182340, "gmv": {"amount_minor": 912345600, "currency": "SGD"},
    })


# event type -> the item model upstream posts for it
ITEM_MODELS: dict[str, type[ProducerFields]] = {
    "ticket.opened": TicketItem,
    "compensation.manual_issued": ManualCompensationItem,
    "compensation.requested": CompensationRequestItem,
    "voucher.redeemed": VoucherRedeemedItem,
    "voucher.expired": VoucherExpiredItem,
    "voucher.revoked": VoucherRevokedItem,
    "buyer.order_placed": BuyerOrderItem,
    "buyer.feedback_given": BuyerFeedbackItem,
    "order.volume_reported": OrderVolumeItem,
}

# Payload timestamps that record something that already happened (promised or due dates may be ahead).
PAST_TIMESTAMPS: dict[str, tuple[str, ...]] = {
    "ticket.opened": ("order_placed_at", "shipped_at", "delivered_at"),
    "compensation.requested": ("case.ticket_opened_at", "case.order_placed_at", "case.delivered_at"),
}


def payload_of(item_json: dict[str, Any]) -> dict[str, Any]:
    """The contract payload carried by an item, from the item's JSON dump."""
    return {k: v for k, v in item_json.items() if k not in ENVELOPE_FIELDS}
