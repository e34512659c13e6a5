"""auto_comp's outgoing events as outbox records, built straight from data the handlers already checked.

Every field of a ``compensation.issued`` comes from a ticket that passed its contract on decode, a strategy
the loader validated, or amounts the engine computed (positive, in the strategy's currency, which the
engine checked against the order's), so its payload is assembled as the model's JSON dump and written by
the contract's codec (``EventCodec.record``) without building the models (validation) again. Unit tests
prove the bytes, key, topic and headers equal what ``shared.kafka.producer.record_for`` gives for the
validated models, and that the documents pass their contracts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.contracts import events as ev
from shared.contracts.codec import codec, json_time
from shared.contracts.registry import make_envelope
from shared.kafka.producer import record_for
from shared.outbox import Record

SOURCE = "auto_comp"

_ISSUED = codec("compensation.issued")
_DECIDED = codec("decision.recorded")


def money(minor: int, currency: str) -> dict[str, Any]:
    return {"amount_minor": minor, "currency": currency}


def compensation_issued(*, compensation_id: str, reservation_id: str, ticket_id: str, order_id: str,
                        buyer_id: str, strategy_id: str, strategy_version: int, reason: str, kind: str,
                        amount_minor: int, currency: str, liability: Sequence[tuple[str, str | None, int]],
                        voucher_code: str | None, min_spend_minor: int | None, valid_until: datetime | None,
                        allowance_id: str | None) -> dict[str, Any]:
    """``CompensationIssued(...).model_dump(mode="json")``; liability is (party type, party id, minor)."""
    return {
        "compensation_id": compensation_id, "reservation_id": reservation_id, "ticket_id": ticket_id,
        "order_id": order_id, "buyer_id": buyer_id, "strategy_id": strategy_id,
        "strategy_version": strategy_version, "reason": reason, "kind": kind,
        "amount": money(amount_minor, currency),
        "liability": [{"party": {"type": t, "id": i}, "amount_minor": m} for t, i, m in liability],
        "voucher_code": voucher_code,
        "min_spend": money(min_spend_minor, currency) if min_spend_minor is not None else None,
        "valid_until": json_time(valid_until) if valid_until is not None else None,
        "allowance_id": allowance_id}


def compensation_issued_record(payload: dict[str, Any], *, region: str, event_id: str, occurred_at: datetime,
                               produced_at: datetime, correlation_id: str, causation_id: str | None,
                               traceparent: str | None) -> Record:
    return _ISSUED.record(payload, key=payload["buyer_id"], event_id=event_id, occurred_at=occurred_at,
                          produced_at=produced_at, source=SOURCE, region=region, correlation_id=correlation_id,
                          causation_id=causation_id, traceparent=traceparent)


def allowance_requested_record(*, allowance_id: str, seq: int, attempt: int, region: str, period: str,
                               pacing_percent: int, at_least_minor: int, wanted_minor: int, currency: str,
                               owner: str, occurred_at: datetime) -> Record:
    """A grant request (a few per second at most: the validated models are cheap enough here). Event id
    ``<allowance>.<seq>.<attempt>``: a re-send is a new event, the same request for the ledger."""
    payload = ev.BudgetAllowanceRequested(
        allowance_id=allowance_id, request_seq=seq, budget_period=period, pacing_allowance_percent=pacing_percent,
        at_least=ev.MoneyTotal(amount_minor=at_least_minor, currency=currency),
        wanted=ev.MoneyTotal(amount_minor=wanted_minor, currency=currency), owner=owner)
    return record_for(make_envelope("budget.allowance_requested", payload, source=SOURCE, region=region,
                                    occurred_at=occurred_at, event_id=f"{allowance_id}.{seq}.{attempt}",
                                    correlation_id=allowance_id))


def allowance_returned_record(*, allowance_id: str, region: str, period: str, currency: str, spent_minor: int,
                              spent_count: int, reason: str, closed_at: datetime) -> Record:
    """The return of a closed allowance: exactly what was spent from it. One per allowance (event id
    ``<allowance>.returned``), so a re-sent return is a duplicate the ledger drops."""
    payload = ev.BudgetAllowanceReturned(
        allowance_id=allowance_id, budget_period=period,
        spent=ev.MoneyTotal(amount_minor=spent_minor, currency=currency), spent_count=spent_count,
        reason=ev.AllowanceCloseReason(reason), closed_at=closed_at)
    return record_for(make_envelope("budget.allowance_returned", payload, source=SOURCE, region=region,
                                    occurred_at=closed_at, event_id=f"{allowance_id}.returned",
                                    correlation_id=allowance_id))


def decision_recorded(*, ticket_id: str, order_id: str, buyer_id: str, seller_id: str | None,
                      carrier_id: str | None, reason: str, ticket_occurred_at: datetime, shadow: bool, outcome: str,
                      failed_rule: str | None, detail: str, strategy_id: str | None, strategy_version: int | None,
                      tier: str | None, kind: str | None, amount_minor: int | None, currency: str,
                      liability: Sequence[tuple[str, str | None, int]] = (), compensation_id: str | None = None,
                      order_minor: int | None = None) -> dict[str, Any]:
    """``DecisionRecorded(...).model_dump(mode="json")``; liability is (party type, party id, minor)."""
    return {
        "ticket_id": ticket_id, "order_id": order_id, "buyer_id": buyer_id, "seller_id": seller_id,
        "carrier_id": carrier_id, "reason": reason, "ticket_occurred_at": json_time(ticket_occurred_at),
        "shadow": shadow, "outcome": outcome, "failed_rule": failed_rule, "detail": detail[:2000],
        "strategy_id": strategy_id, "strategy_version": strategy_version, "tier": tier, "kind": kind,
        "amount": money(amount_minor, currency) if amount_minor else None,
        "liability": [{"party": {"type": t, "id": i}, "amount_minor": m} for t, i, m in liability],
        "compensation_id": compensation_id,
        "order_amount": money(order_minor, currency) if order_minor else None}


def decision_event_id(ticket_id: str, strategy_id: str | None, shadow: bool) -> str:
    """One final decision per ticket (live) and per ticket and shadow strategy: a replay maps to the same id
    (hashed: a ticket id may hold characters an event id may not)."""
    key = f"{ticket_id}\x1f{strategy_id or ''}\x1f{'shadow' if shadow else 'live'}"
    return "decision-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def decision_recorded_record(payload: dict[str, Any], **envelope: Any) -> Record:
    """Keyed by buyer, like the ticket it decides."""
    return _DECIDED.record(payload, key=payload["buyer_id"], source=SOURCE, **envelope)
