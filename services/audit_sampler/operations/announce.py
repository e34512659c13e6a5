"""What audit_sampler tells the read side (insights): sampled items, evictions and verdicts.

Each is written to the outbox in the transaction that makes the change, so insights sees exactly the
samples and verdicts audit_sampler has, with the inclusion probability of each draw (the weight of the
accuracy estimate) and the SLA of each audit. Event ids are derived from the item or verdict, so a replay
of the same change publishes the same id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from services.audit_sampler.domain.reports import AuditedCompensation
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from shared.kafka.producer import record_for
from shared.outbox import Record

SOURCE = "audit_sampler"


def _record(event_type: str, payload: ev.Payload, *, region: str, at: datetime, event_id: str,
            causation_id: str | None = None) -> Record:
    envelope = make_envelope(event_type, payload, source=SOURCE, region=region, occurred_at=at, event_id=event_id,
                             causation_id=causation_id)
    _, key, value, headers = record_for(envelope)
    return envelope_topic(event_type), key, value, headers


record = _record  # for the approval stage's and corrective actions' events


def envelope_topic(event_type: str) -> str:
    from shared.contracts.registry import LATEST

    return LATEST[event_type].topic.value


def sampled(items: Iterable[Mapping[str, Any]], ids: Mapping[str, int]) -> list[Record]:
    """``audit.item_sampled`` for the sample items just queued (``ids``: compensation id -> item id)."""
    out = []
    for item in items:
        item_id = ids.get(item["compensation_id"])
        if item_id is None:
            continue  # already queued by an earlier delivery: announced then
        comp = item["compensation"]
        payload = ev.AuditItemSampled(
            item_id=item_id, compensation_id=item["compensation_id"], buyer_id=comp["buyer_id"],
            compensation_occurred_at=comp["occurred_at"], stratum=item["queue"],
            inclusion_probability=item["inclusion_probability"], mandatory=item["mandatory"],
            agent_id=item["agent_id"], team=item["team"], reason_code=comp["reason_code"],
            amount=ev.PositiveMoney.model_validate(comp["amount"]), sla_due_at=item["sla_due_at"])
        out.append(_record("audit.item_sampled", payload, region=item["region"], at=item["enqueued_at"],
                           event_id=f"audit-sampled-{item['region']}-{item_id}", causation_id=comp.get("event_id")))
    return out


def evicted(rows: Iterable[tuple[int, str, str, str]], at: datetime) -> list[Record]:
    """``audit.item_evicted`` for (item id, compensation id, buyer id, region) dropped for capacity."""
    return [_record("audit.item_evicted", ev.AuditItemEvicted(item_id=item_id, compensation_id=cid, buyer_id=buyer),
                    region=region, at=at, event_id=f"audit-evicted-{region}-{item_id}")
            for item_id, cid, buyer, region in rows]


def verdict(*, verdict_id: int, item: Mapping[str, Any], auditor: str, passed: bool,
            attributes: Mapping[str, bool], error_category: str | None, corrected_amount_minor: int | None,
            at: datetime, dispute_id: int | None = None) -> Record:
    """``audit.verdict_recorded`` for a verdict on a sampled compensation; the money misstated is worked out
    as the accuracy report does (``AuditedCompensation``)."""
    comp = item["compensation"]
    amount = int(comp["amount"]["amount_minor"])
    currency = comp["amount"]["currency"]
    judged = AuditedCompensation(
        compensation_id=item["compensation_id"], agent_id=item["agent_id"], team=item["team"],
        reason_code=comp["reason_code"], amount_minor=amount, probability=float(item["inclusion_probability"]),
        passed=passed, error_category=error_category, corrected_amount_minor=corrected_amount_minor,
        failed_attributes=frozenset(name for name, ok in attributes.items() if not ok))
    payload = ev.AuditVerdictRecorded(
        verdict_id=verdict_id, item_id=item["id"], compensation_id=item["compensation_id"],
        buyer_id=comp["buyer_id"], auditor_id=auditor, passed=passed, attributes=dict(attributes),
        error_category=None if passed else error_category,
        amount=ev.PositiveMoney(amount_minor=amount, currency=currency),
        money_misstated=ev.NonNegativeMoney(amount_minor=judged.over_minor + judged.under_minor, currency=currency),
        audited_at=at, within_sla=at <= item["sla_due_at"], dispute_id=dispute_id)
    suffix = f"-dispute-{dispute_id}" if dispute_id is not None else ""
    return _record("audit.verdict_recorded", payload, region=item["region"], at=at,
                   event_id=f"audit-verdict-{item['region']}-{verdict_id}{suffix}")


def overturned(*, verdict: Mapping[str, Any], item: Mapping[str, Any], dispute_id: int, at: datetime,
               attributes: Sequence[str]) -> Record:
    """A failed verdict overturned on dispute replaces it: the compensation stands as issued. It keeps the
    original auditor and audit time, so the audit team's own numbers (audits per day, SLA) do not move."""
    comp = item["compensation"]
    amount = int(comp["amount"]["amount_minor"])
    currency = comp["amount"]["currency"]
    audited_at = verdict["created_at"]
    payload = ev.AuditVerdictRecorded(
        verdict_id=int(verdict["id"]), item_id=item["id"], compensation_id=item["compensation_id"],
        buyer_id=comp["buyer_id"], auditor_id=verdict["auditor_id"], passed=True,
        attributes=dict.fromkeys(attributes, True),
        error_category=None, amount=ev.PositiveMoney(amount_minor=amount, currency=currency),
        money_misstated=ev.NonNegativeMoney(amount_minor=0, currency=currency),
        audited_at=audited_at, within_sla=audited_at <= item["sla_due_at"], dispute_id=dispute_id)
    return _record("audit.verdict_recorded", payload, region=item["region"], at=at,
                   event_id=f"audit-verdict-{item['region']}-{verdict['id']}-dispute-{dispute_id}")
