"""What insights consumes (every business topic) and produces (its spike alerts, besides dead letters)."""

from __future__ import annotations

from shared.contracts.events import (
    AuditItemEvicted,
    AuditItemSampled,
    AuditVerdictRecorded,
    BudgetLimitSet,
    BuyerFeedbackGiven,
    CompensationIssued,
    CompensationIssueFlagged,
    CompensationRequestDecided,
    CorrectiveActionRecorded,
    DecisionRecorded,
    ManualCompensationIssued,
    OrderVolumeReported,
    SpikeDetected,
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
    Topic.COMPENSATION_APPROVALS.value,
    Topic.AUDIT_ACTIONS.value,
)

# Strategy returns, in a consumer group of their own (services/insights/returns.py).
RETURNS_CONSUMES: tuple[str, ...] = (Topic.DECISIONS.value, Topic.BUYER_ORDERS.value)

PRODUCES: dict[str, str] = {"insight.spike_detected": Topic.INSIGHT_SPIKES.value}

__all__ = [
    "CONSUMES",
    "PRODUCES",
    "RETURNS_CONSUMES",
    "AuditItemEvicted",
    "AuditItemSampled",
    "AuditVerdictRecorded",
    "BudgetLimitSet",
    "BuyerFeedbackGiven",
    "CompensationIssueFlagged",
    "CompensationIssued",
    "CompensationRequestDecided",
    "CorrectiveActionRecorded",
    "DecisionRecorded",
    "ManualCompensationIssued",
    "OrderVolumeReported",
    "SpikeDetected",
    "TicketOpened",
    "VoucherExpired",
    "VoucherRedeemed",
    "VoucherRevoked",
]
