"""A strategy's return, measured in insights: decisions and buyer orders in, treated-vs-holdout tallies out.

Moved from auto_comp (issue 15, ADR 0020): auto_comp decides and publishes ``decision.recorded``; the
return is analytics and is computed here, from events only (insights reads no other service's tables).

- ``ReturnsHandler`` (a consumer group of its own, so a backlog of orders never delays the reports) keeps
  every live ``issued`` or ``holdout`` decision (decisions.v1) and every buyer order (buyer.orders.v1)
  compactly, idempotently by ticket id and order id. Orders are not matched to decisions on arrival:
  decisions and orders travel on different topics, so an order can be consumed before the decision it
  follows; the match happens in ``tallies`` at query time.
- ``OrderRetention`` deletes orders older than the return window plus a margin.
- ``tallies`` reads one strategy's decisions in a period and each buyer's later orders, per group and
  per window state (elapsed, still maturing, beyond the orders' retention).

The decision's time is the ticket's ``occurred_at`` (event time), not ``decided_at`` (processing time):
processing time moves with consumer lag and with a replay of tickets.v1, event time does not, and the
orders it is compared with carry their own event time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.insights import metrics
from services.insights.domain.returns import GroupTally
from shared.contracts import events as ev
from shared.kafka import Delivered, PermanentError
from shared.periodic import PeriodicTask
from shared.regions import UnknownRegion
from shared.regions import region as region_of

_INSERT = text(
    "INSERT INTO buyer_orders (order_id, buyer_id, region, amount_minor, currency, occurred_at) "
    "SELECT * FROM unnest(CAST(:o AS text[]), CAST(:b AS text[]), CAST(:r AS text[]), CAST(:a AS bigint[]), "
    "CAST(:c AS text[]), CAST(:t AS timestamptz[])) ON CONFLICT (order_id) DO NOTHING RETURNING region")


_EXPOSE = text(
    "INSERT INTO return_exposures (ticket_id, region, strategy_id, strategy_version, buyer_id, outcome, "
    "ticket_occurred_at, issued_minor, currency, event_id) "
    "SELECT * FROM unnest(CAST(:t AS text[]), CAST(:r AS text[]), CAST(:s AS text[]), CAST(:v AS int[]), "
    "CAST(:b AS text[]), CAST(:o AS text[]), CAST(:at AS timestamptz[]), CAST(:m AS bigint[]), "
    "CAST(:c AS text[]), CAST(:e AS text[])) ON CONFLICT (ticket_id) DO NOTHING RETURNING region, outcome")


def _region_currency(region: str) -> str:
    try:
        return region_of(region).currency
    except UnknownRegion:
        raise PermanentError(f"unknown region {region}") from None


class ReturnsHandler:
    """decisions.v1 + buyer.orders.v1 -> ``return_exposures`` + ``buyer_orders``: two statements per batch.

    Only live decisions with outcome ``issued`` (treated) or ``holdout`` (control) of a strategy are kept;
    shadow decisions and every other outcome are not part of a return. A re-sent order (same order id, new
    event id) or a re-delivered decision is ignored, so replays never count anything twice."""

    consumes = frozenset({"decision.recorded", "buyer.order_placed"})

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        orders: dict[str, tuple[str, str, int, str, datetime]] = {}
        exposures: dict[str, tuple[str, str, int, str, str, datetime, int | None, str, str]] = {}
        for d in events:
            p = d.payload
            if isinstance(p, ev.BuyerOrderPlaced):
                currency = _region_currency(d.envelope.region)
                if p.amount.currency != currency:
                    # Values are summed per region in its currency; another currency can never be added up.
                    raise PermanentError(f"order {p.order_id} in {p.amount.currency}, region {d.envelope.region} "
                                         f"uses {currency}")
                orders.setdefault(p.order_id, (p.buyer_id, d.envelope.region, p.amount.amount_minor, currency,
                                               d.envelope.occurred_at))
            elif isinstance(p, ev.DecisionRecorded):
                if p.shadow or p.strategy_id is None or p.strategy_version is None or p.outcome not in (
                        ev.DecisionOutcome.ISSUED, ev.DecisionOutcome.HOLDOUT):
                    continue
                currency = _region_currency(d.envelope.region)
                issued = p.amount.amount_minor if p.outcome is ev.DecisionOutcome.ISSUED and p.amount else None
                exposures.setdefault(p.ticket_id, (
                    d.envelope.region, p.strategy_id, p.strategy_version, p.buyer_id, p.outcome.value,
                    p.ticket_occurred_at, issued, currency, d.envelope.event_id))
            # other event types on these topics are not part of a return
        if orders:
            values = list(orders.values())
            result = await conn.execute(_INSERT, {
                "o": list(orders), "b": [v[0] for v in values], "r": [v[1] for v in values],
                "a": [v[2] for v in values], "c": [v[3] for v in values], "t": [v[4] for v in values]})
            for region, n in Counter(r[0] for r in result.all()).items():
                metrics.BUYER_ORDERS.labels(region).inc(n)
        if exposures:
            xs = list(exposures.values())
            result = await conn.execute(_EXPOSE, {
                "t": list(exposures), "r": [x[0] for x in xs], "s": [x[1] for x in xs], "v": [x[2] for x in xs],
                "b": [x[3] for x in xs], "o": [x[4] for x in xs], "at": [x[5] for x in xs],
                "m": [x[6] for x in xs], "c": [x[7] for x in xs], "e": [x[8] for x in xs]})
            for (region, outcome), n in Counter((r[0], r[1]) for r in result.all()).items():
                metrics.RETURN_EXPOSURES.labels(region, outcome).inc(n)


def retention_cutoff(now: datetime, window_days: int, margin_days: int) -> datetime:
    """Orders before this instant are no longer needed (nor kept)."""
    return now - timedelta(days=window_days + margin_days)


async def purge_orders(engine: AsyncEngine, window_days: int, margin_days: int, *,
                       now: datetime | None = None, batch: int = 10_000) -> int:
    """Delete orders past the retention, in bounded batches (short transactions, short locks)."""
    cutoff = retention_cutoff(now or datetime.now(UTC), window_days, margin_days)
    total = 0
    while True:
        async with engine.begin() as conn:
            deleted = (await conn.execute(text(
                "DELETE FROM buyer_orders WHERE order_id IN (SELECT order_id FROM buyer_orders "
                "WHERE occurred_at < :cutoff LIMIT :n)"), {"cutoff": cutoff, "n": batch})).rowcount
        total += deleted
        if deleted < batch:
            break
    if total:
        metrics.BUYER_ORDERS_PURGED.inc(total)
    return total


class OrderRetention(PeriodicTask):
    def __init__(self, engine: AsyncEngine, window_days: int, margin_days: int, interval: float) -> None:
        async def step() -> None:
            await purge_orders(engine, window_days, margin_days)

        super().__init__("insights-buyer-order-retention", interval, step)


@dataclass(frozen=True, slots=True)
class Tallies:
    treated: GroupTally  # windows elapsed: the numbers compared
    control: GroupTally
    maturing: dict[str, int]  # buyers per group whose window is still open
    beyond_retention: dict[str, int]  # buyers per group whose orders may already be purged


GROUPS = {"issued": "treated", "holdout": "control"}

# Per buyer: the first treated-or-holdout decision of the strategy in the period anchors the buyer's group
# and window; the cost is every amount issued to the buyer in the period. Orders are matched only for
# buyers whose window has elapsed (the CASE gates the lateral subquery), in the region and its currency.
_TALLIES = text("""
    WITH d AS (
        SELECT buyer_id, outcome, ticket_occurred_at AS at, issued_minor
        FROM return_exposures
        WHERE strategy_id = :strategy AND region = :region AND outcome IN ('issued', 'holdout')
          AND ticket_occurred_at >= :start AND ticket_occurred_at < :end
    ), b AS (
        SELECT DISTINCT ON (buyer_id) buyer_id, outcome, at,
               CASE WHEN at > :mature_before THEN 'maturing'
                    WHEN at < :retained_since THEN 'beyond_retention' ELSE 'elapsed' END AS state
        FROM d ORDER BY buyer_id, at, outcome
    ), ranked AS (
        SELECT *, row_number() OVER (PARTITION BY outcome, state ORDER BY at, buyer_id) AS k FROM b
    ), b_first AS (
        SELECT buyer_id, outcome, at, state FROM ranked WHERE CAST(:first AS bigint) IS NULL OR k <= :first
    ), c AS (
        SELECT buyer_id, sum(issued_minor) AS cost FROM d WHERE outcome = 'issued' GROUP BY buyer_id
    )
    SELECT b.outcome, b.state, count(*) AS buyers, count(*) FILTER (WHERE o.n > 0) AS returning,
           coalesce(sum(o.value), 0) AS value,
           coalesce(sum(o.value * o.value), 0) AS value_squares,
           coalesce(sum(c.cost) FILTER (WHERE b.outcome = 'issued'), 0) AS cost
    FROM b_first b
    LEFT JOIN c USING (buyer_id)
    LEFT JOIN LATERAL (
        SELECT count(*) AS n, sum(amount_minor) AS value FROM buyer_orders o
        WHERE b.state = 'elapsed' AND o.region = :region AND o.buyer_id = b.buyer_id AND o.currency = :currency
          AND o.occurred_at > b.at AND o.occurred_at <= b.at + :window
    ) o ON true
    GROUP BY b.outcome, b.state""")


async def tallies(conn: AsyncConnection, *, strategy_id: str, region: str, currency: str, start: datetime,
                  end: datetime, window_days: int, margin_days: int, now: datetime,
                  first_buyers: int | None = None) -> Tallies:
    """The two groups' tallies; with ``first_buyers``, only each group's first that many buyers (by decision
    time) of each state: the scorecard's fixed planned sample, which later buyers cannot change."""
    window = timedelta(days=window_days)
    result = await conn.execute(_TALLIES, {
        "strategy": strategy_id, "region": region, "currency": currency, "start": start, "end": end,
        "window": window, "mature_before": now - window,
        "retained_since": retention_cutoff(now, window_days, margin_days), "first": first_buyers})
    elapsed: dict[str, GroupTally] = {}
    maturing = {"treated": 0, "control": 0}
    beyond = {"treated": 0, "control": 0}
    for r in result.mappings():
        group = GROUPS[r["outcome"]]
        if r["state"] == "elapsed":
            elapsed[group] = GroupTally(int(r["buyers"]), int(r["returning"]), int(r["value"]),
                                        int(r["cost"]) if group == "treated" else 0, int(r["value_squares"]))
        elif r["state"] == "maturing":
            maturing[group] = int(r["buyers"])
        else:
            beyond[group] = int(r["buyers"])
    empty = GroupTally(0, 0, 0)
    return Tallies(elapsed.get("treated", empty), elapsed.get("control", empty), maturing, beyond)
