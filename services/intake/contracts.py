"""The upstream events intake accepts and the topics it produces them on (it consumes none)."""

from __future__ import annotations

from shared.contracts.events import (
    BuyerFeedbackGiven,
    BuyerOrderPlaced,
    CompensationRequested,
    ManualCompensationIssued,
    OrderVolumeReported,
    TicketOpened,
    VoucherExpired,
    VoucherRedeemed,
    VoucherRevoked,
)
from shared.contracts.registry import LATEST
from shared.contracts.topics import Topic

ACCEPTED_EVENT_TYPES: tuple[str, ...] = (
    "ticket.opened",
    "compensation.manual_issued",
    "voucher.redeemed",
    "voucher.expired",
    "voucher.revoked",
    "buyer.order_placed",
    "buyer.feedback_given",
    "order.volume_reported",
    "compensation.requested",
)

CONSUMES: tuple[str, ...] = ()

PRODUCES: dict[str, str] = {t: LATEST[t].topic.value for t in ACCEPTED_EVENT_TYPES}

__all__ = [
    "ACCEPTED_EVENT_TYPES", "CONSUMES", "PRODUCES", "BuyerFeedbackGiven", "BuyerOrderPlaced",
    "CompensationRequested", "ManualCompensationIssued", "OrderVolumeReported", "TicketOpened", "Topic",
    "VoucherExpired", "VoucherRedeemed", "VoucherRevoked",
]
