"""A small business for the dashboard's tests: Indonesia (IDR, no minor units, Asia/Jakarta) in October and
November 2026 with tickets, manual and automatic compensations, audits and a budget; a little Singapore and
Great Britain (for region scoping); users with and without dashboard roles. Applied through insights' real
handler into a real database (shared by the HTTP and the browser tests)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from services.insights.app import Compactor
from services.insights.handlers import RollupHandler
from services.insights.web.auth import STORE
from shared.contracts import events as ev
from shared.contracts.registry import LATEST, make_envelope
from shared.db import migrate
from shared.kafka import Delivered
from shared.regions import catalogue
from shared.web.security import hash_password

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "insights" / "migrations"
PASSWORD = "dashboard test password"
GB_ONLY_CARRIER = "carrier-only-in-gb"
# The spike table spike detection creates (services/insights, issue 10); created here so the pages can be
# shown with a spike before that migration lands. IF NOT EXISTS: a no-op once it has.
SPIKE_TABLE = """CREATE TABLE IF NOT EXISTS spike_alerts (
    region text NOT NULL, dimension text NOT NULL, series_key text NOT NULL, bucket_start timestamptz NOT NULL,
    kind text NOT NULL, alert_id text NOT NULL UNIQUE, day date NOT NULL, bucket_end timestamptz NOT NULL,
    observed bigint NOT NULL, expected float8 NOT NULL, lower_edge float8 NOT NULL, upper_edge float8 NOT NULL,
    sigma float8 NOT NULL, z float8 NOT NULL, cusum float8 NOT NULL, contributors jsonb NOT NULL DEFAULT '[]',
    event_id text NOT NULL, detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, dimension, series_key, bucket_start, kind))"""

# Users: (name, roles, regions)
USERS = [
    ("mia", ["strategy_manager"], ["SG"]),
    ("fin", ["finance"], ["ID", "SG"]),
    ("ops", ["ops_admin"], ["*"]),
    ("aud", ["auditor"], ["ID"]),  # not a dashboard role (only the database could hold it: the CLI refuses it)
]

_ids = itertools.count(1)
_offsets = itertools.count()


def _at(day: date, hour: int, tz: str) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def _delivered(event_type: str, payload: ev.Payload, region: str, at: datetime) -> Delivered:
    env = make_envelope(event_type, payload, source="dashboard-test", region=region, occurred_at=at,
                        event_id=f"dash-{next(_ids)}")
    return Delivered(env, payload, LATEST[event_type].topic.value, 0, next(_offsets), None, 0)


def _ticket(tid: str, currency: str, reason: ev.TicketReason, seller: str, carrier: str) -> ev.TicketOpened:
    return ev.TicketOpened(ticket_id=tid, order_id=f"O-{tid}", buyer_id=f"B-{tid}", seller_id=seller,
                           carrier_id=carrier, reason=reason,
                           order_amount=ev.PositiveMoney(amount_minor=500_000, currency=currency))


def _manual(cid: str, tid: str, currency: str, amount: int) -> ev.ManualCompensationIssued:
    return ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id=tid, order_id=f"O-{tid}", buyer_id=f"B-{tid}", seller_id="S1",
        agent_id="agent-1", team="team-1", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=amount, currency=currency), reason_code="damaged",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S1"), amount_minor=amount)])


def _auto(cid: str, tid: str, currency: str, amount: int) -> ev.CompensationIssued:
    return ev.CompensationIssued(
        compensation_id=cid, reservation_id=f"R-{cid}", ticket_id=tid, order_id=f"O-{tid}", buyer_id=f"B-{tid}",
        strategy_id="late-voucher", strategy_version=1, reason=ev.TicketReason.LATE_DELIVERY,
        kind=ev.CompensationKind.VOUCHER, amount=ev.PositiveMoney(amount_minor=amount, currency=currency),
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=amount)])


def events() -> list[Delivered]:
    tz = catalogue().get("ID").timezone
    out: list[Delivered] = []
    reasons = [ev.TicketReason.DAMAGED, ev.TicketReason.WRONG_ITEM, ev.TicketReason.NOT_RECEIVED]
    # October: 6 tickets, 2 manual compensations of 100,000 IDR.
    for i in range(6):
        day = date(2026, 10, 5 + 3 * i)
        tid = f"ID-OCT-{i}"
        out.append(_delivered("ticket.opened", _ticket(tid, "IDR", reasons[i % 3], f"S{i % 2 + 1}", "C1"), "ID",
                              _at(day, 10, tz)))
        if i < 2:
            out.append(_delivered("compensation.manual_issued", _manual(f"ID-OCT-M{i}", tid, "IDR", 100_000), "ID",
                                  _at(day, 13, tz)))
    # November: 12 tickets (damaged ones pile up on the 10th), 4 manual (150,000) and 3 automatic (125,000).
    for i in range(12):
        day = date(2026, 11, 10) if i in (0, 3, 6) else date(2026, 11, 2 + i)
        reason = ev.TicketReason.DAMAGED if i in (0, 3, 6) else reasons[i % 3]
        tid = f"ID-NOV-{i}"
        out.append(_delivered("ticket.opened", _ticket(tid, "IDR", reason, f"S{i % 3 + 1}", f"C{i % 2 + 1}"), "ID",
                              _at(day, 9, tz)))
        if i < 4:
            out.append(_delivered("compensation.manual_issued", _manual(f"ID-NOV-M{i}", tid, "IDR", 150_000), "ID",
                                  _at(day, 12, tz)))
        elif i < 7:
            out.append(_delivered("compensation.issued", _auto(f"ID-NOV-A{i}", tid, "IDR", 125_000), "ID",
                                  _at(day, 9, tz) + timedelta(minutes=20)))
    out.append(_delivered("budget.limit_set", ev.BudgetLimitSet(
        budget_period="2026-11", limit=ev.MoneyTotal(amount_minor=1_500_000, currency="IDR"), actor="fin"),
        "ID", _at(date(2026, 10, 30), 9, tz)))
    # Audits of three November manual compensations: two verdicts (one failed), one still waiting.
    for n in range(3):
        cid = f"ID-NOV-M{n}"
        issued = _at(date(2026, 11, 2 + n) if n else date(2026, 11, 10), 12, tz)
        out.append(_delivered("audit.item_sampled", ev.AuditItemSampled(
            item_id=n + 1, compensation_id=cid, buyer_id=f"B-ID-NOV-{n}", compensation_occurred_at=issued,
            stratum="normal", inclusion_probability=0.5, mandatory=False, agent_id="agent-1", team="team-1",
            reason_code="damaged", amount=ev.PositiveMoney(amount_minor=150_000, currency="IDR"),
            sla_due_at=issued + timedelta(days=3)), "ID", issued + timedelta(hours=1)))
        if n < 2:
            out.append(_delivered("audit.verdict_recorded", ev.AuditVerdictRecorded(
                verdict_id=n + 1, item_id=n + 1, compensation_id=cid, buyer_id=f"B-ID-NOV-{n}", auditor_id="ada",
                passed=n == 0, attributes={"warranted": n == 0},
                error_category=None if n == 0 else "not_warranted",
                amount=ev.PositiveMoney(amount_minor=150_000, currency="IDR"),
                money_misstated=ev.NonNegativeMoney(amount_minor=0 if n == 0 else 150_000, currency="IDR"),
                audited_at=issued + timedelta(days=1), within_sla=True), "ID", issued + timedelta(days=1)))
    # Singapore: 3 tickets, one compensated (12.50 SGD). Great Britain: 2 tickets of a GB-only carrier.
    sg_tz = catalogue().get("SG").timezone
    for i in range(3):
        tid = f"SG-NOV-{i}"
        out.append(_delivered("ticket.opened", _ticket(tid, "SGD", ev.TicketReason.WRONG_ITEM, "S9", "C9"), "SG",
                              _at(date(2026, 11, 4 + i), 10, sg_tz)))
    out.append(_delivered("compensation.manual_issued", _manual("SG-NOV-M0", "SG-NOV-0", "SGD", 1_250), "SG",
                          _at(date(2026, 11, 4), 15, sg_tz)))
    gb_tz = catalogue().get("GB").timezone
    for i in range(2):
        out.append(_delivered("ticket.opened", _ticket(f"GB-NOV-{i}", "GBP", ev.TicketReason.LOST_IN_TRANSIT, "S8",
                                                       GB_ONLY_CARRIER), "GB", _at(date(2026, 11, 6), 10, gb_tz)))
    return out


async def seed(engine: Any, *, spike: bool = True) -> None:
    """Events applied and compacted, users created, and (``spike``) one spike alert stored for ID."""
    handler = RollupHandler({code: catalogue().get(code).timezone for code in catalogue().codes()})
    batch = events()
    for i in range(0, len(batch), 10):
        async with engine.begin() as conn:
            await handler(conn, batch[i:i + 10])

    class _Ctx:
        def __init__(self) -> None:
            self.engine = engine

    await Compactor(_Ctx(), 1).run_once()  # type: ignore[arg-type]
    async with engine.begin() as conn:
        for name, roles, regions in USERS:
            await STORE.upsert_user(conn, name, hash_password(PASSWORD, n=2 ** 12), roles, regions)
    if spike:
        await add_spike(engine)


async def add_spike(engine: Any) -> None:
    start = _at(date(2026, 11, 10), 0, catalogue().get("ID").timezone)
    async with engine.begin() as conn:
        await conn.execute(text(SPIKE_TABLE))
        await conn.execute(text(
            "INSERT INTO spike_alerts (region, dimension, series_key, bucket_start, kind, alert_id, day, bucket_end, "
            "observed, expected, lower_edge, upper_edge, sigma, z, cusum, event_id) VALUES ('ID', 'reason', "
            "'damaged', :s, 'spike', 'alert-ID-damaged-1', '2026-11-10', :e, 3, 0.4, 0, 2, 0.6, 4.3, 0, 'evt-1') "
            "ON CONFLICT DO NOTHING"), {"s": start, "e": start + timedelta(days=1)})


async def migrated(url: str) -> None:
    await migrate(url, "insights", MIGRATIONS)
