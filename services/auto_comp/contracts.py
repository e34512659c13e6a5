"""Topics auto_comp consumes and the events it produces."""

from __future__ import annotations

from shared.contracts.events import (
    BudgetAllowanceDecided,
    BudgetAllowanceRequested,
    BudgetAllowanceReturned,
    BuyerOrderPlaced,
    CompensationIssued,
    TicketOpened,
)
from shared.contracts.topics import Topic

CONSUMES: tuple[str, ...] = (Topic.TICKETS.value, Topic.BUDGET_GRANTS.value)

PRODUCES: dict[str, str] = {
    "budget.allowance_requested": Topic.BUDGET_ALLOWANCES.value,
    "budget.allowance_returned": Topic.BUDGET_ALLOWANCES.value,
    "compensation.issued": Topic.COMPENSATIONS_ISSUED.value,
}

__all__ = ["CONSUMES", "PRODUCES", "BudgetAllowanceDecided", "BudgetAllowanceRequested", "BudgetAllowanceReturned",
           "BuyerOrderPlaced", "CompensationIssued", "TicketOpened"]
