"""Helpers for auto_comp's integration tests: a migrated database, strategy files, ticket events, the ledger's
answers to allowance requests (as the ledger would publish them), and reads of the decision tables."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auto_comp.handlers import Rules
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


RULES = Rules(group="test.tickets")


def grant(request: dict[str, Any], granted: int, *, total: int | None = None, expires_in: float = 60.0,
          limited_by: str | None = None, retry_in: float | None = None, detail: str = "", region: str = "SG",
          event_id: str | None = None, expires_at: datetime | None = None) -> Envelope:
    """The ledger's answer to an allowance request (``request``: its payload): ``granted`` now (0: denied),
    ``total`` granted to the allowance so far (this grant included; default: ``granted``)."""
    currency = request["wanted"]["currency"]
    now = datetime.now(UTC)
    limit = ev.AllowanceLimit(limited_by) if limited_by else None
    payload = ev.BudgetAllowanceDecided(
        allowance_id=request["allowance_id"], request_seq=request["request_seq"],
        budget_period=request["budget_period"],
        outcome=ev.AllowanceOutcome.GRANTED if granted else ev.AllowanceOutcome.DENIED,
        granted=ev.MoneyTotal(amount_minor=granted, currency=currency),
        granted_total=ev.MoneyTotal(amount_minor=granted if total is None else total, currency=currency),
        expires_at=(expires_at or now + timedelta(seconds=expires_in)) if granted else None,
        limited_by=limit, retry_after=now + timedelta(seconds=retry_in if retry_in is not None else 30)
        if limit else None, detail=detail)
    return make_envelope("budget.allowance_decided", payload, source="ledger", region=region, occurred_at=now,
                         **({"event_id": event_id} if event_id else {}))


def delivered(envelope: Envelope, partition: int = 0) -> Delivered:
    """As the runner hands it over (tickets of ``partition``: the allowance key's partition)."""
    return Delivered(envelope, validate_payload(envelope), "test.topic", partition, next(_offsets),
                     envelope.event_id.encode(), 0)


async def apply(engine: AsyncEngine, handler: Any, envelopes: Sequence[Envelope], partition: int = 0) -> None:
    async with engine.begin() as conn:
        await handler(conn, [delivered(e, partition) for e in envelopes])


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(text(sql), params)).mappings().all()]


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def outbox_events(engine: AsyncEngine, event_type: str) -> list[dict[str, Any]]:
    """Envelopes of ``event_type`` waiting in the outbox, oldest first."""
    import orjson

    out = []
    for r in await rows(engine, "SELECT value FROM outbox ORDER BY id"):
        env = orjson.loads(r["value"])
        if env["event_type"] == event_type:
            out.append(env)
    return out


async def allowance_requests(engine: AsyncEngine, allowance_id: str | None = None) -> list[dict[str, Any]]:
    """Allowance requests waiting in the outbox (of one allowance), oldest first."""
    found = await outbox_events(engine, "budget.allowance_requested")
    return [e for e in found if allowance_id is None or e["payload"]["allowance_id"] == allowance_id]


async def allowance_returns(engine: AsyncEngine) -> list[dict[str, Any]]:
    return [e["payload"] for e in await outbox_events(engine, "budget.allowance_returned")]


async def clear_outbox(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM outbox"))


async def issued_events(engine: AsyncEngine) -> list[dict[str, Any]]:
    import orjson

    return [orjson.loads(r["value"]) for r in
            await rows(engine, "SELECT value FROM outbox WHERE topic = 'compensations.issued.v1' ORDER BY id")]
