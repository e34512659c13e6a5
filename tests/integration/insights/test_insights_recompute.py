"""Every rollup cell equals a recomputation from the raw events: random event sets (tickets, automatic and
manual compensations, voucher lifecycle, feedback, decisions) around the DST changes of New York and in
Jakarta, applied through the real handler and database in a random order, in random batches, with
business duplicates, then compared cell by cell with the pure recomputation."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.insights.app import Compactor
from services.insights.domain.rollups import (
    TABLES,
    CompensationRecord,
    Deltas,
    Feedback,
    TicketRecord,
    breach_time,
    contribute,
    decision_contribution,
    merge_feedback,
    merge_issued,
    merge_lifecycle,
    merge_ticket_opened,
)
from shared.contracts import events as ev
from tests.integration.insights.insights_support import apply, delivered, insights_engine, tz_of

pytestmark = pytest.mark.integration

REGIONS = {"US": "USD", "ID": "IDR"}
ANCHORS = [datetime(2026, 3, 8, 6, tzinfo=UTC), datetime(2026, 11, 1, 5, tzinfo=UTC),
           datetime(2026, 10, 31, 17, tzinfo=UTC)]


@pytest.fixture(scope="module")
async def engine(fresh_database):
    engine = await insights_engine(fresh_database)
    yield engine
    await engine.dispose()


def _events(seed: int, n_tickets: int) -> list:  # type: ignore[type-arg]
    rnd = random.Random(seed)
    out = []
    for i in range(n_tickets):
        region = rnd.choice(list(REGIONS))
        cur = REGIONS[region]
        tid = f"{seed}-T{i}"
        t0 = rnd.choice(ANCHORS) + timedelta(minutes=rnd.randint(-1500, 1500))
        reason = rnd.choice([ev.TicketReason.DAMAGED, ev.TicketReason.LATE_DELIVERY])
        late = reason is ev.TicketReason.LATE_DELIVERY
        if rnd.random() < 0.9:
            for copy in range(rnd.choice([1, 1, 2])):  # a resend under a new event id: a business duplicate
                p = ev.TicketOpened(
                    ticket_id=tid, order_id=f"O{i}", buyer_id=f"B{i}", seller_id=rnd.choice(["S1", "S2"]),
                    carrier_id=rnd.choice(["C1", "C2", None]), reason=reason,
                    order_amount=ev.PositiveMoney(amount_minor=10_000, currency=cur),
                    promised_delivery_at=t0 - timedelta(hours=rnd.randint(1, 60)) if late else None,
                    delivered_at=t0 if late else None,
                    raised_by=rnd.choice([None, *ev.RaisedBy]))
                out.append(delivered("ticket.opened", p, region=region, at=t0 + timedelta(seconds=copy),
                                     event_id=f"{tid}-open-{copy}"))
        for j in range(rnd.choice([0, 0, 1, 2])):
            cid = f"{tid}-C{j}"
            issued_at = t0 + timedelta(seconds=rnd.choice([-30, 10, 400, 5000, 90_000, 3_000_000]))
            amount = rnd.randint(1, 5000)
            if rnd.random() < 0.5:
                share = rnd.randint(0, amount)
                parts = [ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM),
                                           amount_minor=amount - share)]
                if share:
                    parts.append(ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.CARRIER, id="C1"),
                                                   amount_minor=share))
                p2: ev.Payload = ev.CompensationIssued(
                    compensation_id=cid, reservation_id=f"R{cid}", ticket_id=tid, order_id=f"O{i}", buyer_id=f"B{i}",
                    strategy_id=rnd.choice(["s1", "s2"]), strategy_version=1, reason=reason,
                    kind=rnd.choice([ev.CompensationKind.VOUCHER, ev.CompensationKind.STORE_CREDIT]),
                    amount=ev.PositiveMoney(amount_minor=amount, currency=cur), liability=parts)
                out.append(delivered("compensation.issued", p2, region=region, at=issued_at, event_id=f"{cid}-i"))
            else:
                p2 = ev.ManualCompensationIssued(
                    compensation_id=cid, ticket_id=tid, order_id=f"O{i}", buyer_id=f"B{i}", seller_id="S9",
                    carrier_id=None, agent_id="A1", team="t", kind=ev.CompensationKind.VOUCHER,
                    amount=ev.PositiveMoney(amount_minor=amount, currency=cur), reason_code="other",
                    liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S9"),
                                                 amount_minor=amount)])
                out.append(delivered("compensation.manual_issued", p2, region=region, at=issued_at,
                                     event_id=f"{cid}-m"))
            life = rnd.choice([None, "voucher.redeemed", "voucher.expired", "voucher.revoked"])
            if life:
                at = issued_at + timedelta(days=rnd.randint(0, 40))
                lp: ev.Payload
                if life == "voucher.redeemed":
                    lp = ev.VoucherRedeemed(compensation_id=cid, buyer_id=f"B{i}", order_id="O",
                                            discount=ev.PositiveMoney(amount_minor=rnd.randint(1, amount),
                                                                      currency=cur))
                elif life == "voucher.expired":
                    lp = ev.VoucherExpired(compensation_id=cid, buyer_id=f"B{i}")
                else:
                    lp = ev.VoucherRevoked(compensation_id=cid, buyer_id=f"B{i}", reason="fraud")
                out.append(delivered(life, lp, region=region, at=at, event_id=f"{cid}-{life}"))
        if rnd.random() < 0.4:
            out.append(delivered("buyer.feedback_given", ev.BuyerFeedbackGiven(
                feedback_id=f"{tid}-F", ticket_id=tid, order_id=f"O{i}", buyer_id=f"B{i}",
                kind=rnd.choice(list(ev.FeedbackKind)), score=rnd.randint(1, 5), channel="survey"),
                region=region, at=t0 + timedelta(hours=rnd.randint(0, 48)), event_id=f"{tid}-fb"))
        if rnd.random() < 0.5:
            out.append(delivered("decision.recorded", ev.DecisionRecorded(
                ticket_id=tid, order_id=f"O{i}", buyer_id=f"B{i}", reason=reason, ticket_occurred_at=t0, shadow=False,
                outcome=ev.DecisionOutcome.HOLDOUT, failed_rule="holdout", detail="holdout", strategy_id="s1",
                strategy_version=1, tier="base", kind=ev.CompensationKind.VOUCHER,
                amount=ev.PositiveMoney(amount_minor=100, currency=cur)), region=region, at=t0, event_id=f"{tid}-d"))
    return out


def recompute(events: list) -> Deltas:  # type: ignore[type-arg]
    """The rollups straight from the event set: merge every event into its record, then sum contributions."""
    tickets: dict[str, TicketRecord] = {}
    comps: dict[str, CompensationRecord] = {}
    out = Deltas()
    tz = tz_of()
    for d in events:
        p, env = d.payload, d.envelope
        if isinstance(p, ev.TicketOpened):
            t = tickets.get(p.ticket_id) or TicketRecord(p.ticket_id, env.region)
            tickets[p.ticket_id] = merge_ticket_opened(
                t, event_id=env.event_id, occurred_at=env.occurred_at, reason=p.reason.value, seller_id=p.seller_id,
                carrier_id=p.carrier_id, raised_by=p.raised_by.value if p.raised_by else None,
                breach_at=breach_time(p.reason.value, env.occurred_at, p.promised_delivery_at, p.dispatch_due_at))
        elif isinstance(p, ev.BuyerFeedbackGiven):
            t = tickets.get(p.ticket_id) or TicketRecord(p.ticket_id, env.region)
            tickets[p.ticket_id] = merge_feedback(t, Feedback(p.feedback_id, p.kind.value, p.score, env.occurred_at))
        elif isinstance(p, ev.CompensationIssued | ev.ManualCompensationIssued):
            c = comps.get(p.compensation_id) or CompensationRecord(p.compensation_id, env.region)
            liability: dict[str, int] = {}
            for s in p.liability:
                liability[s.party.type.value] = liability.get(s.party.type.value, 0) + s.amount_minor
            auto = isinstance(p, ev.CompensationIssued)
            comps[p.compensation_id] = merge_issued(
                c, event_id=env.event_id, ticket_id=p.ticket_id, source="auto" if auto else "manual",
                kind=p.kind.value, strategy_id=p.strategy_id if auto else "",  # type: ignore[union-attr]
                reason=p.reason.value if auto else p.reason_code,  # type: ignore[union-attr]
                seller_id=None if auto else p.seller_id, carrier_id=None if auto else p.carrier_id,  # type: ignore[union-attr]
                amount_minor=p.amount.amount_minor, liability=liability, issued_at=env.occurred_at)
        elif isinstance(p, ev.VoucherRedeemed | ev.VoucherExpired | ev.VoucherRevoked):
            c = comps.get(p.compensation_id) or CompensationRecord(p.compensation_id, env.region)
            comps[p.compensation_id] = merge_lifecycle(
                c, event_type=env.event_type, event_id=env.event_id, at=env.occurred_at,
                discount_minor=p.discount.amount_minor if isinstance(p, ev.VoucherRedeemed) else None)
        elif isinstance(p, ev.DecisionRecorded):
            decision_contribution(out, region=env.region, tz=tz[env.region], ticket_occurred_at=p.ticket_occurred_at,
                                  strategy_id=p.strategy_id, strategy_version=p.strategy_version,
                                  outcome=p.outcome.value, failed_rule=p.failed_rule, tier=p.tier, shadow=p.shadow,
                                  amount_minor=p.amount.amount_minor if p.amount else None, reason=p.reason.value,
                                  order_minor=p.order_amount.amount_minor if p.order_amount else None)
    by_ticket: dict[str, list[CompensationRecord]] = {}
    for c in comps.values():
        if c.ticket_id is not None:
            by_ticket.setdefault(c.ticket_id, []).append(c)
            if c.ticket_id not in tickets:
                tickets[c.ticket_id] = TicketRecord(c.ticket_id, c.region)
    for tid, t in tickets.items():
        contribute(out, t, by_ticket.get(tid, []), tz)
    return out


async def stored_cells(engine) -> dict[str, dict]:  # type: ignore[type-arg,no-untyped-def]
    cells: dict[str, dict] = {}  # type: ignore[type-arg]
    async with engine.connect() as conn:
        for table in TABLES:
            keys, measures = ", ".join(table.key_names), table.measures
            sums = ", ".join(f"sum({m})::bigint" for m in measures)
            rows = await conn.execute(text(
                f"SELECT {keys}, {sums} FROM (SELECT * FROM {table.name} UNION ALL SELECT * FROM {table.name}_delta) x "
                f"GROUP BY {keys}"))
            n = len(table.key_names)
            cells[table.name] = {tuple(r[:n]): list(r[n:]) for r in rows if any(r[n:])}
    return cells


async def _reset(engine) -> None:  # type: ignore[no-untyped-def]
    names = ", ".join(["tickets", "compensations", *(t.name for t in TABLES), *(f"{t.name}_delta" for t in TABLES)])
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names}"))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6), n=st.integers(1, 25), batch=st.integers(1, 9), compact_every=st.integers(1, 4))
async def test_every_cell_equals_a_recomputation_from_the_raw_events(engine, seed, n, batch, compact_every):
    await _reset(engine)
    events = _events(seed, n)
    shuffled = events[:]
    random.Random(seed + 1).shuffle(shuffled)
    for k, i in enumerate(range(0, len(shuffled), batch)):
        await apply(engine, shuffled[i:i + batch])
        if k % compact_every == 0:
            await Compactor(type("Ctx", (), {"engine": engine})(), 1).run_once()  # type: ignore[arg-type]
    expected = recompute(events)
    stored = await stored_cells(engine)
    for table in TABLES:
        want = {k: v for k, v in expected.nonzero(table)}
        assert stored[table.name] == want, table.name
    assert_report_grains_sum_their_finer_cells(stored)


def _summed(cells: dict, coarse) -> dict:  # type: ignore[type-arg,no-untyped-def]
    out: dict = {}  # type: ignore[type-arg]
    for key, values in cells.items():
        row = out.setdefault(coarse(key), [0] * len(values))
        for i, v in enumerate(values):
            row[i] += v
    return {k: v for k, v in out.items() if any(v)}


def assert_report_grains_sum_their_finer_cells(stored: dict) -> None:  # type: ignore[type-arg]
    """The report grains (written from each batch's finer rows, not per contribution) hold exactly the sums
    of the finer cells: a region's day of tickets, a day per source of compensations, a month of amounts."""
    assert stored["ticket_day"] == _summed(stored["ticket_daily"], lambda k: (k[0], k[1]))
    assert stored["comp_day"] == _summed(stored["comp_daily"], lambda k: (k[0], k[1], k[4]))
    assert stored["amount_month"] == _summed(stored["amount_daily"],
                                             lambda k: (k[0], f"{k[1].year:04d}-{k[1].month:02d}", k[2], k[3]))


async def _apply_retrying(engine, batch) -> int:  # type: ignore[no-untyped-def]
    """What the consumer runner does with a batch that lost a race (SQLSTATE 40001 / 40P01): run it again."""
    from shared.kafka.consumer import is_transient

    for attempt in range(50):
        try:
            await apply(engine, batch)
            return attempt
        except Exception as exc:
            if not is_transient(exc):
                raise
    raise AssertionError("a batch kept losing races")


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_parallel_consumers_on_the_same_tickets_still_equal_the_recomputation(engine, seed):
    """Two consumers (as with partitions of different topics owned by different members) apply batches that
    touch the same tickets at the same time: row locks per record and retried races keep every cell exact."""
    await _reset(engine)
    events = _events(seed, 40)
    rnd = random.Random(seed)
    rnd.shuffle(events)
    first, second = events[::2], events[1::2]

    async def consumer(part):  # type: ignore[no-untyped-def]
        retries = 0
        for i in range(0, len(part), 7):
            retries += await _apply_retrying(engine, part[i:i + 7])
        return retries

    await asyncio.gather(consumer(first), consumer(second),
                         Compactor(type("Ctx", (), {"engine": engine})(), 1).run_once())  # type: ignore[arg-type]
    expected = recompute(events)
    stored = await stored_cells(engine)
    for table in TABLES:
        assert stored[table.name] == dict(expected.nonzero(table)), table.name
    assert_report_grains_sum_their_finer_cells(stored)
