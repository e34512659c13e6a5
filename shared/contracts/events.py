"""Payload models of every event in the platform's flow (schema_version 1).

Conventions: money is ``{"amount_minor": int, "currency": "USD"}`` in the region's currency, an amount at
most ``MAX_AMOUNT_MINOR`` and a total (budget limit, usage) at most ``MAX_TOTAL_MINOR``; timestamps are
RFC 3339 strings with an offset, years 1970 to 2199, normalised to UTC; ids are opaque strings; free text
holds no NUL; unknown fields are rejected. Contracts added below inherit these bounds by using the types
defined here (ADR 0006, "Bounds").
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator

from shared.contracts.envelope import AwareDatetime, BoundedDate, Identifier, NoNul, OneLine, text_schema
from shared.money import MAX_AMOUNT_MINOR, MAX_TOTAL_MINOR

Text = Annotated[str, StringConstraints(max_length=2000), NoNul, text_schema(2000)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=1000), OneLine,
                text_schema(1000, min_length=1, one_line=True)]
# Integer minor units of one amount, and of a total (a sum the ledger keeps: limits, usage).
AmountMinor = Annotated[StrictInt, Field(ge=-MAX_AMOUNT_MINOR, le=MAX_AMOUNT_MINOR)]
NonNegativeAmountMinor = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT_MINOR)]
TotalMinor = Annotated[StrictInt, Field(ge=0, le=MAX_TOTAL_MINOR)]
Version = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
BudgetPeriod = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}(-[0-9]{2})?$")]
# A database row number another service assigned (an audit item, verdict or dispute): what a bigint holds.
RowNumber = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]
# A count of things (orders of a day): an integer a bigint sum of a century of days still holds.
Count = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT_MINOR)]
# A sampling design's inclusion probability: the one number that is not money or a count.
Probability = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
# A short label chosen by people (a strategy tier), one line.
Label = Annotated[str, StringConstraints(min_length=1, max_length=128), OneLine,
                  text_schema(128, min_length=1, one_line=True)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MoneyAmount(Payload):
    amount_minor: AmountMinor = Field(
        description=f"Integer minor units (ISO 4217 exponent of the currency), at most {MAX_AMOUNT_MINOR:,} "
                    "either way.")
    currency: Currency


class NonNegativeMoney(MoneyAmount):
    amount_minor: NonNegativeAmountMinor


class PositiveMoney(MoneyAmount):
    amount_minor: Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT_MINOR)]


class MoneyTotal(MoneyAmount):
    """A sum the ledger keeps (a budget's limit or usage over a period): larger than any one amount may be,
    at most what a PostgreSQL bigint holds."""

    amount_minor: TotalMinor


class RaisedBy(enum.StrEnum):
    """Who raised a ticket: the buyer (a claim), logistics or the order system (detected without a claim),
    or a CS agent on the buyer's behalf (a claim made by contact)."""

    BUYER = "buyer"
    LOGISTICS = "logistics"
    ORDER_SYSTEM = "order_system"
    CS_AGENT = "cs_agent"

    @property
    def is_claim(self) -> bool:
        return self in (RaisedBy.BUYER, RaisedBy.CS_AGENT)


class TicketReason(enum.StrEnum):
    LATE_DELIVERY = "late_delivery"
    NOT_RECEIVED = "not_received"
    LOST_IN_TRANSIT = "lost_in_transit"
    DAMAGED = "damaged"
    WRONG_ITEM = "wrong_item"
    MISSING_PARTS = "missing_parts"
    QUALITY_ISSUE = "quality_issue"
    SELLER_CANCELLED = "seller_cancelled"


class CompensationKind(enum.StrEnum):
    VOUCHER = "voucher"
    COUPON = "coupon"
    STORE_CREDIT = "store_credit"
    PARTIAL_REFUND = "partial_refund"
    FULL_REFUND = "full_refund"

    @property
    def spent_when_issued(self) -> bool:
        """Refunds and store credit cost money at once; vouchers and coupons only when redeemed."""
        return self in (CompensationKind.STORE_CREDIT, CompensationKind.PARTIAL_REFUND,
                        CompensationKind.FULL_REFUND)


class PartyType(enum.StrEnum):
    SELLER = "seller"
    CARRIER = "carrier"
    PLATFORM = "platform"


class LiableParty(Payload):
    type: PartyType
    id: Identifier | None = Field(default=None, description="Seller or carrier id; none for the platform.")

    @model_validator(mode="after")
    def _id_matches_type(self) -> LiableParty:
        if self.type is PartyType.PLATFORM and self.id is not None:
            raise ValueError("the platform party has no id")
        if self.type is not PartyType.PLATFORM and not self.id:
            raise ValueError(f"a {self.type.value} party needs an id")
        return self

    @property
    def account_key(self) -> str:
        """``seller:<id>``, ``carrier:<id>`` or ``platform``."""
        return self.type.value if self.id is None else f"{self.type.value}:{self.id}"


class LiabilityShare(Payload):
    party: LiableParty
    amount_minor: NonNegativeAmountMinor


class EvidenceRef(Payload):
    kind: Code = Field(description="e.g. photo, tracking_scan, chat_transcript")
    uri: Uri


def _shares_sum_to(shares: list[LiabilityShare], total: int, what: str) -> None:
    if not shares:
        raise ValueError(f"{what}: at least one liable party is required")
    if sum(s.amount_minor for s in shares) != total:
        raise ValueError(f"{what}: liability shares must sum exactly to the amount ({total})")
    keys = [s.party.account_key for s in shares]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{what}: a liable party appears twice")


# ---------------------------------------------------------------- upstream events (through intake)


class TicketOpened(Payload):
    """A ticket or order issue raised by the buyer, logistics or the order system."""

    ticket_id: Identifier
    order_id: Identifier
    buyer_id: Identifier
    seller_id: Identifier
    carrier_id: Identifier | None = None
    reason: TicketReason
    order_amount: PositiveMoney
    affected_amount: NonNegativeMoney | None = Field(
        default=None, description="Value of the damaged / missing / wrong items, when not the whole order.")
    order_placed_at: AwareDatetime | None = None
    dispatch_due_at: AwareDatetime | None = Field(default=None, description="Seller's dispatch deadline.")
    shipped_at: AwareDatetime | None = None
    promised_delivery_at: AwareDatetime | None = None
    delivered_at: AwareDatetime | None = None
    buyer_segment: Code | None = None
    evidence: list[EvidenceRef] = Field(default_factory=list, max_length=50)
    description: Text | None = None
    raised_by: RaisedBy | None = Field(
        default=None, description="Who raised it: buyer or cs_agent (a claim), logistics or order_system "
                                  "(detected with no claim); insights' proactive share needs it.")

    @model_validator(mode="after")
    def _consistent(self) -> TicketOpened:
        if self.reason is TicketReason.LATE_DELIVERY and (
                self.promised_delivery_at is None or self.delivered_at is None):
            raise ValueError("late_delivery needs promised_delivery_at and delivered_at")
        if self.affected_amount is not None and self.affected_amount.currency != self.order_amount.currency:
            raise ValueError("affected_amount and order_amount must share a currency")
        return self


class CaseSnapshot(Payload):
    """The ticket's facts as the CS tool showed them when the agent acted: what an auditor scores the
    compensation against (warranted, amount, liable party) without leaving the item page. The order amount
    is a top-level field of the event that carries the snapshot (money stays where consumers check it)."""

    ticket_reason: TicketReason | None = None
    ticket_opened_at: AwareDatetime | None = None
    order_placed_at: AwareDatetime | None = None
    promised_delivery_at: AwareDatetime | None = None
    delivered_at: AwareDatetime | None = None
    seller_id: Identifier | None = None
    carrier_id: Identifier | None = None
    tracking_status: Code | None = Field(default=None, description="e.g. delivered, in_transit, lost")
    buyer_claim: Text | None = Field(default=None, description="What the buyer said, as the ticket records it.")


class CompensationRequested(Payload):
    """A CS agent asks to compensate a buyer (issue 14): judged against the region's authority limits,
    approved at once within them, else queued for a lead or senior auditor. Nothing is issued by this event:
    the CS tool issues after an approval, referencing ``request_id`` on the manual compensation."""

    request_id: Identifier = Field(description="The CS tool's id of this request; the answer repeats it.")
    ticket_id: Identifier
    order_id: Identifier
    buyer_id: Identifier
    seller_id: Identifier | None = None
    agent_id: Identifier
    team: Identifier
    agent_tier: Code | None = Field(default=None, description="The agent's authority tier (e.g. tier1).")
    kind: CompensationKind
    amount: PositiveMoney
    order_amount: PositiveMoney | None = None
    reason_code: Code
    proposed_liability: list[LiabilityShare] = Field(default_factory=list, max_length=10,
                                                     description="The agent's proposed liable parties.")
    evidence: list[EvidenceRef] = Field(default_factory=list, max_length=50)
    note: Text | None = Field(default=None, description="The agent's note to the approver.")
    case: CaseSnapshot

    @model_validator(mode="after")
    def _consistent(self) -> CompensationRequested:
        if self.proposed_liability:
            _shares_sum_to(self.proposed_liability, self.amount.amount_minor, "proposed_liability")
        if self.order_amount is not None and self.order_amount.currency != self.amount.currency:
            raise ValueError("order_amount and amount must share a currency")
        return self


class ManualCompensationIssued(Payload):
    """A compensation a CS agent gave by hand; always charged, sampled for audit."""

    compensation_id: Identifier
    ticket_id: Identifier
    order_id: Identifier
    buyer_id: Identifier
    seller_id: Identifier | None = None
    carrier_id: Identifier | None = None
    agent_id: Identifier
    team: Identifier
    kind: CompensationKind
    amount: PositiveMoney
    order_amount: PositiveMoney | None = None
    reason_code: Code
    liability: list[LiabilityShare] = Field(max_length=10)
    voucher_code: Identifier | None = None
    valid_until: AwareDatetime | None = Field(default=None, description="Expiry, for vouchers and coupons.")
    evidence: list[EvidenceRef] = Field(default_factory=list, max_length=50)
    note: Text | None = None
    request_id: Identifier | None = Field(
        default=None, description="The approved compensation request this issues (issue 14); checked against "
                                  "it: amount, buyer and approval.")
    case: CaseSnapshot | None = Field(default=None, description="The ticket's facts when the agent issued.")

    @model_validator(mode="after")
    def _consistent(self) -> ManualCompensationIssued:
        _shares_sum_to(self.liability, self.amount.amount_minor, "liability")
        if self.order_amount is not None and self.order_amount.currency != self.amount.currency:
            raise ValueError("order_amount and amount must share a currency")
        return self


class VoucherRedeemed(Payload):
    compensation_id: Identifier
    voucher_code: Identifier | None = None
    buyer_id: Identifier
    order_id: Identifier
    discount: PositiveMoney = Field(description="The actual discount the buyer got (<= the voucher value).")


class VoucherExpired(Payload):
    compensation_id: Identifier
    voucher_code: Identifier | None = None
    buyer_id: Identifier


class VoucherRevoked(Payload):
    compensation_id: Identifier
    voucher_code: Identifier | None = None
    buyer_id: Identifier
    reason: Code


class BuyerOrderPlaced(Payload):
    """A later order by a buyer: the return side of a strategy's ROI."""

    order_id: Identifier
    buyer_id: Identifier
    amount: PositiveMoney


# ---------------------------------------------------------------- internal events


class BudgetReservationRequested(Payload):
    """Retired (ADR 0012): auto_comp asked the ledger to reserve budget for each proposed compensation.
    auto_comp now spends from budget allowances (``budget.allowance_requested``); the ledger still answers
    these, so requests in flight when a deployment upgrades are drained.

    ``amount`` is the preferred amount; ``fallback_amounts`` (descending, each smaller) are lower tiers the
    strategy accepts when the preferred one does not fit. ``pacing_allowance_percent`` set means the ledger
    also caps usage at budget * elapsed fraction of the period + allowance percent of the budget.
    """

    reservation_id: Identifier
    compensation_id: Identifier
    ticket_id: Identifier
    buyer_id: Identifier
    strategy_id: Identifier
    strategy_version: Version
    kind: CompensationKind
    amount: PositiveMoney
    fallback_amounts: list[PositiveMoney] = Field(default_factory=list, max_length=5)
    pacing_allowance_percent: StrictInt | None = Field(default=None, ge=0, le=100)
    expires_at: AwareDatetime = Field(description="When an unused reservation is released.")

    @model_validator(mode="after")
    def _tiers_descend(self) -> BudgetReservationRequested:
        previous = self.amount
        for tier in self.fallback_amounts:
            if tier.currency != self.amount.currency or tier.amount_minor >= previous.amount_minor:
                raise ValueError("fallback_amounts must be in the same currency and strictly descending")
            previous = tier
        return self


class ReservationOutcome(enum.StrEnum):
    RESERVED = "reserved"
    DENIED = "denied"


class DenialReason(enum.StrEnum):
    BUDGET_EXHAUSTED = "budget_exhausted"
    PACED = "paced"
    NO_BUDGET = "no_budget"  # no budget set for the region and period
    # Answer to a repeated request whose reservation lapsed unused (past its expiry plus the ledger's grace,
    # voided or about to be): nothing is held any more, so nothing may be issued against it.
    RESERVATION_EXPIRED = "reservation_expired"


class BudgetReservationDecided(Payload):
    """Retired (ADR 0012): the ledger's answer to ``budget.reservation_requested``."""

    reservation_id: Identifier
    compensation_id: Identifier
    ticket_id: Identifier
    buyer_id: Identifier
    outcome: ReservationOutcome
    denial_reason: DenialReason | None = None
    reserved_amount: PositiveMoney | None = None
    budget_period: BudgetPeriod

    @model_validator(mode="after")
    def _consistent(self) -> BudgetReservationDecided:
        if (self.outcome is ReservationOutcome.RESERVED) != (self.reserved_amount is not None):
            raise ValueError("reserved_amount is set exactly when the outcome is reserved")
        if (self.outcome is ReservationOutcome.DENIED) != (self.denial_reason is not None):
            raise ValueError("denial_reason is set exactly when the outcome is denied")
        return self


class CompensationIssued(Payload):
    """auto_comp issued a compensation; the ledger charges the liable parties and the budget.

    Spent from a budget allowance (``allowance_id`` set; ``reservation_id`` then names the hold the ledger
    opens for it from the allowance, the compensation id), or, before allowances (ADR 0012), against a
    per-voucher reservation (``reservation_id``, no ``allowance_id``).
    """

    compensation_id: Identifier
    reservation_id: Identifier
    ticket_id: Identifier
    order_id: Identifier
    buyer_id: Identifier
    strategy_id: Identifier
    strategy_version: Version
    reason: TicketReason
    kind: CompensationKind
    amount: PositiveMoney
    liability: list[LiabilityShare] = Field(max_length=10)
    voucher_code: Identifier | None = None
    min_spend: NonNegativeMoney | None = None
    valid_until: AwareDatetime | None = None
    allowance_id: Identifier | None = Field(
        default=None, description="The budget allowance it was spent from (ADR 0012); none for compensations "
                                  "issued against a per-voucher reservation before allowances.")

    @model_validator(mode="after")
    def _consistent(self) -> CompensationIssued:
        _shares_sum_to(self.liability, self.amount.amount_minor, "liability")
        return self


class AuditCorrectionIssued(Payload):
    """An audit found a compensation wrong: the ledger reverses the current charge and charges anew."""

    correction_id: Identifier
    compensation_id: Identifier
    corrects_correction_id: Identifier | None = Field(
        default=None, description="Set when this corrects an earlier correction (e.g. a dispute overturn).")
    audit_id: Identifier
    auditor_id: Identifier = Field(description="Who decided this correction: the auditor of the verdict, or "
                                               "for a dispute's resolution the senior auditor who resolved it.")
    buyer_id: Identifier
    error_category: Code
    corrected_amount: NonNegativeMoney
    corrected_liability: list[LiabilityShare] = Field(max_length=10)
    note: Text | None = None
    dispute_raised_by: Identifier | None = Field(
        default=None, description="A correction decided on a dispute: who raised the dispute (never the "
                                  "one who resolved it).")
    disputed_auditor_id: Identifier | None = Field(
        default=None, description="A correction decided on a dispute: the auditor whose verdict was disputed "
                                  "(never the one who resolved it).")

    @model_validator(mode="after")
    def _consistent(self) -> AuditCorrectionIssued:
        if self.corrected_amount.amount_minor > 0:
            _shares_sum_to(self.corrected_liability, self.corrected_amount.amount_minor, "corrected_liability")
        return self


class BudgetThresholdCrossed(Payload):
    budget_period: BudgetPeriod
    threshold_percent: StrictInt = Field(ge=1, le=100, description="50, 80 or 100")
    limit: MoneyTotal
    used: MoneyTotal


class BudgetExceeded(Payload):
    """Manual compensations pushed usage past the budget (automatic ones never can)."""

    budget_period: BudgetPeriod
    limit: MoneyTotal
    used: MoneyTotal
    compensation_id: Identifier


# ---------------------------------------------------------------- budget allowances (ADR 0012)


class BudgetAllowanceRequested(Payload):
    """auto_comp asks the ledger for budget to spend locally: a new allowance, or more for an open one.

    Idempotent by (``allowance_id``, ``request_seq``): a repeated request is answered from what was decided.
    ``at_least`` is what tickets waiting for this answer need (0 when asking ahead of need, at the low-water
    mark or before expiry); ``wanted`` is what auto_comp expects to spend before the grant expires.
    ``pacing_allowance_percent``: the strategies spending from it cap usage at the budget x elapsed fraction
    of the period + this percent of the budget (100: not paced).
    """

    allowance_id: Identifier
    request_seq: RowNumber = Field(description="1 for the first request of an allowance, then +1.")
    budget_period: BudgetPeriod
    pacing_allowance_percent: StrictInt = Field(ge=0, le=100)
    at_least: MoneyTotal
    wanted: MoneyTotal
    owner: Identifier = Field(description="Who spends it, for operators: consumer group and partition.")

    @model_validator(mode="after")
    def _consistent(self) -> BudgetAllowanceRequested:
        if self.at_least.currency != self.wanted.currency:
            raise ValueError("at_least and wanted must share a currency")
        if self.at_least.amount_minor > self.wanted.amount_minor:
            raise ValueError("at_least cannot exceed wanted")
        if self.wanted.amount_minor <= 0:
            raise ValueError("wanted must be positive")
        return self


class AllowanceOutcome(enum.StrEnum):
    GRANTED = "granted"
    DENIED = "denied"


class AllowanceLimit(enum.StrEnum):
    """Why the ledger granted less than ``at_least`` (or nothing)."""

    BUDGET_EXHAUSTED = "budget_exhausted"
    PACED = "paced"
    NO_BUDGET = "no_budget"  # no budget set for the region and period
    PERIOD_ENDED = "period_ended"  # too close to (or past) the period's end to grant anything for it
    ALLOWANCE_CLOSED = "allowance_closed"  # the allowance was returned already


class AllowancePace(Payload):
    """The budget as the ledger saw it when it answered: what auto_comp explains pacing and degrading with."""

    limit: MoneyTotal
    used: MoneyTotal = Field(description="Allotted + reserved + posted (automatic and manual) after "
                                               "this answer.")
    pacing_allowance_percent: StrictInt = Field(ge=0, le=100)
    pace_cap: MoneyTotal = Field(description="Usage the pace line allows at the time of the answer: "
                                                   "limit x elapsed fraction + the percent of the limit, at "
                                                   "most the limit.")
    period_start: AwareDatetime
    period_end: AwareDatetime


class BudgetAllowanceDecided(Payload):
    """The ledger's answer to one ``budget.allowance_requested``: an amount held against the budget at once
    (allotted), to be spent by auto_comp before ``expires_at``, or a denial."""

    allowance_id: Identifier
    request_seq: RowNumber
    budget_period: BudgetPeriod
    outcome: AllowanceOutcome
    granted: MoneyTotal = Field(description="Granted by this answer (0 when denied).")
    granted_total: MoneyTotal = Field(description="Granted to the allowance so far, this answer included.")
    expires_at: AwareDatetime | None = Field(
        default=None, description="With a grant: the allowance may be spent until then (no later than the "
                                  "period's end).")
    limited_by: AllowanceLimit | None = Field(default=None, description="Set when less than at_least was granted.")
    retry_after: AwareDatetime | None = Field(
        default=None, description="With limited_by: asking again before then gives no more.")
    pace: AllowancePace | None = Field(default=None, description="None when no budget is set.")
    detail: Text = ""

    @model_validator(mode="after")
    def _consistent(self) -> BudgetAllowanceDecided:
        granted = self.outcome is AllowanceOutcome.GRANTED
        if granted != (self.granted.amount_minor > 0):
            raise ValueError("granted is positive exactly when the outcome is granted")
        if granted != (self.expires_at is not None):
            raise ValueError("expires_at is set exactly when the outcome is granted")
        if not granted and self.limited_by is None:
            raise ValueError("a denial says why (limited_by)")
        if (self.limited_by is None) != (self.retry_after is None):
            raise ValueError("retry_after is set exactly when limited_by is")
        if self.granted.currency != self.granted_total.currency or self.granted.amount_minor > \
                self.granted_total.amount_minor:
            raise ValueError("granted_total includes granted, in the same currency")
        return self


class AllowanceCloseReason(enum.StrEnum):
    EXPIRED = "expired"  # its expiry, less auto_comp's safety margin, passed (closed by any replica)
    PERIOD_END = "period_end"  # the same, at the end of its budget period
    SHUTDOWN = "shutdown"  # the consumer that owned its partition stopped
    REVOKED = "revoked"  # its partition moved to another consumer


class BudgetAllowanceReturned(Payload):
    """auto_comp closed an allowance (nothing more is spent from it) and reports exactly what it spent: the
    ledger releases the rest. Compensations spent from it may still be on their way to the ledger."""

    allowance_id: Identifier
    budget_period: BudgetPeriod
    spent: MoneyTotal
    spent_count: Count = Field(description="How many compensations were spent from it.")
    reason: AllowanceCloseReason
    closed_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> BudgetAllowanceReturned:
        if (self.spent_count == 0) != (self.spent.amount_minor == 0):
            raise ValueError("spent is 0 exactly when spent_count is 0")
        return self


# ---------------------------------------------------------------- read-side events (issue 10)


class FeedbackKind(enum.StrEnum):
    CSAT = "csat"  # a satisfaction survey answer
    REVIEW = "review"  # a review score


class BuyerFeedbackGiven(Payload):
    """A buyer's CSAT answer or review score (1-5) about a ticket or order, from the survey/review system."""

    feedback_id: Identifier
    ticket_id: Identifier | None = Field(default=None, description="The ticket it is about, when known.")
    order_id: Identifier
    buyer_id: Identifier
    kind: FeedbackKind
    score: StrictInt = Field(ge=1, le=5, description="1 (worst) to 5 (best).")
    channel: Code = Field(description="e.g. email_survey, in_app, chat_survey, product_review")


class OrderVolumeReported(Payload):
    """The order system's count of a region's orders and their value (GMV) for one local day; a later
    report for the same day replaces an earlier one (the latest ``occurred_at`` wins)."""

    day: BoundedDate = Field(description="The local calendar day in the region's time zone.")
    orders: Count
    gmv: NonNegativeMoney


RulePath = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-\[\]]+$")]


class DecisionOutcome(enum.StrEnum):
    ISSUED = "issued"
    NOT_ELIGIBLE = "not_eligible"
    CAPPED = "capped_by_abuse_guard"
    HOLDOUT = "holdout"
    BUDGET_DENIED = "budget_denied"
    PACED = "paced"
    RESERVATION_EXPIRED = "reservation_expired"
    WOULD_ISSUE = "would_issue"  # shadow strategies only


class DecisionRecorded(Payload):
    """auto_comp's final decision on a ticket for one strategy (the live one, or a shadow one), published in
    the transaction that records it. Not published for a decision still waiting for the budget."""

    ticket_id: Identifier
    order_id: Identifier
    buyer_id: Identifier
    seller_id: Identifier | None = Field(default=None, description="The ticket's seller, when auto_comp has it.")
    carrier_id: Identifier | None = None
    reason: TicketReason
    ticket_occurred_at: AwareDatetime
    shadow: bool = Field(description="True for a shadow strategy's would-be decision (never issued).")
    outcome: DecisionOutcome
    failed_rule: RulePath | None = Field(
        default=None, description="The strategy rule that failed (e.g. match.reasons, abuse_guard).")
    detail: Text
    strategy_id: Identifier | None = Field(default=None, description="None when no strategy matched.")
    strategy_version: Version | None = None
    tier: Label | None = None
    kind: CompensationKind | None = None
    amount: PositiveMoney | None = Field(
        default=None, description="Issued amount (issued), else the proposed one, when there was a proposal.")
    liability: list[LiabilityShare] = Field(default_factory=list, max_length=10,
                                            description="The issued amount's split (issued decisions only).")
    compensation_id: Identifier | None = None
    order_amount: PositiveMoney | None = Field(
        default=None, description="The ticket's order value (since issue 15: compensation as a share of it).")

    @model_validator(mode="after")
    def _consistent(self) -> DecisionRecorded:
        if (self.strategy_id is None) != (self.strategy_version is None):
            raise ValueError("strategy_id and strategy_version go together")
        if self.outcome is DecisionOutcome.ISSUED:
            if self.amount is None or self.compensation_id is None:
                raise ValueError("an issued decision carries its amount and compensation_id")
            _shares_sum_to(self.liability, self.amount.amount_minor, "liability")
        elif self.liability:
            raise ValueError("liability is set for issued decisions only")
        if (self.outcome is DecisionOutcome.WOULD_ISSUE) and not self.shadow:
            raise ValueError("would_issue is a shadow outcome")
        if self.order_amount is not None and self.amount is not None and \
                self.order_amount.currency != self.amount.currency:
            raise ValueError("order_amount and amount must share a currency")
        return self


class AuditItemSampled(Payload):
    """audit_sampler put a manual compensation in an audit queue (a sample draw or a mandatory audit)."""

    item_id: RowNumber
    compensation_id: Identifier
    buyer_id: Identifier
    compensation_occurred_at: AwareDatetime
    stratum: Code = Field(description="The audit queue the draw belongs to.")
    inclusion_probability: Probability
    mandatory: bool
    agent_id: Identifier
    team: Identifier
    reason_code: Code
    amount: PositiveMoney
    sla_due_at: AwareDatetime


class AuditItemEvicted(Payload):
    """A queued sample item was dropped to keep a queue-day within capacity (never audited)."""

    item_id: RowNumber
    compensation_id: Identifier
    buyer_id: Identifier


class AuditVerdictRecorded(Payload):
    """An auditor's verdict on a sampled manual compensation (the latest verdict of an item replaces an
    earlier one, e.g. after a dispute is upheld)."""

    verdict_id: RowNumber
    item_id: RowNumber
    compensation_id: Identifier
    buyer_id: Identifier
    auditor_id: Identifier
    passed: bool
    attributes: dict[Code, bool] = Field(max_length=20, description="Quality attribute -> passed.")
    error_category: Code | None = None
    amount: PositiveMoney = Field(description="The compensation's amount as issued.")
    money_misstated: NonNegativeMoney = Field(description="|right amount - issued amount|.")
    audited_at: AwareDatetime
    within_sla: bool
    dispute_id: RowNumber | None = Field(
        default=None, description="Set when a senior auditor's dispute resolution overturned the verdict "
                                        "(this event then replaces it: passed, nothing misstated).")


class BudgetLimitSet(Payload):
    """Finance set or changed a region's budget limit for a period (ledger)."""

    budget_period: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}(-\d{2})?$")]
    limit: MoneyTotal = Field(description="A budget limit may exceed any one amount (up to MAX_BUDGET_MINOR).")
    previous_limit: MoneyTotal | None = None
    actor: Identifier
    reason: Text | None = None


# ---------------------------------------------------------------- insights' own events (issue 10, point 5)

# An expected count or a band edge of a count series (a mean, so fractional): at most what a count holds.
CountEstimate = Annotated[float, Field(ge=0, le=MAX_AMOUNT_MINOR, allow_inf_nan=False)]
# A standardised residual ((observed - expected) / sd) or a share that may pass 1: finite and bounded.
Score = Annotated[float, Field(ge=-1e9, le=1e9, allow_inf_nan=False)]


class SpikeDimension(enum.StrEnum):
    REASON = "reason"
    CARRIER = "carrier"
    SELLER = "seller"


class SpikeKind(enum.StrEnum):
    SPIKE = "spike"  # one day above the band
    SHIFT = "shift"  # a sustained rise found by the CUSUM


class SpikeContributor(Payload):
    """A value of another dimension that carries part of the excess (e.g. a carrier behind a reason's
    spike): its count on the day against its mean on the same weekday of the baseline weeks."""

    dimension: SpikeDimension
    key: Identifier
    observed: Count
    expected: CountEstimate
    share: Score | None = Field(default=None, description="Of the day's net excess over every value; null "
                                                          "when there is no net excess.")


class SpikeDetected(Payload):
    """insights found ticket counts of one series (a region's reason, carrier or seller) above the
    seasonal band of its detector on one local day (docs/insights-detection.md). Published once per
    (series, day, kind), in the transaction that stores the alert."""

    alert_id: Identifier = Field(description="Stable id of (region, dimension, key, day, kind).")
    dimension: SpikeDimension
    key: Identifier = Field(description="The reason code, carrier id or seller id of the series.")
    kind: SpikeKind
    day: BoundedDate = Field(description="The local day (the region's time zone) the alert is about.")
    bucket_start: AwareDatetime
    bucket_end: AwareDatetime
    observed: Count = Field(description="Tickets opened on the day in the series.")
    expected: CountEstimate
    lower: CountEstimate = Field(description="Lower edge of the band (counts inside it are ordinary).")
    upper: CountEstimate = Field(description="Upper edge of the band.")
    z: Score = Field(description="(observed - expected) / the prediction's standard deviation.")
    episode_start: AwareDatetime = Field(description="Start of the episode (consecutive alert days) it belongs to.")
    contributors: list[SpikeContributor] = Field(default_factory=list, max_length=10)


# ---------------------------------------------------------------- approval stage (issue 14)


class RequestOutcome(enum.StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    AWAITING_APPROVAL = "awaiting_approval"  # above the authority limits: in the approval queue
    ESCALATED = "escalated"  # still awaiting, now with a senior auditor (overdue or escalated by a lead)


class CompensationRequestDecided(Payload):
    """What became of a compensation request, for the CS tools (may the agent issue?) and insights (stage
    metrics). One event per step: queued, escalated, approved or rejected; ``reason`` is always given."""

    request_id: Identifier
    ticket_id: Identifier
    order_id: Identifier
    buyer_id: Identifier
    agent_id: Identifier
    team: Identifier
    reason_code: Code
    kind: CompensationKind
    requested_amount: PositiveMoney
    approved_amount: PositiveMoney | None = Field(default=None, description="Set when approved.")
    outcome: RequestOutcome
    automatic: bool = Field(description="True when the authority limits decided (no person).")
    decided_by: Identifier = Field(description="The approver, or authority_limits for an automatic step.")
    reason: Text = Field(description="Why: the limit exceeded, the rule applied, or the approver's reason.")
    exceeded: list[Code] = Field(default_factory=list, max_length=8,
                                 description="Limits the request was above (max_single, daily_total_per_agent, "
                                             "buyer_window_total, no_rule).")
    rule: Label | None = Field(default=None, description="The authority rule that applied.")
    limits_version: Label | None = None
    requested_at: AwareDatetime
    decided_at: AwareDatetime
    due_at: AwareDatetime | None = Field(default=None, description="While awaiting: when the SLA ends.")

    @model_validator(mode="after")
    def _consistent(self) -> CompensationRequestDecided:
        if (self.outcome is RequestOutcome.APPROVED) != (self.approved_amount is not None):
            raise ValueError("approved_amount is set exactly when the outcome is approved")
        if self.approved_amount is not None and (
                self.approved_amount.currency != self.requested_amount.currency
                or self.approved_amount.amount_minor > self.requested_amount.amount_minor):
            raise ValueError("approved_amount is at most the requested amount, in its currency")
        return self


class IssueMismatch(enum.StrEnum):
    ABOVE_APPROVED = "above_approved"  # issued more than the request's approved amount
    OTHER_BUYER = "other_buyer"  # issued to a buyer the request was not for
    NO_REQUEST = "no_request"  # no request where the region's limits require one
    NOT_APPROVED = "not_approved"  # the referenced request was rejected or still awaits approval


class CompensationIssueFlagged(Payload):
    """A manual compensation does not match what was approved: flagged at once with an audit item."""

    compensation_id: Identifier
    request_id: Identifier | None = None
    ticket_id: Identifier
    buyer_id: Identifier
    agent_id: Identifier
    team: Identifier
    reason_code: Code
    issued_amount: PositiveMoney
    approved_amount: PositiveMoney | None = None
    mismatches: list[IssueMismatch] = Field(min_length=1, max_length=4)
    finding: Text = Field(description="The finding as the audit item states it.")
    item_id: RowNumber | None = Field(default=None, description="The audit item opened for it.")
    issued_at: AwareDatetime


class ActionStatus(enum.StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


class ActionTargetType(enum.StrEnum):
    AGENT = "agent"
    TEAM = "team"
    SELLER = "seller"
    CARRIER = "carrier"
    GUIDELINE = "guideline"  # a reason code's guideline


class ActionSource(enum.StrEnum):
    FINDING = "finding"  # an audit finding (an item)
    PATTERN = "pattern"  # a failed-verdict pattern
    ROOT_CAUSE = "root_cause"
    SPIKE = "spike"


# A difference of two rates: between -1 and 1.
RateDifference = Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)]


class ActionEffect(Payload):
    """The target's error rate in a window before the action vs after it, with a 95% interval of the
    difference (after - before); None bounds while a window has no audits."""

    window_days: StrictInt = Field(ge=1, le=366)
    before_audits: Count
    before_errors: Count
    after_audits: Count
    after_errors: Count
    difference: RateDifference | None = None
    difference_low: RateDifference | None = None
    difference_high: RateDifference | None = None


class CorrectiveActionRecorded(Payload):
    """A corrective action opened or changed (status, owner, due date) or its effect measured."""

    action_id: RowNumber
    source: ActionSource
    source_ref: Label | None = Field(default=None, description="The item, pattern, root cause or spike.")
    target_type: ActionTargetType
    target_id: Identifier
    kind: Code = Field(description="coaching, guideline_change, seller_warning, carrier_claim, ...")
    owner: Identifier
    due_on: BoundedDate
    status: ActionStatus
    opened_by: Identifier
    opened_at: AwareDatetime
    updated_at: AwareDatetime
    note: Text | None = None
    effect: ActionEffect | None = None
