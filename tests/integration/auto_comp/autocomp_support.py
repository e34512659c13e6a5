"""Helpers for auto_comp's integration tests: a migrated database, strategy files, ticket and budget-answer
events, and reads of the decision tables."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import make_envelope, validate_payload
from shared.db import make_engine, migrate
from shared.kafka import Delivered

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "auto_comp" / "migrations"
NOW = datetime.now(UTC).replace(microsecond=0)
_offsets = itertools.count()

STRATEGIES = """
strategies:
  - id: sg-late
    version: 3
    scenario: late_delivery
    regions: [SG]
    currency: SGD
    effective_from: "2026-01-01T00:00:00+08:00"
    enabled: true
    priority: 100
    match:
      reasons: [late_delivery]
      thresholds: {days_late: {min: 3}}
    compensation:
      kind: voucher
      severity: days_late
      tiers:
        - {name: late_3_5, from: 3, to: 5, amount: {percent: 10, floor: "2.00", cap: "15.00"}}
        - {name: late_6_plus, from: 6, amount: {percent: 20, floor: "5.00", cap: "30.00"}}
      voucher: {validity_days: 30, min_spend: "20.00"}
    liability:
      - {when: seller_late_dispatch, if_handoff_missing: ticket_time,
         shares: [{party: seller, percent: 50}, {party: platform, percent: 50}]}
      - {when: carrier_delay, if_handoff_missing: next_rule, shares: [{party: carrier, percent: 100}]}
      - {when: otherwise, shares: [{party: platform, percent: 100}]}
    abuse_guard: {window_days: 30, max_count: 2}
    budget: {pacing_allowance_percent: 10, degrade_to_lower_tier: true}
  - id: sg-damaged
    version: 1
    scenario: damaged_item
    regions: [SG]
    currency: SGD
    effective_from: "2026-01-01T00:00:00+08:00"
    enabled: true
    priority: 100
    match:
      reasons: [damaged]
    compensation:
      kind: store_credit
      amount: {percent: 15, of: affected, floor: "3.00", cap: "25.00"}
    liability:
      - {when: otherwise, shares: [{party: seller, percent: 100}]}
  - id: sg-damaged-trial
    version: 1
    scenario: damaged_item
    regions: [SG]
    currency: SGD
    effective_from: "2026-01-01T00:00:00+08:00"
    enabled: true
    mode: shadow
    priority: 100
    match:
      reasons: [damaged]
    compensation:
      kind: store_credit
      amount: {fixed: "8.00"}
    liability:
      - {when: otherwise, shares: [{party: platform, percent: 100}]}
  - id: gb-damaged
    version: 1
    scenario: damaged_item
    regions: [GB]
    currency: GBP
    effective_from: "2026-01-01T00:00:00Z"
    enabled: true
    priority: 100
    match:
      reasons: [damaged]
    compensation:
      kind: voucher
      amount: {fixed: "4.00"}
      voucher: {validity_days: 10}
    liability:
      - {when: otherwise, shares: [{party: platform, percent: 100}]}
"""


def write_strategies(folder: Path, content: str = STRATEGIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "strategies.yaml").write_text(content)
    return folder


async def autocomp_engine(url: str) -> AsyncEngine:
    await migrate(url, "auto_comp", MIGRATIONS)
    return make_engine(url, "auto_comp", pool_size=8)


def late_ticket(ticket_id: str, buyer: str = "B1", *, days_late: int = 4, order: int = 10_000,
                order_id: str | None = None, region: str = "SG", occurred_at: datetime | None = None,
                event_id: str | None = None, **extra: Any) -> Envelope:
    at = occurred_at or NOW
    promised = at - timedelta(days=days_late + 1)
    payload = ev.TicketOpened(
        ticket_id=ticket_id, order_id=order_id or f"O-{ticket_id}", buyer_id=buyer, seller_id="S1",
        reason=ev.TicketReason.LATE_DELIVERY, order_amount=ev.PositiveMoney(amount_minor=order, currency="SGD"),
        promised_delivery_at=promised, delivered_at=promised + timedelta(days=days_late), **extra)
    return make_envelope("ticket.opened", payload, source="test", region=region, occurred_at=at,
                         **({"event_id": event_id} if event_id else {}))


def damaged_ticket(ticket_id: str, buyer: str = "B1", *, affected: int = 4_000, region: str = "SG",
                   currency: str = "SGD") -> Envelope:
    payload = ev.TicketOpened(
        ticket_id=ticket_id, order_id=f"O-{ticket_id}", buyer_id=buyer, seller_id="S7",
        reason=ev.TicketReason.DAMAGED, order_amount=ev.PositiveMoney(amount_minor=20_000, currency=currency),
        affected_amount=ev.NonNegativeMoney(amount_minor=affected, currency=currency))
    return make_envelope("ticket.opened", payload, source="test", region=region, occurred_at=NOW)


def answer(request: dict[str, Any], *, reserved: int | None = None, denial: str | None = None,
           event_id: str | None = None, region: str = "SG") -> Envelope:
    """The ledger's answer to a reservation request (as the ledger would publish it)."""
    money = None if reserved is None else ev.PositiveMoney(amount_minor=reserved,
                                                           currency=request["amount"]["currency"])
    payload = ev.BudgetReservationDecided(
        reservation_id=request["reservation_id"], compensation_id=request["compensation_id"],
        ticket_id=request["ticket_id"], buyer_id=request["buyer_id"],
        outcome=ev.ReservationOutcome.RESERVED if reserved is not None else ev.ReservationOutcome.DENIED,
        denial_reason=ev.DenialReason(denial) if denial else None, reserved_amount=money,
        budget_period=NOW.strftime("%Y-%m"))
    return make_envelope("budget.reservation_decided", payload, source="ledger", region=region, occurred_at=NOW,
                         **({"event_id": event_id} if event_id else {}))


def delivered(envelope: Envelope, partition: int = 0) -> Delivered:
    return Delivered(envelope, validate_payload(envelope), "test.topic", partition, next(_offsets),
                     envelope.event_id.encode(), 0)


async def apply(engine: AsyncEngine, handler: Any, envelopes: Sequence[Envelope]) -> None:
    async with engine.begin() as conn:
        await handler(conn, [delivered(e) for e in envelopes])


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(text(sql), params)).mappings().all()]


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def requests_for(engine: AsyncEngine, ticket_id: str) -> list[dict[str, Any]]:
    """Reservation requests waiting in the outbox for this ticket, oldest first."""
    import orjson

    out = []
    for r in await rows(engine, "SELECT value FROM outbox WHERE topic = 'budget.requests.v1' ORDER BY id"):
        env = orjson.loads(r["value"])
        if env["payload"]["ticket_id"] == ticket_id:
            out.append(env)
    return out


async def issued_events(engine: AsyncEngine) -> list[dict[str, Any]]:
    import orjson

    return [orjson.loads(r["value"]) for r in
            await rows(engine, "SELECT value FROM outbox WHERE topic = 'compensations.issued.v1' ORDER BY id")]
