"""Event builders shared by the ledger's unit and integration tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import make_envelope

NOW = datetime(2026, 11, 15, 8, 0, tzinfo=UTC)
CURRENCY = {"SG": "SGD", "ID": "IDR", "US": "USD", "GB": "GBP"}
_ids = itertools.count(1)


def money(amount: int, region: str = "SG") -> dict:
    return {"amount_minor": amount, "currency": CURRENCY[region]}


def seller(sid: str = "S1") -> ev.LiableParty:
    return ev.LiableParty(type=ev.PartyType.SELLER, id=sid)


def carrier(cid: str = "C1") -> ev.LiableParty:
    return ev.LiableParty(type=ev.PartyType.CARRIER, id=cid)


PLATFORM = ev.LiableParty(type=ev.PartyType.PLATFORM)


def request(rid: str, amount: int, *, region: str = "SG", at: datetime = NOW, fallbacks: tuple[int, ...] = (),
            pacing: int | None = None, kind: str = "voucher", cid: str | None = None,
            buyer: str = "B1", event_id: str | None = None, expires_at: datetime | None = None) -> Envelope:
    p = ev.BudgetReservationRequested(
        reservation_id=rid, compensation_id=cid or f"comp-{rid}", ticket_id=f"T-{rid}", buyer_id=buyer,
        strategy_id="late3", strategy_version=1, kind=ev.CompensationKind(kind),
        amount=ev.PositiveMoney(**money(amount, region)),
        fallback_amounts=[ev.PositiveMoney(**money(f, region)) for f in fallbacks],
        pacing_allowance_percent=pacing, expires_at=expires_at or at + timedelta(minutes=10))
    return make_envelope("budget.reservation_requested", p, source="auto_comp", region=region,
                         occurred_at=at, event_id=event_id)


def issued(rid: str, amount: int, *, region: str = "SG", at: datetime = NOW, kind: str = "voucher",
           cid: str | None = None, shares: list[tuple[ev.LiableParty, int]] | None = None,
           valid_days: int = 30, buyer: str = "B1") -> Envelope:
    shares = shares or [(seller(), amount)]
    p = ev.CompensationIssued(
        compensation_id=cid or f"comp-{rid}", reservation_id=rid, ticket_id=f"T-{rid}", order_id=f"O-{rid}",
        buyer_id=buyer, strategy_id="late3", strategy_version=1, reason=ev.TicketReason.LATE_DELIVERY,
        kind=ev.CompensationKind(kind), amount=ev.PositiveMoney(**money(amount, region)),
        liability=[ev.LiabilityShare(party=party, amount_minor=a) for party, a in shares],
        voucher_code=f"V-{rid}", valid_until=at + timedelta(days=valid_days))
    return make_envelope("compensation.issued", p, source="auto_comp", region=region, occurred_at=at)


def manual(cid: str, amount: int, *, region: str = "SG", at: datetime = NOW, kind: str = "store_credit",
           shares: list[tuple[ev.LiableParty, int]] | None = None, buyer: str = "B1") -> Envelope:
    shares = shares or [(seller(), amount)]
    p = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id=f"T-{cid}", order_id=f"O-{cid}", buyer_id=buyer, agent_id="agent1",
        team="cs", kind=ev.CompensationKind(kind), amount=ev.PositiveMoney(**money(amount, region)),
        reason_code="damaged", liability=[ev.LiabilityShare(party=party, amount_minor=a) for party, a in shares])
    return make_envelope("compensation.manual_issued", p, source="intake", region=region, occurred_at=at)


def redeemed(cid: str, discount: int, *, region: str = "SG", at: datetime = NOW, buyer: str = "B1") -> Envelope:
    p = ev.VoucherRedeemed(compensation_id=cid, buyer_id=buyer, order_id=f"O2-{cid}",
                           discount=ev.PositiveMoney(**money(discount, region)))
    return make_envelope("voucher.redeemed", p, source="intake", region=region, occurred_at=at)


def expired(cid: str, *, region: str = "SG", at: datetime = NOW, buyer: str = "B1") -> Envelope:
    return make_envelope("voucher.expired", ev.VoucherExpired(compensation_id=cid, buyer_id=buyer),
                         source="intake", region=region, occurred_at=at)


def revoked(cid: str, *, region: str = "SG", at: datetime = NOW, buyer: str = "B1") -> Envelope:
    return make_envelope("voucher.revoked", ev.VoucherRevoked(compensation_id=cid, buyer_id=buyer,
                                                              reason="fraud"),
                         source="intake", region=region, occurred_at=at)


def correction(corr_id: str, cid: str, amount: int, *, region: str = "SG", at: datetime = NOW,
               shares: list[tuple[ev.LiableParty, int]] | None = None, corrects: str | None = None,
               buyer: str = "B1", auditor: str = "aud1", raised_by: str | None = None,
               disputed_auditor: str | None = None) -> Envelope:
    shares = shares if shares is not None else ([(carrier(), amount)] if amount else [])
    p = ev.AuditCorrectionIssued(
        correction_id=corr_id, compensation_id=cid, corrects_correction_id=corrects, audit_id=f"A-{corr_id}",
        auditor_id=auditor, buyer_id=buyer, error_category="wrong_liable_party",
        corrected_amount=ev.NonNegativeMoney(**money(amount, region)),
        corrected_liability=[ev.LiabilityShare(party=party, amount_minor=a) for party, a in shares],
        dispute_raised_by=raised_by, disputed_auditor_id=disputed_auditor)
    return make_envelope("audit.correction_issued", p, source="audit_sampler", region=region, occurred_at=at)


def payload_of(envelope: Envelope) -> ev.Payload:
    from shared.contracts.registry import validate_payload

    return validate_payload(envelope)


def allowance_request(aid: str, seq: int = 1, *, at_least: int = 0, wanted: int = 10_000, region: str = "SG",
                      period: str = "2026-11", pacing: int = 100, at: datetime = NOW,
                      event_id: str | None = None) -> Envelope:
    p = ev.BudgetAllowanceRequested(
        allowance_id=aid, request_seq=seq, budget_period=period, pacing_allowance_percent=pacing,
        at_least=ev.MoneyTotal(**money(at_least, region)), wanted=ev.MoneyTotal(**money(wanted, region)),
        owner="auto_comp.tickets:0")
    return make_envelope("budget.allowance_requested", p, source="auto_comp", region=region, occurred_at=at,
                         event_id=event_id or f"{aid}.{seq}.{next(_ids)}")


def allowance_return(aid: str, spent: int, count: int, *, region: str = "SG", period: str = "2026-11",
                     reason: str = "expired", at: datetime = NOW) -> Envelope:
    p = ev.BudgetAllowanceReturned(
        allowance_id=aid, budget_period=period, spent=ev.MoneyTotal(**money(spent, region)), spent_count=count,
        reason=ev.AllowanceCloseReason(reason), closed_at=at)
    return make_envelope("budget.allowance_returned", p, source="auto_comp", region=region, occurred_at=at)


def issued_from(aid: str, cid: str, amount: int, *, region: str = "SG", at: datetime = NOW, kind: str = "voucher",
                shares: list[tuple[ev.LiableParty, int]] | None = None, valid_days: int = 30,
                buyer: str = "B1") -> Envelope:
    """compensation.issued spent from an allowance (its hold id is the compensation id, as auto_comp sends)."""
    shares = shares or [(seller(), amount)]
    voucher = kind == "voucher"
    p = ev.CompensationIssued(
        compensation_id=cid, reservation_id=cid, ticket_id=f"T-{cid}", order_id=f"O-{cid}", buyer_id=buyer,
        strategy_id="late3", strategy_version=1, reason=ev.TicketReason.LATE_DELIVERY,
        kind=ev.CompensationKind(kind), amount=ev.PositiveMoney(**money(amount, region)),
        liability=[ev.LiabilityShare(party=party, amount_minor=a) for party, a in shares],
        voucher_code=f"V-{cid}" if voucher else None, valid_until=at + timedelta(days=valid_days) if voucher else None,
        allowance_id=aid)
    return make_envelope("compensation.issued", p, source="auto_comp", region=region, occurred_at=at,
                         event_id=f"{cid}.issued")
