"""The upstream events intake accepts and the topics it produces them on (it consumes none)."""

from __future__ import annotations

from shared.contracts.events import (
    BuyerOrderPlaced,
    ManualCompensationIssued,
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
)

CONSUMES: tuple[str, ...] = ()

PRODUCES: dict[str, str] = {t: LATEST[t].topic.value for t in ACCEPTED_EVENT_TYPES}

__all__ = [
    "ACCEPTED_EVENT_TYPES", "CONSUMES", "PRODUCES", "BuyerOrderPlaced", "ManualCompensationIssued",
    "TicketOpened", "Topic", "VoucherExpired", "VoucherRedeemed", "VoucherRevoked",
]
