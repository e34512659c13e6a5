"""Every consumer handler of every service declares the event types it consumes (issue 16 part 5): the runner
dead-letters any other type with the reason, the same way everywhere. A declaration must cover every event
type published on the handler's topics, or valid events would be dead-lettered."""

from __future__ import annotations

import pytest

from services.audit_sampler.handlers import ManualCompensationHandler, RequestHandler
from services.auto_comp.handlers import GrantHandler, TicketHandler
from services.auto_comp.vouchers import VoucherLifecycleHandler
from services.insights.contracts import CONSUMES as INSIGHTS_TOPICS
from services.insights.contracts import RETURNS_CONSUMES
from services.insights.handlers import RollupHandler
from services.insights.returns import ReturnsHandler
from services.ledger.contracts import CONSUMES as LEDGER_TOPICS
from services.ledger.handlers import LedgerHandler
from shared.contracts.registry import LATEST, event_types_on
from shared.contracts.topics import Topic

HANDLERS = [
    (TicketHandler, [Topic.TICKETS.value]),
    (GrantHandler, [Topic.BUDGET_GRANTS.value]),
    (VoucherLifecycleHandler, [Topic.VOUCHER_LIFECYCLE.value]),
    (ManualCompensationHandler, [Topic.MANUAL_COMPENSATIONS.value]),
    (RequestHandler, [Topic.COMPENSATION_REQUESTS.value]),
    (LedgerHandler, list(LEDGER_TOPICS)),
    (RollupHandler, list(INSIGHTS_TOPICS)),
    (ReturnsHandler, list(RETURNS_CONSUMES)),
]


@pytest.mark.parametrize(("handler", "topics"), HANDLERS, ids=lambda h: getattr(h, "__name__", ""))
def test_a_handler_declares_exactly_the_events_of_its_topics(handler: type, topics: list[str]) -> None:
    declared = handler.consumes  # type: ignore[attr-defined]
    assert isinstance(declared, frozenset) and declared
    assert declared <= set(LATEST), "declares an event type no contract defines"
    assert declared == event_types_on(topics)


def test_a_type_from_another_topic_is_not_consumed() -> None:
    assert "voucher.redeemed" not in TicketHandler.consumes
    assert "ticket.opened" not in ManualCompensationHandler.consumes
