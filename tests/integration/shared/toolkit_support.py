"""Helpers of the toolkit's integration tests: ticket events, a handler that logs what it applied, sending,
and the relay's published counter."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from prometheus_client import REGISTRY
from sqlalchemy import text

from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import encode_envelope, make_envelope
from shared.kafka import Delivered, EventProducer

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def ticket_event(n: int, buyer: str = "B1") -> Envelope:
    payload = ev.TicketOpened(ticket_id=f"T{n}", order_id=f"O{n}", buyer_id=buyer, seller_id="S1",
                              reason=ev.TicketReason.DAMAGED,
                              order_amount=ev.PositiveMoney(amount_minor=1000 + n, currency="SGD"))
    return make_envelope("ticket.opened", payload, source="test", region="SG", occurred_at=NOW)


def log_handler(consumer_name: str = "c1"):  # type: ignore[no-untyped-def]
    """A batch handler writing one ``ticket_log`` row per event (no unique key: doubles would show)."""
    async def handler(conn, events: Sequence[Delivered]) -> None:  # type: ignore[no-untyped-def]
        await conn.execute(text(
            "INSERT INTO ticket_log (event_id, ticket_id, consumer) "
            "SELECT unnest(CAST(:e AS text[])), unnest(CAST(:t AS text[])), :c"),
            {"e": [d.envelope.event_id for d in events], "t": [d.payload.ticket_id for d in events],
             "c": consumer_name})
    return handler


async def send(producer: EventProducer, topic: str, envelope: Envelope) -> None:
    await (await producer.send(topic, encode_envelope(envelope), envelope.payload["buyer_id"].encode()))


def published(service: str, topic: str) -> float:
    return REGISTRY.get_sample_value("comp_outbox_published_total", {"service": service, "topic": topic}) or 0.0
