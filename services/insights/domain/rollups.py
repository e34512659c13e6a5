"""Rollups: what each ticket and compensation adds to the report buckets, as a pure function of its record.

A report reads buckets, never events. Every bucket cell is defined as the sum, over insights' record of
tickets and compensations, of what each record contributes (``contributions``). A record is the
order-independent merge of the events about it (``merge_*``: the same set of events gives the same record
in any order, duplicates included), so every cell equals a recomputation from the raw events. When an event
changes a record, the consumer writes the record's new contribution minus its old one (``delta``): a
compensation that arrives before its ticket is first counted in the bucket of its own time and moves to
the bucket of its ticket's time when the ticket arrives (ADR 0011).

Buckets are keyed by the region's local calendar day (and local hour for the hourly series), so a day, an
ISO week or a month in the region's time zone is a range of whole keys, for any UTC offset.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

# ------------------------------------------------------------------ time

# Time to compensate: fixed bin upper edges in seconds (the last bin is open). A percentile read from the
# rollups is the upper edge of the bin holding the ceil(p * n)-th smallest value (docs/metrics.md), so the
# same rule applied to the raw durations gives exactly the same number.
TTC_EDGES: tuple[int, ...] = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 259200,
                              432000, 604800, 1209600, 2592000)
TTC_BINS = len(TTC_EDGES) + 1  # + the open bin above 30 days

PROACTIVE_WINDOW = timedelta(hours=24)
BREACH_REASONS = frozenset({"late_delivery", "not_received", "lost_in_transit"})
CLAIM_SOURCES = frozenset({"buyer", "cs_agent"})
DETECTED_SOURCES = frozenset({"logistics", "order_system"})
VOUCHER_KINDS = frozenset({"voucher", "coupon"})


def ttc_bin(seconds: float) -> int:
    """Index of the bin of a duration (negative durations count as 0: issued at the ticket's own time)."""
    return bisect.bisect_left(TTC_EDGES, max(0.0, seconds))


@lru_cache(maxsize=64)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


_SLOTS: dict[tuple[str, int], tuple[date, int]] = {}


def local_slot(at: datetime, tz: str) -> tuple[date, int]:
    """(local calendar day, local hour) of an aware instant in a time zone.

    Cached per quarter hour (every UTC offset in use is a multiple of 15 minutes, so a quarter hour never
    straddles a local hour); the cache is cleared when it holds 100,000 slots (about 3 years of one zone)."""
    key = (tz, int(at.timestamp()) // 900)
    slot = _SLOTS.get(key)
    if slot is None:
        if len(_SLOTS) >= 100_000:
            _SLOTS.clear()
        local = at.astimezone(_zone(tz))
        slot = _SLOTS[key] = (local.date(), local.hour)
    return slot


def period_of(day: date) -> str:
    """The budget period (calendar month) of a local day."""
    return f"{day.year:04d}-{day.month:02d}"


# ------------------------------------------------------------------ records


@dataclass(slots=True)  # never mutated; not frozen: a frozen __init__ costs a setattr call per field
class Feedback:
    feedback_id: str
    kind: str  # csat | review
    score: int
    at: datetime


@dataclass(slots=True)  # never mutated; not frozen: a frozen __init__ costs a setattr call per field
class TicketRecord:
    """insights' record of a ticket: its facts once ``ticket.opened`` arrived (``known``), and the feedback
    about it. A stub (not known) exists while only its compensations or feedback have arrived."""

    ticket_id: str
    region: str
    known: bool = False
    event_id: str = ""  # the ticket.opened that set the facts (the earliest wins: order-independent)
    occurred_at: datetime | None = None
    reason: str = ""
    seller_id: str = ""
    carrier_id: str = ""  # "" when the ticket has no carrier
    raised_by: str = ""  # "" when the producer did not say
    breach_at: datetime | None = None
    feedback: tuple[Feedback, ...] = ()


@dataclass(slots=True)  # never mutated; not frozen: a frozen __init__ costs a setattr call per field
class CompensationRecord:
    """insights' record of a compensation (automatic or manual) and its voucher lifecycle. A stub (no
    ``issued_at``) exists while only lifecycle events have arrived."""

    compensation_id: str
    region: str
    ticket_id: str | None = None
    event_id: str = ""
    source: str = ""  # auto | manual
    kind: str = ""  # voucher, coupon, store_credit, partial_refund, full_refund
    strategy_id: str = ""  # "" for manual compensations
    reason: str = ""  # the compensation's own reason (used only while its ticket is unknown)
    seller_id: str = ""
    carrier_id: str = ""
    amount_minor: int = 0
    seller_minor: int = 0
    carrier_minor: int = 0
    platform_minor: int = 0
    issued_at: datetime | None = None
    redeemed_minor: int | None = None
    redeemed_at: datetime | None = None
    redeemed_event: str = ""
    expired_at: datetime | None = None
    expired_event: str = ""
    revoked_at: datetime | None = None
    revoked_event: str = ""

    @property
    def issued(self) -> bool:
        return self.issued_at is not None

    @property
    def is_voucher(self) -> bool:
        return self.kind in VOUCHER_KINDS

    @property
    def lifecycle(self) -> str:
        """redeemed > expired > revoked > open: the voucher's end, whatever order its events came in."""
        if self.redeemed_at is not None:
            return "redeemed"
        if self.expired_at is not None:
            return "expired"
        if self.revoked_at is not None:
            return "revoked"
        return "open"


def _earlier(at: datetime | None, event_id: str, other_at: datetime | None, other_id: str) -> bool:
    """True when (at, event_id) sorts before (other_at, other_id); None sorts last."""
    if other_at is None:
        return at is not None
    if at is None:
        return False
    return (at, event_id) < (other_at, other_id)


def merge_ticket_opened(record: TicketRecord, *, event_id: str, occurred_at: datetime, reason: str,
                        seller_id: str, carrier_id: str | None, raised_by: str | None,
                        breach_at: datetime) -> TicketRecord:
    """A ticket's facts; of two ``ticket.opened`` for one ticket id the earliest (time, event id) wins."""
    if record.known and not _earlier(occurred_at, event_id, record.occurred_at, record.event_id):
        return record
    # Positional construction: dataclasses.replace costs ten times as much, once per event.
    return TicketRecord(record.ticket_id, record.region, True, event_id, occurred_at, reason, seller_id,
                        carrier_id or "", raised_by or "", breach_at, record.feedback)


def merge_feedback(record: TicketRecord, fb: Feedback) -> TicketRecord:
    if any(f.feedback_id == fb.feedback_id for f in record.feedback):
        return record
    return replace(record, feedback=tuple(sorted((*record.feedback, fb), key=lambda f: (f.at, f.feedback_id))))


def merge_issued(record: CompensationRecord, *, event_id: str, ticket_id: str, source: str, kind: str,
                 strategy_id: str, reason: str, seller_id: str | None, carrier_id: str | None, amount_minor: int,
                 liability: Mapping[str, int], issued_at: datetime) -> CompensationRecord:
    """A compensation's facts; of two issue events for one id the earliest (time, event id) wins."""
    if record.issued and not _earlier(issued_at, event_id, record.issued_at, record.event_id):
        return record
    r = record
    return CompensationRecord(
        r.compensation_id, r.region, ticket_id, event_id, source, kind, strategy_id, reason, seller_id or "",
        carrier_id or "", amount_minor, liability.get("seller", 0), liability.get("carrier", 0),
        liability.get("platform", 0), issued_at, r.redeemed_minor, r.redeemed_at, r.redeemed_event, r.expired_at,
        r.expired_event, r.revoked_at, r.revoked_event)


def merge_lifecycle(record: CompensationRecord, *, event_type: str, event_id: str, at: datetime,
                    discount_minor: int | None = None) -> CompensationRecord:
    """Redeemed, expired, revoked: the earliest of each kind wins."""
    if event_type == "voucher.redeemed":
        if _earlier(at, event_id, record.redeemed_at, record.redeemed_event):
            return replace(record, redeemed_at=at, redeemed_event=event_id, redeemed_minor=discount_minor)
    elif event_type == "voucher.expired":
        if _earlier(at, event_id, record.expired_at, record.expired_event):
            return replace(record, expired_at=at, expired_event=event_id)
    elif event_type == "voucher.revoked" and _earlier(at, event_id, record.revoked_at, record.revoked_event):
        return replace(record, revoked_at=at, revoked_event=event_id)
    return record


def breach_time(reason: str, occurred_at: datetime, promised_delivery_at: datetime | None,
                dispatch_due_at: datetime | None) -> datetime:
    """When the promise was broken: the promised delivery for delivery failures, the dispatch deadline for a
    seller cancellation, else when the ticket was raised (docs/metrics.md, proactive share)."""
    if reason in BREACH_REASONS and promised_delivery_at is not None:
        return promised_delivery_at
    if reason == "seller_cancelled" and dispatch_due_at is not None:
        return dispatch_due_at
    return occurred_at


# ------------------------------------------------------------------ rollup tables

@dataclass(frozen=True)
class Table:
    """A rollup table: its key columns (with SQL types) and its additive measures (bigint)."""

    name: str
    keys: tuple[tuple[str, str], ...]
    measures: tuple[str, ...]

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.keys)


_TTC_MEASURES = tuple(f"ttc_{i:02d}" for i in range(TTC_BINS))

TICKET_DAILY = Table("ticket_daily", (("region", "text"), ("day", "date"), ("reason", "text"), ("carrier", "text")),
                     ("tickets", "compensated", "compensated_auto", "compensated_manual", "claimed", "detected"))
TICKET_HOURLY = Table("ticket_hourly", (("region", "text"), ("day", "date"), ("hour", "smallint"),
                                        ("reason", "text"), ("carrier", "text")), ("tickets", "compensated"))
COMP_DAILY = Table("comp_daily", (("region", "text"), ("day", "date"), ("reason", "text"), ("carrier", "text"),
                                  ("source", "text"), ("strategy", "text")),
                   ("comps", "amount_minor", "seller_minor", "carrier_minor", "platform_minor", "vouchers",
                    "voucher_minor", "redeemed", "redeemed_minor", "expired", "expired_minor", "revoked",
                    "proactive", "timed", "ttc_seconds", *_TTC_MEASURES))
COMP_HOURLY = Table("comp_hourly", (("region", "text"), ("day", "date"), ("hour", "smallint"), ("reason", "text"),
                                    ("carrier", "text"), ("source", "text"), ("strategy", "text")),
                    ("comps", "amount_minor"))
SELLER_DAILY = Table("seller_daily", (("region", "text"), ("day", "date"), ("seller", "text")),
                     ("tickets", "compensated", "comps", "amount_minor"))
AMOUNT_DAILY = Table("amount_daily", (("region", "text"), ("day", "date"), ("source", "text"),
                                      ("amount_minor", "bigint")), ("comps",))
FEEDBACK_DAILY = Table("feedback_daily", (("region", "text"), ("day", "date"), ("reason", "text"), ("kind", "text"),
                                          ("cohort", "text")), ("responses", "score_sum", "score_squares"))
BUDGET_DAILY = Table("budget_daily", (("region", "text"), ("period", "text"), ("day", "date"), ("source", "text")),
                     ("committed_minor", "released_minor"))
DECISION_DAILY = Table("decision_daily", (("region", "text"), ("day", "date"), ("strategy", "text"),
                                          ("strategy_version", "int"), ("outcome", "text"), ("failed_rule", "text"),
                                          ("tier", "text"), ("shadow", "boolean")), ("decisions", "amount_minor"))

# What each strategy gives per scenario (issue 15's market comparison): live issued and shadow would-issue
# decisions, per exact amount and per exact share of the order value (basis points), so their medians are
# exact; decisions without an order value (before issue 15) are only in the amounts.
STRATEGY_AMOUNT_DAILY = Table("strategy_amount_daily", (
    ("region", "text"), ("day", "date"), ("strategy", "text"), ("strategy_version", "int"), ("reason", "text"),
    ("shadow", "boolean"), ("amount_minor", "bigint")), ("decisions",))
STRATEGY_SHARE_DAILY = Table("strategy_share_daily", (
    ("region", "text"), ("day", "date"), ("strategy", "text"), ("strategy_version", "int"), ("reason", "text"),
    ("shadow", "boolean"), ("share_bp", "bigint")), ("decisions",))

# Coarser grains of the same cells, for reports: a region's day (no dimensions) and a month of amounts. A
# month report then reads 30 + 60 rows and a few thousand amounts instead of every dimension's cells.
TICKET_DAY = Table("ticket_day", (("region", "text"), ("day", "date")), TICKET_DAILY.measures)
COMP_DAY = Table("comp_day", (("region", "text"), ("day", "date"), ("source", "text")), COMP_DAILY.measures)
AMOUNT_MONTH = Table("amount_month", (("region", "text"), ("month", "text"), ("source", "text"),
                                      ("amount_minor", "bigint")), ("comps",))

# The approval stage, flagged issues and corrective actions (issue 14), by the local day of the request, of
# the flagged issue and of the action's opening: the contributions of their records (``approval_part`` ...).
APPROVAL_BINS = tuple(f"approval_{i:02d}" for i in range(TTC_BINS))  # approvers' decision times, TTC_EDGES
APPROVAL_DAILY = Table("approval_daily", (("region", "text"), ("day", "date")), (
    "requests", "queued", "escalated", "approved_automatically", "approved_by_approver", "rejected_automatically",
    "rejected_by_approver", "awaiting", "requested_minor", "approved_minor", "approved_requested_minor",
    *APPROVAL_BINS))
FLAG_DAILY = Table("flag_daily", (("region", "text"), ("day", "date"), ("mismatch", "text")),
                   ("compensations", "issued_minor"))  # mismatch "": every flagged compensation once
ACTION_DAILY = Table("action_daily", (("region", "text"), ("day", "date"), ("kind", "text"), ("status", "text"),
                                      ("due_on", "date")), ("actions", "measured", "improved"))

TABLES: tuple[Table, ...] = (TICKET_DAILY, TICKET_HOURLY, COMP_DAILY, COMP_HOURLY, SELLER_DAILY, AMOUNT_DAILY,
                             FEEDBACK_DAILY, BUDGET_DAILY, DECISION_DAILY, TICKET_DAY, COMP_DAY, AMOUNT_MONTH,
                             STRATEGY_AMOUNT_DAILY, STRATEGY_SHARE_DAILY, APPROVAL_DAILY, FLAG_DAILY, ACTION_DAILY)
BY_NAME = {t.name: t for t in TABLES}

Key = tuple[object, ...]


@dataclass
class Deltas:
    """Pending additions per table and key (measure vectors); zero vectors are dropped on output."""

    rows: dict[str, dict[Key, list[int]]] = field(default_factory=lambda: {t.name: {} for t in TABLES})

    def add(self, table: Table, key: Key, values: Iterable[tuple[int, int]], sign: int = 1) -> None:
        """``values``: (measure index, amount) pairs."""
        bucket = self.rows[table.name]
        row = bucket.get(key)
        if row is None:
            row = bucket[key] = [0] * len(table.measures)
        if sign == 1:
            for index, amount in values:
                row[index] += amount
        else:
            for index, amount in values:
                row[index] -= amount

    def merge(self, other: Deltas, sign: int = 1) -> None:
        for name, rows in other.rows.items():
            table = BY_NAME[name]
            for key, values in rows.items():
                self.add(table, key, enumerate(values), sign)

    def nonzero(self, table: Table) -> list[tuple[Key, list[int]]]:
        derived = _DERIVED.get(table.name)
        if derived is None:
            return [(k, v) for k, v in self.rows[table.name].items() if any(v)]
        finer, coarse_key = derived
        summed: dict[Key, list[int]] = {}
        for key, values in self.rows[finer].items():
            ck = coarse_key(key)
            row = summed.get(ck)
            if row is None:
                summed[ck] = list(values)
            else:
                for i, v in enumerate(values):
                    row[i] += v
        return [(k, v) for k, v in summed.items() if any(v)]

    def is_empty(self) -> bool:
        return not any(any(v) for rows in self.rows.values() for v in rows.values())


# The report grains are sums of a finer rollup over some of its keys, so a batch's rows for them are summed
# from the finer table's rows when the batch is written (once per key), not added per contribution: the
# same cells for a third fewer additions per event (ADR 0024).
_DERIVED: dict[str, tuple[str, Callable[[Key], Key]]] = {
    TICKET_DAY.name: (TICKET_DAILY.name, lambda k: (k[0], k[1])),
    COMP_DAY.name: (COMP_DAILY.name, lambda k: (k[0], k[1], k[4])),
    AMOUNT_MONTH.name: (AMOUNT_DAILY.name, lambda k: (k[0], period_of(k[1]), k[2], k[3])),  # type: ignore[arg-type]
}


def _index(table: Table) -> dict[str, int]:
    return {m: i for i, m in enumerate(table.measures)}


_TD, _TH, _CD, _CH = _index(TICKET_DAILY), _index(TICKET_HOURLY), _index(COMP_DAILY), _index(COMP_HOURLY)
_SD, _AD, _FD, _BD = _index(SELLER_DAILY), _index(AMOUNT_DAILY), _index(FEEDBACK_DAILY), _index(BUDGET_DAILY)
_DD = _index(DECISION_DAILY)


# ------------------------------------------------------------------ contributions


def contribute(out: Deltas, ticket: TicketRecord | None, comps: Iterable[CompensationRecord], tz_of: Mapping[str, str],
               sign: int = 1) -> None:
    """Add (sign=1) or take away (sign=-1) what a ticket and all its compensations contribute."""
    issued = [c for c in comps if c.issued]
    _ticket_part(out, ticket, issued, tz_of, sign)
    known = _known(ticket)
    for comp in issued:
        _compensation(out, comp, ticket if known else None, tz_of[comp.region], sign)


def _known(ticket: TicketRecord | None) -> bool:
    return ticket is not None and ticket.known and ticket.occurred_at is not None


def _facts(issued: Sequence[CompensationRecord]) -> tuple[bool, bool, bool, datetime | None]:
    """What the ticket's own counts depend on: compensated at all, automatically, by hand, first issue."""
    auto = manual = False
    first: datetime | None = None
    for c in issued:  # one pass: this runs twice for every ticket group a batch touches
        if c.source == "auto":
            auto = True
        elif c.source == "manual":
            manual = True
        at = c.issued_at
        if at is not None and (first is None or at < first):
            first = at
    return (bool(issued), auto, manual, first)


_TD_TICKETS, _TD_COMPENSATED, _TD_AUTO, _TD_MANUAL = (_TD["tickets"], _TD["compensated"], _TD["compensated_auto"],
                                                      _TD["compensated_manual"])
_TD_CLAIMED, _TD_DETECTED = _TD["claimed"], _TD["detected"]
_TH_PAIRS = {compensated: ((_TH["tickets"], 1), (_TH["compensated"], compensated)) for compensated in (0, 1)}
_SD_TICKET_PAIRS = {compensated: ((_SD["tickets"], 1), (_SD["compensated"], compensated)) for compensated in (0, 1)}


def _ticket_part(out: Deltas, ticket: TicketRecord | None, issued: Sequence[CompensationRecord],
                 tz_of: Mapping[str, str], sign: int) -> None:
    if not _known(ticket):
        return
    assert ticket is not None and ticket.occurred_at is not None
    day, hour = local_slot(ticket.occurred_at, tz_of[ticket.region])
    compensated_any, auto, manual, first_issued = _facts(issued)
    compensated = 1 if compensated_any else 0
    counts = ((_TD_TICKETS, 1), (_TD_COMPENSATED, compensated), (_TD_AUTO, int(auto)), (_TD_MANUAL, int(manual)),
              (_TD_CLAIMED, int(ticket.raised_by in CLAIM_SOURCES)),
              (_TD_DETECTED, int(ticket.raised_by in DETECTED_SOURCES)))
    region, reason, carrier = ticket.region, ticket.reason, ticket.carrier_id
    out.add(TICKET_DAILY, (region, day, reason, carrier), counts, sign)  # and so TICKET_DAY (_DERIVED)
    out.add(TICKET_HOURLY, (region, day, hour, reason, carrier), _TH_PAIRS[compensated], sign)
    out.add(SELLER_DAILY, (region, day, ticket.seller_id), _SD_TICKET_PAIRS[compensated], sign)
    if ticket.feedback:
        _feedback(out, ticket, day, first_issued, sign)


def _feedback(out: Deltas, ticket: TicketRecord, day: date, first_issued: datetime | None, sign: int) -> None:
    """One response per ticket and kind: for a compensated ticket the first answer given at or after its
    first compensation (cohort after_comp; an answer given only before it counts as before_comp), for an
    uncompensated ticket its first answer (cohort uncompensated)."""
    for kind in {f.kind for f in ticket.feedback}:
        answers = [f for f in ticket.feedback if f.kind == kind]  # sorted by (time, id)
        if first_issued is None:
            chosen, cohort = answers[0], "uncompensated"
        else:
            after = [f for f in answers if f.at >= first_issued]
            chosen, cohort = (after[0], "after_comp") if after else (answers[0], "before_comp")
        out.add(FEEDBACK_DAILY, (ticket.region, day, ticket.reason, kind, cohort), (
            (_FD["responses"], 1), (_FD["score_sum"], chosen.score), (_FD["score_squares"], chosen.score ** 2)), sign)


(_CD_COMPS, _CD_AMOUNT, _CD_SELLER, _CD_CARRIER, _CD_PLATFORM, _CD_VOUCHERS, _CD_VOUCHER_MINOR, _CD_REDEEMED,
 _CD_REDEEMED_MINOR, _CD_EXPIRED, _CD_EXPIRED_MINOR, _CD_REVOKED, _CD_PROACTIVE, _CD_TIMED, _CD_TTC_SECONDS) = (
    _CD[m] for m in ("comps", "amount_minor", "seller_minor", "carrier_minor", "platform_minor", "vouchers",
                     "voucher_minor", "redeemed", "redeemed_minor", "expired", "expired_minor", "revoked",
                     "proactive", "timed", "ttc_seconds"))
_CD_TTC = tuple(_CD[m] for m in _TTC_MEASURES)
_AD_ONE = ((_AD["comps"], 1),)
_CH_COMPS, _CH_AMOUNT, _SD_COMPS, _SD_AMOUNT = _CH["comps"], _CH["amount_minor"], _SD["comps"], _SD["amount_minor"]
_PERIODS: dict[date, str] = {}


def _period(day: date) -> str:
    period = _PERIODS.get(day)
    if period is None:
        if len(_PERIODS) >= 100_000:
            _PERIODS.clear()
        period = _PERIODS[day] = period_of(day)
    return period


def _compensation(out: Deltas, c: CompensationRecord, ticket: TicketRecord | None, tz: str, sign: int) -> None:
    issued_at = c.issued_at
    assert issued_at is not None
    if ticket is not None:
        assert ticket.occurred_at is not None
        day, hour = local_slot(ticket.occurred_at, tz)
        reason, carrier, seller = ticket.reason, ticket.carrier_id, ticket.seller_id
    else:  # its ticket is not known (yet): the compensation's own time and facts
        day, hour = local_slot(issued_at, tz)
        reason, carrier, seller = c.reason, c.carrier_id, c.seller_id
    voucher = c.kind in VOUCHER_KINDS
    life = c.lifecycle if voucher else "open"
    amount = c.amount_minor
    values: list[tuple[int, int]] = [
        (_CD_COMPS, 1), (_CD_AMOUNT, amount), (_CD_SELLER, c.seller_minor), (_CD_CARRIER, c.carrier_minor),
        (_CD_PLATFORM, c.platform_minor), (_CD_VOUCHERS, int(voucher)), (_CD_VOUCHER_MINOR, amount if voucher else 0),
        (_CD_REDEEMED, int(life == "redeemed")),
        (_CD_REDEEMED_MINOR, (c.redeemed_minor or 0) if life == "redeemed" else 0),
        (_CD_EXPIRED, int(life == "expired")), (_CD_EXPIRED_MINOR, amount if life == "expired" else 0),
        (_CD_REVOKED, int(life == "revoked"))]
    if ticket is not None:
        assert ticket.occurred_at is not None and ticket.breach_at is not None
        seconds = (issued_at - ticket.occurred_at).total_seconds()
        proactive = ticket.raised_by in DETECTED_SOURCES and issued_at - ticket.breach_at <= PROACTIVE_WINDOW
        values += [(_CD_TIMED, 1), (_CD_TTC_SECONDS, max(0, int(seconds))), (_CD_TTC[ttc_bin(seconds)], 1),
                   (_CD_PROACTIVE, int(proactive))]
    region, source = c.region, c.source
    out.add(COMP_DAILY, (region, day, reason, carrier, source, c.strategy_id), values, sign)  # and COMP_DAY
    out.add(COMP_HOURLY, (region, day, hour, reason, carrier, source, c.strategy_id),
            ((_CH_COMPS, 1), (_CH_AMOUNT, amount)), sign)
    out.add(SELLER_DAILY, (region, day, seller), ((_SD_COMPS, 1), (_SD_AMOUNT, amount)), sign)
    out.add(AMOUNT_DAILY, (region, day, source, amount), _AD_ONE, sign)  # and AMOUNT_MONTH
    _budget(out, c, tz, sign)


def _budget(out: Deltas, c: CompensationRecord, tz: str, sign: int) -> None:
    """Budget usage as the ledger keeps it: the face value is committed when issued (an automatic voucher's
    reservation, a manual compensation's posting); an automatic voucher's unused value is released when it
    is redeemed for less, expires or is revoked. Both are dated by when they happen, within the budget
    period of the issue."""
    assert c.issued_at is not None
    issue_day, _ = local_slot(c.issued_at, tz)
    period = _period(issue_day)
    out.add(BUDGET_DAILY, (c.region, period, issue_day, c.source), ((_BD["committed_minor"], c.amount_minor),), sign)
    if c.source != "auto" or not c.is_voucher:
        return
    life = c.lifecycle
    released, at = 0, None
    if life == "redeemed":
        released, at = max(0, c.amount_minor - (c.redeemed_minor or 0)), c.redeemed_at
    elif life == "expired":
        released, at = c.amount_minor, c.expired_at
    elif life == "revoked":
        released, at = c.amount_minor, c.revoked_at
    if released and at is not None:
        day, _ = local_slot(at, tz)
        out.add(BUDGET_DAILY, (c.region, period, day, c.source), ((_BD["released_minor"], released),), sign)


def decision_contribution(out: Deltas, *, region: str, tz: str, ticket_occurred_at: datetime, strategy_id: str | None,
                          strategy_version: int | None, outcome: str, failed_rule: str | None, tier: str | None,
                          shadow: bool, amount_minor: int | None, reason: str = "",
                          order_minor: int | None = None) -> None:
    """A final decision of auto_comp, in the bucket of its ticket's local day (decisions are immutable). What
    a strategy gives (issued, or would issue in shadow) also goes to the per-amount and per-share cells."""
    day, _ = local_slot(ticket_occurred_at, tz)
    out.add(DECISION_DAILY, (region, day, strategy_id or "", strategy_version or 0, outcome, failed_rule or "",
                             tier or "", shadow), ((_DD["decisions"], 1), (_DD["amount_minor"], amount_minor or 0)))
    if strategy_id and amount_minor and outcome in GIVING_OUTCOMES:
        version = strategy_version or 0
        out.add(STRATEGY_AMOUNT_DAILY, (region, day, strategy_id, version, reason, shadow, amount_minor), ((0, 1),))
        if order_minor:
            out.add(STRATEGY_SHARE_DAILY, (region, day, strategy_id, version, reason, shadow,
                                           share_bp(amount_minor, order_minor)), ((0, 1),))


GIVING_OUTCOMES = frozenset({"issued", "would_issue"})


def share_bp(amount_minor: int, order_minor: int) -> int:
    """An amount as basis points of the order value, rounded half up (10,000 = the whole order)."""
    return (20_000 * amount_minor + order_minor) // (2 * order_minor)


def group_delta(before: tuple[TicketRecord | None, list[CompensationRecord]],
                after: tuple[TicketRecord | None, list[CompensationRecord]], tz_of: Mapping[str, str],
                out: Deltas) -> None:
    """What a change of one ticket's group (the ticket and its compensations) does to the rollups: the new
    contribution minus the old, computed only for the parts that can have changed (the ticket's own counts
    when the ticket or its compensation facts changed; a compensation's when it or its ticket changed)."""
    (old_t, old_c), (new_t, new_c) = before, after
    old_issued = [c for c in old_c if c.issued]
    new_issued = [c for c in new_c if c.issued]
    same_ticket = old_t == new_t
    if not same_ticket or _facts(old_issued) != _facts(new_issued):
        _ticket_part(out, old_t, old_issued, tz_of, -1)
        _ticket_part(out, new_t, new_issued, tz_of, 1)
    old_known, new_known = _known(old_t), _known(new_t)
    old_by = {c.compensation_id: c for c in old_issued}
    for comp in new_issued:
        previous = old_by.pop(comp.compensation_id, None)
        if same_ticket and previous == comp:
            continue
        if previous is not None:
            _compensation(out, previous, old_t if old_known else None, tz_of[previous.region], -1)
        _compensation(out, comp, new_t if new_known else None, tz_of[comp.region], 1)
    for gone in old_by.values():  # a compensation that left this ticket (its issue event was superseded)
        _compensation(out, gone, old_t if old_known else None, tz_of[gone.region], -1)


# ------------------------------------------------------------------ approval stage and corrective actions
# Records, not bucket cells: a request, a flagged compensation or a corrective action is one row whatever
# how many events were about it, merged order-independently (the same set of events, duplicates included,
# gives the same row in any order), so the report's counts equal a recomputation from the raw events. Their
# volume is a few per manual compensation at most; reports aggregate them in SQL over a (region, local
# day) index (docs/metrics.md, "Approval stage" and "Corrective actions").

FINAL_OUTCOMES = frozenset({"approved", "rejected"})
QUEUED_OUTCOMES = frozenset({"awaiting_approval", "escalated"})


@dataclass(slots=True)
class RequestStep:
    """One ``compensation.request_decided`` as insights reads it."""

    event_id: str
    outcome: str  # approved | rejected | awaiting_approval | escalated
    automatic: bool
    decided_by: str
    decided_at: datetime
    requested_at: datetime
    reason_code: str
    team: str
    kind: str
    requested_minor: int
    approved_minor: int | None


@dataclass(slots=True)  # never mutated
class ApprovalRecord:
    """insights' record of a compensation request: its facts (from its earliest step), whether it went to
    the approval queue and was escalated, and its final decision (the earliest approved/rejected step)."""

    region: str
    request_id: str
    request_day: date  # local day of requested_at: the report's bucket
    requested_at: datetime
    reason_code: str
    team: str
    kind: str
    requested_minor: int
    first_at: datetime  # the earliest step (decided_at, event id) that set the facts
    first_event: str
    queued: bool = False  # an awaiting_approval or escalated step, or a person's final decision
    escalated: bool = False
    outcome: str = ""  # approved | rejected | "" while no final step arrived
    automatic: bool = False
    decided_by: str = ""
    decided_at: datetime | None = None
    decision_event: str = ""
    approved_minor: int = 0


def merge_request_step(record: ApprovalRecord | None, region: str, request_id: str, step: RequestStep,
                       tz: str) -> ApprovalRecord:
    if record is None:
        record = ApprovalRecord(region, request_id, local_slot(step.requested_at, tz)[0], step.requested_at,
                                step.reason_code, step.team, step.kind, step.requested_minor, step.decided_at,
                                step.event_id)
    elif (step.decided_at, step.event_id) < (record.first_at, record.first_event):
        record = replace(record, request_day=local_slot(step.requested_at, tz)[0], requested_at=step.requested_at,
                         reason_code=step.reason_code, team=step.team, kind=step.kind,
                         requested_minor=step.requested_minor, first_at=step.decided_at, first_event=step.event_id)
    queued = record.queued or step.outcome in QUEUED_OUTCOMES or (
        step.outcome in FINAL_OUTCOMES and not step.automatic)
    escalated = record.escalated or step.outcome == "escalated"
    if queued != record.queued or escalated != record.escalated:
        record = replace(record, queued=queued, escalated=escalated)
    if step.outcome in FINAL_OUTCOMES and _earlier(step.decided_at, step.event_id, record.decided_at,
                                                   record.decision_event):
        record = replace(record, outcome=step.outcome, automatic=step.automatic, decided_by=step.decided_by,
                         decided_at=step.decided_at, decision_event=step.event_id,
                         approved_minor=step.approved_minor or 0)
    return record


@dataclass(slots=True)  # never mutated
class FlagRecord:
    """A manual compensation flagged as not matching its approval: every mismatch any flag named."""

    region: str
    compensation_id: str
    flag_day: date  # local day of issued_at
    issued_at: datetime
    team: str
    reason_code: str
    issued_minor: int
    mismatches: tuple[str, ...]  # sorted, distinct


def merge_flag(record: FlagRecord | None, new: FlagRecord) -> FlagRecord:
    if record is None:
        return new
    mismatches = tuple(sorted({*record.mismatches, *new.mismatches}))
    first = new if (new.issued_at, new.team, new.reason_code, new.issued_minor) < (
        record.issued_at, record.team, record.reason_code, record.issued_minor) else record
    return replace(first, mismatches=mismatches)


@dataclass(slots=True)  # never mutated
class ActionRecord:
    """insights' record of a corrective action: its latest state (by updated_at, then event id) and its
    latest measured effect (the effect is published on its own step)."""

    region: str
    action_id: int
    opened_day: date  # local day of opened_at
    opened_at: datetime
    kind: str
    source: str
    target_type: str
    status: str
    due_on: date
    updated_at: datetime
    state_event: str
    effect_at: datetime | None = None
    effect_event: str = ""
    after_audits: int | None = None
    difference: float | None = None
    difference_low: float | None = None
    difference_high: float | None = None


def merge_action(record: ActionRecord | None, new: ActionRecord) -> ActionRecord:
    """``new`` is the record one event alone would give (its effect set only if the event has one)."""
    if record is None:
        return new
    state = new if (new.updated_at, new.state_event) > (record.updated_at, record.state_event) else record
    opened = min((record.opened_at, record.opened_day), (new.opened_at, new.opened_day))
    effect = record
    if new.effect_at is not None and (record.effect_at is None or (new.effect_at, new.effect_event) > (
            record.effect_at, record.effect_event)):
        effect = new
    return replace(state, opened_at=opened[0], opened_day=opened[1], effect_at=effect.effect_at,
                   effect_event=effect.effect_event, after_audits=effect.after_audits,
                   difference=effect.difference, difference_low=effect.difference_low,
                   difference_high=effect.difference_high)


_AP = _index(APPROVAL_DAILY)
_AP_BINS = tuple(_AP[m] for m in APPROVAL_BINS)


def approval_part(out: Deltas, r: ApprovalRecord, sign: int) -> None:
    """What a request's record contributes to its local day (docs/metrics.md, "Approval stage")."""
    values = [(_AP["requests"], 1), (_AP["queued"], int(r.queued)), (_AP["escalated"], int(r.escalated)),
              (_AP["requested_minor"], r.requested_minor)]
    if not r.outcome:
        values.append((_AP["awaiting"], 1))
    else:
        values.append((_AP[f"{r.outcome}_{'automatically' if r.automatic else 'by_approver'}"], 1))
        if r.outcome == "approved":
            values += [(_AP["approved_minor"], r.approved_minor), (_AP["approved_requested_minor"], r.requested_minor)]
        if not r.automatic:
            assert r.decided_at is not None
            values.append((_AP_BINS[ttc_bin((r.decided_at - r.requested_at).total_seconds())], 1))
    out.add(APPROVAL_DAILY, (r.region, r.request_day), values, sign)


def flag_part(out: Deltas, r: FlagRecord, sign: int) -> None:
    out.add(FLAG_DAILY, (r.region, r.flag_day, ""), ((0, 1), (1, r.issued_minor)), sign)
    for mismatch in r.mismatches:
        out.add(FLAG_DAILY, (r.region, r.flag_day, mismatch), ((0, 1),), sign)


def action_part(out: Deltas, r: ActionRecord, sign: int) -> None:
    improved = r.difference_high is not None and r.difference_high < 0
    out.add(ACTION_DAILY, (r.region, r.opened_day, r.kind, r.status, r.due_on),
            ((0, 1), (1, int(r.effect_at is not None)), (2, int(improved))), sign)
