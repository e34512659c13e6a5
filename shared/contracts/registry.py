"""(event_type, schema_version) -> payload model, topic and partition key; decoding with validation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.topics import Topic
from shared.regions import UnknownRegion, catalogue


@dataclass(frozen=True)
class EventSpec:
    event_type: str
    version: int
    model: type[ev.Payload]
    topic: Topic
    key: Callable[[Envelope, Any], str]
    description: str


def _buyer(_: Envelope, p: Any) -> str:
    return str(p.buyer_id)


def _region(env: Envelope, _: Any) -> str:
    return env.region


def _allowance(_: Envelope, p: Any) -> str:
    """Every event of one allowance on one partition, so the ledger sees its requests and its return in
    the order auto_comp wrote them (ADR 0012)."""
    return str(p.allowance_id)


_SPECS = [
    EventSpec("ticket.opened", 1, ev.TicketOpened, Topic.TICKETS, _buyer,
              "A ticket or order issue (late delivery, lost parcel, damaged item, ...)."),
    EventSpec("compensation.manual_issued", 1, ev.ManualCompensationIssued, Topic.MANUAL_COMPENSATIONS, _buyer,
              "A compensation a CS agent issued by hand."),
    EventSpec("voucher.redeemed", 1, ev.VoucherRedeemed, Topic.VOUCHER_LIFECYCLE, _buyer,
              "A compensation voucher was used; carries the actual discount."),
    EventSpec("voucher.expired", 1, ev.VoucherExpired, Topic.VOUCHER_LIFECYCLE, _buyer,
              "A compensation voucher expired unused."),
    EventSpec("voucher.revoked", 1, ev.VoucherRevoked, Topic.VOUCHER_LIFECYCLE, _buyer,
              "A compensation voucher was revoked."),
    EventSpec("buyer.order_placed", 1, ev.BuyerOrderPlaced, Topic.BUYER_ORDERS, _buyer,
              "A later order by a buyer (strategy ROI)."),
    EventSpec("budget.reservation_requested", 1, ev.BudgetReservationRequested, Topic.BUDGET_REQUESTS, _buyer,
              "Retired (ADR 0012): auto_comp asked the ledger to reserve budget per voucher; the ledger still "
              "answers requests left from before an upgrade."),
    EventSpec("budget.reservation_decided", 1, ev.BudgetReservationDecided, Topic.BUDGET_RESULTS, _buyer,
              "Retired (ADR 0012): the ledger reserved or denied a per-voucher budget request."),
    EventSpec("compensation.issued", 1, ev.CompensationIssued, Topic.COMPENSATIONS_ISSUED, _buyer,
              "auto_comp issued a compensation."),
    EventSpec("audit.correction_issued", 1, ev.AuditCorrectionIssued, Topic.AUDIT_CORRECTIONS, _buyer,
              "An audit corrected a compensation's amount or liable party."),
    EventSpec("budget.threshold_crossed", 1, ev.BudgetThresholdCrossed, Topic.BUDGET_ALERTS, _region,
              "Budget usage crossed 50, 80 or 100 percent (once per period each)."),
    EventSpec("budget.exceeded", 1, ev.BudgetExceeded, Topic.BUDGET_ALERTS, _region,
              "Manual compensations pushed usage past the budget."),
    EventSpec("budget.allowance_requested", 1, ev.BudgetAllowanceRequested, Topic.BUDGET_ALLOWANCES, _allowance,
              "auto_comp asks the ledger for a budget allowance, or more for an open one (ADR 0012)."),
    EventSpec("budget.allowance_decided", 1, ev.BudgetAllowanceDecided, Topic.BUDGET_GRANTS, _allowance,
              "The ledger granted (held against the budget at once) or denied an allowance request."),
    EventSpec("budget.allowance_returned", 1, ev.BudgetAllowanceReturned, Topic.BUDGET_ALLOWANCES, _allowance,
              "auto_comp closed an allowance and reports exactly what it spent; the ledger releases the rest."),
    EventSpec("buyer.feedback_given", 1, ev.BuyerFeedbackGiven, Topic.BUYER_FEEDBACK, _buyer,
              "A buyer's CSAT answer or review score (1-5) about a ticket or order."),
    EventSpec("order.volume_reported", 1, ev.OrderVolumeReported, Topic.ORDER_VOLUME, _region,
              "A region's orders and GMV for one local day (the latest report of a day wins)."),
    EventSpec("decision.recorded", 1, ev.DecisionRecorded, Topic.DECISIONS, _buyer,
              "auto_comp's final decision on a ticket for a live or shadow strategy."),
    EventSpec("audit.item_sampled", 1, ev.AuditItemSampled, Topic.AUDIT_ACTIVITY, _buyer,
              "A manual compensation entered an audit queue, with its inclusion probability and stratum."),
    EventSpec("audit.item_evicted", 1, ev.AuditItemEvicted, Topic.AUDIT_ACTIVITY, _buyer,
              "A queued audit item was dropped to keep its queue-day within capacity."),
    EventSpec("audit.verdict_recorded", 1, ev.AuditVerdictRecorded, Topic.AUDIT_ACTIVITY, _buyer,
              "An auditor's verdict on a sampled manual compensation."),
    EventSpec("compensation.requested", 1, ev.CompensationRequested, Topic.COMPENSATION_REQUESTS, _buyer,
              "A CS agent's compensation request with the case, judged against the authority limits."),
    EventSpec("compensation.request_decided", 1, ev.CompensationRequestDecided, Topic.COMPENSATION_APPROVALS,
              _buyer, "A compensation request was approved, rejected, queued for approval or escalated."),
    EventSpec("compensation.issue_flagged", 1, ev.CompensationIssueFlagged, Topic.COMPENSATION_APPROVALS, _buyer,
              "A manual compensation does not match its approval (amount, buyer, no or unapproved request)."),
    EventSpec("audit.corrective_action_recorded", 1, ev.CorrectiveActionRecorded, Topic.AUDIT_ACTIONS, _region,
              "A corrective action was opened, changed or its effect measured."),
    EventSpec("budget.limit_set", 1, ev.BudgetLimitSet, Topic.BUDGET_LIMITS, _region,
              "A region's budget limit for a period was set or changed."),
    EventSpec("insight.spike_detected", 1, ev.SpikeDetected, Topic.INSIGHT_SPIKES, _region,
              "insights found a region's tickets of one reason, carrier or seller above their seasonal band."),
]

REGISTRY: dict[tuple[str, int], EventSpec] = {(s.event_type, s.version): s for s in _SPECS}
LATEST: dict[str, EventSpec] = {}
for _spec in _SPECS:
    if _spec.event_type not in LATEST or LATEST[_spec.event_type].version < _spec.version:
        LATEST[_spec.event_type] = _spec


def event_types_on(topics: Iterable[str]) -> frozenset[str]:
    """Every event type published on ``topics``: what a consumer of those topics must expect."""
    wanted = set(topics)
    return frozenset(spec.event_type for spec in _SPECS if spec.topic.value in wanted)


class ContractError(ValueError):
    """An event does not meet its contract; ``errors`` lists (field path, message)."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def payload_model(event_type: str, version: int) -> type[ev.Payload]:
    try:
        return REGISTRY[(event_type, version)].model
    except KeyError:
        raise ContractError(f"unknown event type/version {event_type} v{version}",
                            [("event_type", "unknown event type or schema_version")]) from None


def money_fields(model: BaseModel, path: str = "") -> list[tuple[str, ev.MoneyAmount]]:
    """Every MoneyAmount inside a payload, with its dotted path (for region-currency checks)."""
    found: list[tuple[str, ev.MoneyAmount]] = []
    cls = type(model)
    names = _FIELD_NAMES.get(cls)
    if names is None:  # pydantic's model_fields is a property that rebuilds its answer on every access
        names = _FIELD_NAMES[cls] = tuple(cls.model_fields)
    for name in names:
        value = getattr(model, name)
        if value is None or isinstance(value, _SCALARS):
            continue  # most fields: skip them before the (slower) model checks and path building
        if isinstance(value, ev.MoneyAmount):
            found.append((f"{path}{name}", value))
        elif isinstance(value, BaseModel):
            found.extend(money_fields(value, f"{path}{name}."))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ev.MoneyAmount):
                    found.append((f"{path}{name}.{i}", item))
                elif isinstance(item, BaseModel):
                    found.extend(money_fields(item, f"{path}{name}.{i}."))
    return found


_SCALARS = (str, int, float, datetime, date)
_FIELD_NAMES: dict[type[BaseModel], tuple[str, ...]] = {}


def region_currency_errors(region_code: str, payload: BaseModel) -> list[tuple[str, str]]:
    try:
        currency = catalogue().get(region_code).currency
    except UnknownRegion:
        return [("region", f"unknown region {region_code!r}")]
    return [(f"payload.{path}.currency", f"must be {currency}, the currency of region {region_code}")
            for path, money in money_fields(payload) if money.currency != currency]


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    return [(prefix + ".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()]


def validate_payload(envelope: Envelope) -> ev.Payload:
    """Parse and check the envelope's payload: schema, region in the catalogue, money in its currency."""
    model = payload_model(envelope.event_type, envelope.schema_version)
    try:
        payload = model.model_validate(envelope.payload)
    except ValidationError as exc:
        raise ContractError("payload does not match its schema", _pydantic_errors(exc, "payload.")) from exc
    errors = region_currency_errors(envelope.region, payload)
    if errors:
        raise ContractError("payload money is not in the region's currency", errors)
    return payload


def decode_envelope(raw: bytes) -> tuple[Envelope, ev.Payload]:
    """Decode a message value; raises ContractError (never anything else) on bad input."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"not JSON: {exc}") from exc
    try:
        envelope = Envelope.model_validate(data)
    except ValidationError as exc:
        raise ContractError("envelope does not match its schema", _pydantic_errors(exc)) from exc
    return envelope, validate_payload(envelope)


def encode_envelope(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.model_dump(mode="json"))


def make_envelope(event_type: str, payload: ev.Payload, *, source: str, region: str,
                  occurred_at: Any, version: int | None = None, **meta: Any) -> Envelope:
    spec = LATEST[event_type] if version is None else REGISTRY[(event_type, version)]
    if not isinstance(payload, spec.model):
        raise TypeError(f"{event_type} v{spec.version} takes {spec.model.__name__}")
    return Envelope(event_type=event_type, schema_version=spec.version, source=source, region=region,
                    occurred_at=occurred_at, payload=payload.model_dump(mode="json"),
                    **{"event_id": meta.pop("event_id", None) or _new_id(), **meta})


def _new_id() -> str:
    from shared.contracts.envelope import new_event_id

    return new_event_id()


def spec_for(envelope: Envelope) -> EventSpec:
    return REGISTRY[(envelope.event_type, envelope.schema_version)]


def partition_key(envelope: Envelope, payload: ev.Payload) -> str:
    return spec_for(envelope).key(envelope, payload)
