"""Topics the ledger consumes and the events it produces."""

from __future__ import annotations

from shared.contracts.events import (
    AuditCorrectionIssued,
    BudgetExceeded,
    BudgetReservationDecided,
    BudgetReservationRequested,
    BudgetThresholdCrossed,
    CompensationIssued,
    ManualCompensationIssued,
    VoucherExpired,
    VoucherRedeemed,
    VoucherRevoked,
)
from shared.contracts.topics import Topic

CONSUMES: tuple[str, ...] = (
    Topic.BUDGET_REQUESTS.value,
    Topic.COMPENSATIONS_ISSUED.value,
    Topic.MANUAL_COMPENSATIONS.value,
    Topic.VOUCHER_LIFECYCLE.value,
    Topic.AUDIT_CORRECTIONS.value,
)

PRODUCES: dict[str, str] = {
    "budget.reservation_decided": Topic.BUDGET_RESULTS.value,
    "budget.threshold_crossed": Topic.BUDGET_ALERTS.value,
    "budget.exceeded": Topic.BUDGET_ALERTS.value,
}

__all__ = [
    "CONSUMES", "PRODUCES", "AuditCorrectionIssued", "BudgetExceeded", "BudgetReservationDecided",
    "BudgetReservationRequested", "BudgetThresholdCrossed", "CompensationIssued", "ManualCompensationIssued",
    "VoucherExpired", "VoucherRedeemed", "VoucherRevoked",
]
