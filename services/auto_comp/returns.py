"""A strategy's return, measured: buyer orders in, treated-vs-holdout tallies out.

- ``BuyerOrderHandler`` stores every buyer order (buyer.orders.v1) compactly, idempotently by order id.
  Orders are not matched to decisions on arrival: tickets and orders travel on different topics, so an
  order can be consumed before the decision it follows; the match happens in ``tallies`` at query time.
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

from services.auto_comp import metrics
from services.auto_comp.domain.returns import GroupTally
from shared.contracts import events as ev
from shared.kafka import Delivered, PermanentError
from shared.periodic import PeriodicTask
from shared.regions import UnknownRegion
from shared.regions import region as region_of

_INSERT = text(
    "INSERT INTO buyer_orders (order_id, buyer_id, region, amount_minor, currency, occurred_at) "
    "SELECT * FROM unnest(CAST(:o AS text[]), CAST(:b AS text[]), CAST(:r AS text[]), CAST(:a AS bigint[]), "
    "CAST(:c AS text[]), CAST(:t AS timestamptz[])) ON CONFLICT (order_id) DO NOTHING RETURNING region")


class BuyerOrderHandler:
    """buyer.orders.v1 -> ``buyer_orders``: one statement per batch; a re-sent order (same order id, new
    event id) is ignored, so replays never count an order twice."""

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        rows: dict[str, tuple[str, str, int, str, datetime]] = {}
        for d in events:
            p = d.payload
            if not isinstance(p, ev.BuyerOrderPlaced):
                raise PermanentError(f"{d.envelope.event_type} is not a buyer order")
            try:
                currency = region_of(d.envelope.region).currency
            except UnknownRegion:
                raise PermanentError(f"unknown region {d.envelope.region}") from None
            if p.amount.currency != currency:
                # Values are summed per region in its currency; another currency can never be added up.
                raise PermanentError(f"order {p.order_id} in {p.amount.currency}, region {d.envelope.region} "
                                     f"uses {currency}")
            rows.setdefault(p.order_id, (p.buyer_id, d.envelope.region, p.amount.amount_minor, currency,
                                         d.envelope.occurred_at))
        if not rows:
            return
        values = list(rows.values())
        result = await conn.execute(_INSERT, {
            "o": list(rows), "b": [v[0] for v in values], "r": [v[1] for v in values],
            "a": [v[2] for v in values], "c": [v[3] for v in values], "t": [v[4] for v in values]})
        for region, n in Counter(r[0] for r in result.all()).items():
            metrics.BUYER_ORDERS.labels(region).inc(n)


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

        super().__init__("buyer-order-retention", interval, step)


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
        FROM decisions
        WHERE strategy_id = :strategy AND region = :region AND outcome IN ('issued', 'holdout')
          AND ticket_occurred_at >= :start AND ticket_occurred_at < :end
    ), b AS (
        SELECT DISTINCT ON (buyer_id) buyer_id, outcome, at,
               CASE WHEN at > :mature_before THEN 'maturing'
                    WHEN at < :retained_since THEN 'beyond_retention' ELSE 'elapsed' END AS state
        FROM d ORDER BY buyer_id, at, outcome
    ), c AS (
        SELECT buyer_id, sum(issued_minor) AS cost FROM d WHERE outcome = 'issued' GROUP BY buyer_id
    )
    SELECT b.outcome, b.state, count(*) AS buyers, count(*) FILTER (WHERE o.n > 0) AS returning,
           coalesce(sum(o.value), 0) AS value, coalesce(sum(c.cost) FILTER (WHERE b.outcome = 'issued'), 0) AS cost
    FROM b
    LEFT JOIN c USING (buyer_id)
    LEFT JOIN LATERAL (
        SELECT count(*) AS n, sum(amount_minor) AS value FROM buyer_orders o
        WHERE b.state = 'elapsed' AND o.region = :region AND o.buyer_id = b.buyer_id AND o.currency = :currency
          AND o.occurred_at > b.at AND o.occurred_at <= b.at + :window
    ) o ON true
    GROUP BY b.outcome, b.state""")


async def tallies(conn: AsyncConnection, *, strategy_id: str, region: str, currency: str, start: datetime,
                  end: datetime, window_days: int, margin_days: int, now: datetime) -> Tallies:
    window = timedelta(days=window_days)
    result = await conn.execute(_TALLIES, {
        "strategy": strategy_id, "region": region, "currency": currency, "start": start, "end": end,
        "window": window, "mature_before": now - window,
        "retained_since": retention_cutoff(now, window_days, margin_days)})
    elapsed: dict[str, GroupTally] = {}
    maturing = {"treated": 0, "control": 0}
    beyond = {"treated": 0, "control": 0}
    for r in result.mappings():
        group = GROUPS[r["outcome"]]
        if r["state"] == "elapsed":
            elapsed[group] = GroupTally(int(r["buyers"]), int(r["returning"]), int(r["value"]),
                                        int(r["cost"]) if group == "treated" else 0)
        elif r["state"] == "maturing":
            maturing[group] = int(r["buyers"])
        else:
            beyond[group] = int(r["buyers"])
    empty = GroupTally(0, 0, 0)
    return Tallies(elapsed.get("treated", empty), elapsed.get("control", empty), maturing, beyond)
