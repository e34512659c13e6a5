"""A strategy's return end to end: buyer orders over the real broker into auto_comp's buyer-orders consumer
(every order delivered twice and re-sent with a new event id), treated and holdout decisions written
before and after their buyers' orders arrive, then the return endpoint's numbers against hand-computed
ones; region scoping, bad dates and the orders' retention."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from sqlalchemy import text

from services.auto_comp.app import build_app, build_context
from services.auto_comp.config import Settings
from services.auto_comp.domain.returns import newcombe_interval
from services.auto_comp.returns import _TALLIES, BuyerOrderHandler, purge_orders
from shared.auth import TokenService
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import make_envelope
from tests.integration.auto_comp.autocomp_support import apply, autocomp_engine, rows, scalar, write_strategies
from tests.integration.auto_comp.test_autocomp_broker import produce

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
STRATEGY = "sg-late"


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


def order(order_id: str, buyer: str, amount: int, at: datetime, *, region: str = "SG", currency: str = "SGD",
          event_id: str | None = None) -> Envelope:
    payload = ev.BuyerOrderPlaced(order_id=order_id, buyer_id=buyer,
                                  amount=ev.PositiveMoney(amount_minor=amount, currency=currency))
    return make_envelope("buyer.order_placed", payload, source="intake", region=region, occurred_at=at,
                         **({"event_id": event_id} if event_id else {}))


async def decide(engine, ticket: str, buyer: str, outcome: str, at: datetime, *, issued: int | None = None,
                 strategy: str = STRATEGY, region: str = "SG") -> None:
    """A decision row as auto_comp records it (only the columns the return reads carry meaning)."""
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO decisions (ticket_id, region, order_id, buyer_id, reason, outcome, detail, strategy_id, "
            "strategy_version, config_version, currency, issued_minor, inputs, event_id, ticket_occurred_at) "
            "VALUES (:t, :r, :o, :b, 'late_delivery', :outcome, 'test', :s, 1, 'v-test', 'SGD', :issued, "
            "CAST('{}' AS jsonb), :t, :at)"),
            {"t": ticket, "r": region, "o": f"O-{ticket}", "b": buyer, "outcome": outcome, "s": strategy,
             "issued": issued, "at": at})


async def wait_for(engine, sql: str, expected: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await scalar(engine, sql) == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sql!r} never reached {expected} (now {await scalar(engine, sql)})")


ORDERS = [
    order("O-t1a", "T1", 10_000, days_ago(39)),   # counts
    order("O-t1b", "T1", 5_000, days_ago(38)),    # counts
    order("O-t2a", "T2", 7_000, days_ago(41)),    # before T2's decision
    order("O-t2b", "T2", 8_000, days_ago(5)),     # after T2's window (decision 40 days ago)
    order("O-t3", "T3", 4_000, days_ago(20)),     # counts; consumed before T3's decision is written
    order("O-t4", "T4", 9_000, days_ago(30), region="GB", currency="GBP"),  # another region
    order("O-c1", "C1", 6_000, days_ago(35)),     # counts
    order("O-c2", "C2", 3_000, days_ago(10)),     # exactly at the window's end: counts
    order("O-t5", "T5", 2_000, days_ago(5)),      # a maturing buyer's order
]
# treated (windows elapsed): T1..T4, 2 returning, 19,000 of orders, cost 4 x 500 + 300 = 2,300
# control (windows elapsed): C1..C4, 2 returning, 9,000 of orders


@pytest.fixture(scope="module")
async def service(fresh_database, kafka_bootstrap, topic_factory, tmp_path_factory):
    tickets, results, orders = await topic_factory("tickets", "results", "orders", partitions=1)
    engine = await autocomp_engine(fresh_database)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        strategies_dir=write_strategies(tmp_path_factory.mktemp("returns-strategies")),
                        tickets_topic=tickets, grants_topic=results, buyer_orders_topic=orders,
                        consumer_group=f"{orders}-group", consumer_poll_timeout_ms=20, return_min_group=3)
    app = build_app(settings, manage_lifecycle=False)
    ctx = app.state.ctx
    tokens = TokenService(settings.require_token_secret(), settings.auth_token_issuer)
    # Decisions of every buyer but T3 exist before the orders arrive.
    for i in range(1, 5):
        if i != 3:
            await decide(engine, f"D-t{i}", f"T{i}", "issued", days_ago(40), issued=500)
        await decide(engine, f"D-c{i}", f"C{i}", "holdout", days_ago(40))
    await decide(engine, "D-t1-again", "T1", "issued", days_ago(35), issued=300)  # a second voucher: cost only
    await decide(engine, "D-t5", "T5", "issued", days_ago(10), issued=500)        # window still open
    await decide(engine, "D-c5", "C5", "holdout", days_ago(5))                   # window still open
    await decide(engine, "D-t6", "T6", "issued", days_ago(125), issued=500)       # orders may be purged
    await decide(engine, "D-t7", "T7", "issued", days_ago(400), issued=500)       # before the period
    await decide(engine, "D-x1", "C3", "not_eligible", days_ago(40))              # neither group
    await decide(engine, "D-other", "T2", "issued", days_ago(40), issued=900, strategy="sg-damaged")
    await decide(engine, "D-gb", "T4", "holdout", days_ago(40), region="GB")      # another region
    await ctx.start()
    try:
        resent = [order(e.payload["order_id"], e.payload["buyer_id"], e.payload["amount"]["amount_minor"],
                        e.occurred_at, region=e.region, currency=e.payload["amount"]["currency"])
                  for e in ORDERS]
        wrong_currency = order("O-bad", "T1", 1_000, days_ago(39), currency="GBP")
        sentinel = order("O-last", "Z", 1, days_ago(1))
        await produce(kafka_bootstrap, orders, [*ORDERS, *ORDERS, *resent, wrong_currency, sentinel])
        await wait_for(engine, "SELECT count(*) FROM buyer_orders WHERE order_id = 'O-last'", 1)
        await decide(engine, "D-t3", "T3", "issued", days_ago(40), issued=500)  # after its buyer's order
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://auto-comp") as client:
            yield client, tokens, engine, settings
    finally:
        await ctx.stop()
        await engine.dispose()


def bearer(tokens: TokenService, regions=("SG",), roles=("finance",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('someone', roles, regions)}"}


def period(start_days_ago: float, end_days_ago: float = -1) -> dict[str, str]:
    sg = ZoneInfo("Asia/Singapore")
    return {"region": "SG", "from": days_ago(start_days_ago).astimezone(sg).date().isoformat(),
            "to": days_ago(end_days_ago).astimezone(sg).date().isoformat()}


async def test_orders_are_stored_once_and_checked(service):
    _, _, engine, *_ = service
    stored = await rows(engine, "SELECT order_id FROM buyer_orders ORDER BY order_id")
    assert [r["order_id"] for r in stored] == sorted([e.payload["order_id"] for e in ORDERS] + ["O-last"])
    # the handler itself is idempotent by order id, whatever the event id
    await apply(engine, BuyerOrderHandler(), ORDERS[:3])
    assert await scalar(engine, "SELECT count(*) FROM buyer_orders") == len(ORDERS) + 1
    # an order in a currency its region does not use was dead-lettered (the contract check), not stored
    assert await scalar(engine, "SELECT count(*) FROM buyer_orders WHERE order_id = 'O-bad'") == 0
    [dead] = await rows(engine, "SELECT consumer_group, error FROM dead_letters")
    assert dead["consumer_group"].endswith("-returns") and "currency" in dead["error"]


async def test_return_matches_hand_computed_numbers(service):
    client, tokens, *_ = service
    r = await client.get(f"/v1/strategies/{STRATEGY}/return", params=period(130), headers=bearer(tokens))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["currency"] == "SGD" and body["window_days"] == 30 and body["decision_time"] == "ticket_occurred_at"
    treated, control = body["groups"]["treated"], body["groups"]["control"]
    assert treated == {
        "buyers": 4, "returning_buyers": 2, "repeat_rate": 0.5, "later_order_value_minor": 19_000,
        "later_order_value": "190.00 SGD", "later_order_value_per_buyer_minor": 4_750, "maturing_buyers": 1,
        "beyond_retention_buyers": 1, "compensation_cost_minor": 2_300, "compensation_cost": "23.00 SGD"}
    assert control == {
        "buyers": 4, "returning_buyers": 2, "repeat_rate": 0.5, "later_order_value_minor": 9_000,
        "later_order_value": "90.00 SGD", "later_order_value_per_buyer_minor": 2_250, "maturing_buyers": 1,
        "beyond_retention_buyers": 0}
    c = body["comparison"]
    low, high = newcombe_interval(2, 4, 2, 4)
    assert c["repeat_rate_difference"] == 0
    assert c["confidence_interval"] == {"level": 0.95, "low": low, "high": high, "method": "newcombe_hybrid_score"}
    # (4,750 - 2,250) per treated buyer x 4 = 10,000 of incremental orders for 2,300 issued
    assert c["incremental_value_per_buyer_minor"] == 2_500 and c["incremental_value_minor"] == 10_000
    assert c["return_on_cost_rational"] == "100/23" and c["return_on_cost"] == "4.3478"
    assert Fraction(c["return_on_cost_rational"]) == Fraction(10_000, 2_300)
    assert body["reason"] is None


async def test_replaying_the_topic_from_the_start_counts_nothing_twice(service):
    """A new consumer group (its own dedup records) reads the whole topic again: same rows, same numbers."""
    client, tokens, engine, settings = service
    before = (await client.get(f"/v1/strategies/{STRATEGY}/return", params=period(130),
                               headers=bearer(tokens))).json()
    ctx, _ = build_context(settings.model_copy(update={"consumer_group": settings.consumer_group + "-replay"}))
    [runner] = [r for r in ctx.runners if r.group_id.endswith("-replay-returns")]
    records = 3 * len(ORDERS) + 2
    await ctx.start()
    try:
        deadline = time.monotonic() + 30
        while runner.stats.processed + runner.stats.dead_lettered + runner.stats.duplicates < records:
            assert time.monotonic() < deadline, runner.stats
            await asyncio.sleep(0.1)
    finally:
        await ctx.stop()
    assert runner.stats.processed >= len(ORDERS)  # the handler saw the orders again
    assert await scalar(engine, "SELECT count(*) FROM buyer_orders") == len(ORDERS) + 1
    after = (await client.get(f"/v1/strategies/{STRATEGY}/return", params=period(130),
                              headers=bearer(tokens))).json()
    assert after == before


async def test_a_period_of_open_windows_has_insufficient_data(service):
    client, tokens, *_ = service
    r = await client.get(f"/v1/strategies/{STRATEGY}/return", params=period(12), headers=bearer(tokens))
    body = r.json()
    assert r.status_code == 200 and body["comparison"] is None and "insufficient data" in body["reason"]
    assert body["groups"]["treated"]["buyers"] == 0 and body["groups"]["treated"]["maturing_buyers"] == 1
    assert body["groups"]["control"]["maturing_buyers"] == 1


async def test_region_scope_and_bad_dates(service):
    client, tokens, *_ = service
    url = f"/v1/strategies/{STRATEGY}/return"
    assert (await client.get(url, params=period(130))).status_code == 401
    r = await client.get(url, params=period(130), headers=bearer(tokens, regions=("GB",)))
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    for params in ({"region": "SG", "from": "2026-13-01", "to": "2026-12-01"},
                   {"region": "SG", "from": "2026-11-01"},
                   {"region": "SG", "from": "2026-11-01", "to": "2026-11-01"},
                   {"region": "SG", "from": "2026-11-02", "to": "2026-11-01"},
                   {"region": "XX", "from": "2026-11-01", "to": "2026-12-01"}):
        r = await client.get(url, params=params, headers=bearer(tokens))
        assert r.status_code == 422, params
        assert r.headers["content-type"].startswith("application/problem+json")
        assert orjson.loads(r.content)["errors"], params


async def test_retention_deletes_only_orders_no_window_can_reach(service):
    _, _, engine, *_ = service
    await apply(engine, BuyerOrderHandler(), [order("O-ancient", "T6", 1_000, days_ago(121)),
                                              order("O-recent-enough", "T6", 1_000, days_ago(119))])
    assert await purge_orders(engine, 30, 90) == 1
    remaining = {r["order_id"] for r in await rows(engine, "SELECT order_id FROM buyer_orders")}
    assert "O-ancient" not in remaining and {"O-recent-enough", "O-t1a", "O-t2a"} <= remaining
    assert await purge_orders(engine, 30, 90) == 0


async def test_the_return_query_uses_its_indexes(service):
    """A year of a few strategies' decisions, a month asked for (analysed statistics): the query reads that
    month of one strategy's decisions by the partial index (not all its history by decisions_strategy)
    and each buyer's orders by the buyer index, index only."""
    _, _, engine, _ = service
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO decisions (ticket_id, region, order_id, buyer_id, reason, outcome, detail, strategy_id, "
            "strategy_version, config_version, currency, issued_minor, inputs, event_id, ticket_occurred_at) "
            "SELECT 'P-' || i, 'SG', 'PO-' || i, 'PB-' || (i % 5000), 'late_delivery', "
            "CASE WHEN i % 3 = 0 THEN 'holdout' WHEN i % 3 = 1 THEN 'issued' ELSE 'not_eligible' END, 'p', "
            "'plan-' || (i % 4), 1, 'v', 'SGD', CASE WHEN i % 3 = 1 THEN 500 END, CAST('{}' AS jsonb), 'P-' || i, "
            "now() - make_interval(days => 31 + i % 365) FROM generate_series(1, 40000) AS i"))
        await conn.execute(text(
            "INSERT INTO buyer_orders (order_id, buyer_id, region, amount_minor, currency, occurred_at) "
            "SELECT 'PO-x' || i, 'PB-' || (i % 5000), 'SG', 1000, 'SGD', now() - make_interval(days => i % 90) "
            "FROM generate_series(1, 60000) AS i"))
        await conn.execute(text("ANALYZE decisions"))
        await conn.execute(text("ANALYZE buyer_orders"))
    async with engine.connect() as conn:
        plan = "\n".join(r[0] for r in (await conn.execute(text("EXPLAIN " + _TALLIES.text), {
            "strategy": "plan-3", "region": "SG", "currency": "SGD", "start": days_ago(100), "end": days_ago(70),
            "window": timedelta(days=30), "mature_before": days_ago(30), "retained_since": days_ago(120)})).all())
    assert "decisions_strategy_return" in plan, plan
    assert "Index Only Scan using buyer_orders_buyer" in plan, plan
