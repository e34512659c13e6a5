"""What insights consumes (it produces nothing but dead letters): every business topic."""

from __future__ import annotations

from shared.contracts.events import (
    AuditItemEvicted,
    AuditItemSampled,
    AuditVerdictRecorded,
    BudgetLimitSet,
    BuyerFeedbackGiven,
    CompensationIssued,
    DecisionRecorded,
    ManualCompensationIssued,
    OrderVolumeReported,
    TicketOpened,
    VoucherExpired,
    VoucherRedeemed,
    VoucherRevoked,
)
from shared.contracts.topics import Topic

CONSUMES: tuple[str, ...] = (
    Topic.TICKETS.value,
    Topic.DECISIONS.value,
    Topic.COMPENSATIONS_ISSUED.value,
    Topic.MANUAL_COMPENSATIONS.value,
    Topic.VOUCHER_LIFECYCLE.value,
    Topic.BUYER_FEEDBACK.value,
    Topic.ORDER_VOLUME.value,
    Topic.AUDIT_ACTIVITY.value,
    Topic.BUDGET_LIMITS.value,
)

PRODUCES: dict[str, str] = {}

__all__ = [
    "CONSUMES", "PRODUCES", "AuditItemEvicted", "AuditItemSampled", "AuditVerdictRecorded", "BudgetLimitSet",
    "BuyerFeedbackGiven", "CompensationIssued", "DecisionRecorded", "ManualCompensationIssued",
    "OrderVolumeReported", "TicketOpened", "VoucherExpired", "VoucherRedeemed", "VoucherRevoked",
]
