"""Topics the ledger consumes and the events it produces."""

from __future__ import annotations

from shared.contracts.events import (
    AuditCorrectionIssued,
    BudgetAllowanceDecided,
    BudgetAllowanceRequested,
    BudgetAllowanceReturned,
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
    Topic.BUDGET_REQUESTS.value,  # retired (ADR 0012): drained, never produced any more
    Topic.BUDGET_ALLOWANCES.value,
    Topic.COMPENSATIONS_ISSUED.value,
    Topic.MANUAL_COMPENSATIONS.value,
    Topic.VOUCHER_LIFECYCLE.value,
    Topic.AUDIT_CORRECTIONS.value,
)

PRODUCES: dict[str, str] = {
    "budget.allowance_decided": Topic.BUDGET_GRANTS.value,
    "budget.reservation_decided": Topic.BUDGET_RESULTS.value,
    "budget.threshold_crossed": Topic.BUDGET_ALERTS.value,
    "budget.exceeded": Topic.BUDGET_ALERTS.value,
}

__all__ = [
    "CONSUMES", "PRODUCES", "AuditCorrectionIssued", "BudgetAllowanceDecided", "BudgetAllowanceRequested",
    "BudgetAllowanceReturned", "BudgetExceeded", "BudgetReservationDecided",
    "BudgetReservationRequested", "BudgetThresholdCrossed", "CompensationIssued", "ManualCompensationIssued",
    "VoucherExpired", "VoucherRedeemed", "VoucherRevoked",
]
