"""Topics auto_comp consumes and the events it produces."""

from __future__ import annotations

from shared.contracts.events import (
    BudgetReservationDecided,
    BudgetReservationRequested,
    BuyerOrderPlaced,
    CompensationIssued,
    TicketOpened,
)
from shared.contracts.topics import Topic

CONSUMES: tuple[str, ...] = (Topic.TICKETS.value, Topic.BUDGET_RESULTS.value, Topic.BUYER_ORDERS.value)

PRODUCES: dict[str, str] = {
    "budget.reservation_requested": Topic.BUDGET_REQUESTS.value,
    "compensation.issued": Topic.COMPENSATIONS_ISSUED.value,
}

__all__ = ["CONSUMES", "PRODUCES", "BudgetReservationDecided", "BudgetReservationRequested",
           "BuyerOrderPlaced", "CompensationIssued", "TicketOpened"]
