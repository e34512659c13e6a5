"""A strategy's return in insights, end to end (moved from auto_comp, issue 15): decision.recorded and buyer
orders over the real broker into insights' returns consumer (every order delivered twice and re-sent with a
new event id; one buyer's decision arriving after the buyer's order), then the return endpoint's numbers
against hand-computed ones; shadow and other outcomes left out; region scoping, bad dates, retention and
the query's indexes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from services.insights.app import build_app
from services.insights.config import Settings
from services.insights.returns import _TALLIES, ReturnsHandler, purge_orders
from shared import stats
from shared.auth import TokenService
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import LATEST, encode_envelope, make_envelope, validate_payload
from shared.kafka import Delivered
from tests.integration.insights.insights_support import insights_engine

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


def decision(ticket: str, buyer: str, outcome: str, at: datetime, *, issued: int | None = None,
             strategy: str = STRATEGY, region: str = "SG", shadow: bool = False) -> Envelope:
    """decision.recorded as auto_comp publishes it."""
    currency = "GBP" if region == "GB" else "SGD"
    amount = ev.PositiveMoney(amount_minor=issued or 500, currency=currency)
    extra: dict = {}
    if outcome == "issued":
        extra = {"amount": amount, "compensation_id": f"C-{ticket}", "liability": [
            ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=amount.amount_minor)]}
    elif outcome in ("holdout", "would_issue"):
        extra = {"amount": amount}
    payload = ev.DecisionRecorded(
        ticket_id=ticket, order_id=f"O-{ticket}", buyer_id=buyer, reason=ev.TicketReason.LATE_DELIVERY,
        ticket_occurred_at=at, shadow=shadow, outcome=ev.DecisionOutcome(outcome), detail="test",
        strategy_id=strategy, strategy_version=1, **extra)
    return make_envelope("decision.recorded", payload, source="auto_comp", region=region, occurred_at=NOW)


def delivered(env: Envelope) -> Delivered:
    return Delivered(env, validate_payload(env), LATEST[env.event_type].topic.value, 0, 0, None, 0)


async def scalar(engine, sql: str):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


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
    order("O-t3", "T3", 4_000, days_ago(20)),     # counts; consumed before T3's decision arrives
    order("O-t4", "T4", 9_000, days_ago(30), region="GB", currency="GBP"),  # another region
    order("O-c1", "C1", 6_000, days_ago(35)),     # counts
    order("O-c2", "C2", 3_000, days_ago(10)),     # exactly at the window's end: counts
    order("O-t5", "T5", 2_000, days_ago(5)),      # a maturing buyer's order
]
# treated (windows elapsed): T1..T4, 2 returning, 19,000 of orders, cost 4 x 500 + 300 = 2,300
# control (windows elapsed): C1..C4, 2 returning, 9,000 of orders
DECISIONS = [
    *[decision(f"D-t{i}", f"T{i}", "issued", days_ago(40), issued=500) for i in (1, 2, 4)],
    *[decision(f"D-c{i}", f"C{i}", "holdout", days_ago(40)) for i in range(1, 5)],
    decision("D-t1-again", "T1", "issued", days_ago(35), issued=300),  # a second voucher: cost only
    decision("D-t5", "T5", "issued", days_ago(10), issued=500),        # window still open
    decision("D-c5", "C5", "holdout", days_ago(5)),                    # window still open
    decision("D-t6", "T6", "issued", days_ago(125), issued=500),       # orders may be purged
    decision("D-t7", "T7", "issued", days_ago(400), issued=500),       # before the period
    decision("D-x1", "C3", "not_eligible", days_ago(40)),              # neither group
    decision("D-sh", "C4", "would_issue", days_ago(40), shadow=True, strategy=STRATEGY),  # a shadow's
    decision("D-other", "T2", "issued", days_ago(40), issued=900, strategy="sg-damaged"),
    decision("D-gb", "T4", "holdout", days_ago(40), region="GB"),      # another region
]


@pytest.fixture(scope="module")
async def service(fresh_database, kafka_bootstrap, topic_factory):
    decisions_topic, orders_topic, dummy = await topic_factory("decisions", "orders", "rollups", partitions=1)
    engine = await insights_engine(fresh_database)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        consumer_group=f"{orders_topic}-rollups", returns_consumer_group=f"{orders_topic}-returns",
                        consumer_poll_timeout_ms=20, return_min_group=3)
    app = build_app(settings, topics=[dummy], returns_topics=[decisions_topic, orders_topic], compactor=False)
    ctx = app.state.ctx
    tokens = TokenService(settings.require_token_secret(), settings.auth_token_issuer)
    # A raw producer: the wrong-currency order must reach the consumer (the service's producer refuses it).
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await ctx.start()
    await producer.start()

    async def send(topic: str, envelopes: list[Envelope]) -> None:
        for env in envelopes:
            await producer.send(topic, encode_envelope(env), key=env.payload["buyer_id"].encode())
        await producer.flush()

    try:
        await send(decisions_topic, DECISIONS + DECISIONS[:3])  # some delivered twice
        resent = [order(e.payload["order_id"], e.payload["buyer_id"], e.payload["amount"]["amount_minor"],
                        e.occurred_at, region=e.region, currency=e.payload["amount"]["currency"])
                  for e in ORDERS]
        wrong_currency = order("O-bad", "T1", 1_000, days_ago(39), currency="GBP")
        sentinel = order("O-last", "Z", 1, days_ago(1))
        await send(orders_topic, [*ORDERS, *ORDERS, *resent, wrong_currency, sentinel])
        await wait_for(engine, "SELECT count(*) FROM buyer_orders WHERE order_id = 'O-last'", 1)
        await send(decisions_topic, [decision("D-t3", "T3", "issued", days_ago(40), issued=500)])
        await wait_for(engine, "SELECT count(*) FROM return_exposures WHERE ticket_id = 'D-t3'", 1)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://insights") as client:
            yield client, tokens, engine
    finally:
        await producer.stop()
        await ctx.stop()
        await engine.dispose()


def bearer(tokens: TokenService, regions=("SG",), roles=("strategy_manager",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('someone', roles, regions)}"}


def period(start_days_ago: float, end_days_ago: float = -1) -> dict[str, str]:
    sg = ZoneInfo("Asia/Singapore")
    return {"region": "SG", "from": days_ago(start_days_ago).astimezone(sg).date().isoformat(),
            "to": days_ago(end_days_ago).astimezone(sg).date().isoformat()}


async def test_orders_and_decisions_are_stored_once_and_checked(service):
    _, _, engine = service
    assert await scalar(engine, "SELECT count(*) FROM buyer_orders") == len(ORDERS) + 1
    # issued and holdout live decisions only: not the not_eligible, not the shadow's would_issue
    assert await scalar(engine, "SELECT count(*) FROM return_exposures") == len(DECISIONS) - 2 + 1
    assert await scalar(engine, "SELECT count(*) FROM return_exposures WHERE ticket_id IN ('D-x1', 'D-sh')") == 0
    # the handler itself is idempotent by order id and ticket id, whatever the event id
    async with engine.begin() as conn:
        await ReturnsHandler()(conn, [delivered(e) for e in ORDERS[:3] + DECISIONS[:3]])
    assert await scalar(engine, "SELECT count(*) FROM buyer_orders") == len(ORDERS) + 1
    # an order in a currency its region does not use was dead-lettered, not stored
    assert await scalar(engine, "SELECT count(*) FROM buyer_orders WHERE order_id = 'O-bad'") == 0
    async with engine.connect() as conn:
        [dead] = (await conn.execute(text("SELECT consumer_group, error FROM dead_letters"))).mappings().all()
    assert dead["consumer_group"].endswith("-returns") and "currency" in dead["error"]


async def test_return_matches_hand_computed_numbers(service):
    client, tokens, _ = service
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
    ci = stats.newcombe_interval(2, 4, 2, 4)
    assert c["repeat_rate_difference"] == 0
    assert c["confidence_interval"] == {"level": 0.95, "low": ci.low, "high": ci.high,
                                        "method": "newcombe_hybrid_score"}
    # (4,750 - 2,250) per treated buyer x 4 = 10,000 of incremental orders for 2,300 issued
    assert c["incremental_value_per_buyer_minor"] == 2_500 and c["incremental_value_minor"] == 10_000
    assert c["return_on_cost_rational"] == "100/23" and c["return_on_cost"] == "4.3478"
    assert Fraction(c["return_on_cost_rational"]) == Fraction(10_000, 2_300)
    assert body["reason"] is None


async def test_a_period_of_open_windows_has_insufficient_data(service):
    client, tokens, _ = service
    r = await client.get(f"/v1/strategies/{STRATEGY}/return", params=period(12), headers=bearer(tokens))
    body = r.json()
    assert r.status_code == 200 and body["comparison"] is None and "insufficient data" in body["reason"]
    assert body["groups"]["treated"]["buyers"] == 0 and body["groups"]["treated"]["maturing_buyers"] == 1
    assert body["groups"]["control"]["maturing_buyers"] == 1


async def test_region_scope_and_bad_input(service):
    client, tokens, _ = service
    url = f"/v1/strategies/{STRATEGY}/return"
    assert (await client.get(url, params=period(130))).status_code == 401
    r = await client.get(url, params=period(130), headers=bearer(tokens, regions=("GB",)))
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    r = await client.get(url, params={"region": "XX", "from": "2026-11-01", "to": "2026-12-01"},
                         headers=bearer(tokens))
    assert r.status_code == 404 and orjson.loads(r.content)["errors"][0]["field"] == "region"
    for params in ({"region": "SG", "from": "2026-13-01", "to": "2026-12-01"},
                   {"region": "SG", "from": "2026-11-01"},
                   {"region": "SG", "from": "2026-11-01", "to": "2026-11-01"},
                   {"region": "SG", "from": "2026-11-02", "to": "2026-11-01"}):
        r = await client.get(url, params=params, headers=bearer(tokens))
        assert r.status_code == 422, params
        assert r.headers["content-type"].startswith("application/problem+json")
        assert orjson.loads(r.content)["errors"], params
    r = await client.get("/v1/strategies/Not%20An%20Id/return", params=period(130), headers=bearer(tokens))
    assert r.status_code == 422


async def test_retention_deletes_only_orders_no_window_can_reach(service):
    _, _, engine = service
    async with engine.begin() as conn:
        await ReturnsHandler()(conn, [delivered(order("O-ancient", "T6", 1_000, days_ago(121))),
                                      delivered(order("O-recent-enough", "T6", 1_000, days_ago(119)))])
    assert await purge_orders(engine, 30, 90) == 1
    async with engine.connect() as conn:
        remaining = {r[0] for r in await conn.execute(text("SELECT order_id FROM buyer_orders"))}
    assert "O-ancient" not in remaining and {"O-recent-enough", "O-t1a", "O-t2a"} <= remaining
    assert await purge_orders(engine, 30, 90) == 0


async def test_the_return_query_uses_its_indexes(service):
    """A year of a few strategies' exposures, a month asked for (analysed statistics): the query reads that
    month of one strategy by its index and each buyer's orders by the buyer index, index only."""
    _, _, engine = service
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO return_exposures (ticket_id, region, strategy_id, strategy_version, buyer_id, outcome, "
            "ticket_occurred_at, issued_minor, currency, event_id) "
            "SELECT 'P-' || i, 'SG', 'plan-' || (i % 4), 1, 'PB-' || (i % 5000), "
            "CASE WHEN i % 2 = 0 THEN 'holdout' ELSE 'issued' END, now() - make_interval(days => 31 + i % 365), "
            "CASE WHEN i % 2 = 1 THEN 500 END, 'SGD', 'P-' || i FROM generate_series(1, 40000) AS i"))
        await conn.execute(text(
            "INSERT INTO buyer_orders (order_id, buyer_id, region, amount_minor, currency, occurred_at) "
            "SELECT 'PO-x' || i, 'PB-' || (i % 5000), 'SG', 1000, 'SGD', now() - make_interval(days => i % 90) "
            "FROM generate_series(1, 60000) AS i"))
        await conn.execute(text("ANALYZE return_exposures"))
        await conn.execute(text("ANALYZE buyer_orders"))
    async with engine.connect() as conn:
        plan = "\n".join(r[0] for r in (await conn.execute(text("EXPLAIN " + _TALLIES.text), {
            "strategy": "plan-3", "region": "SG", "currency": "SGD", "start": days_ago(100), "end": days_ago(70),
            "window": timedelta(days=30), "mature_before": days_ago(30), "retained_since": days_ago(120),
            "first": None})).all())
    assert "return_exposures_strategy" in plan, plan
    assert "Index Only Scan using buyer_orders_buyer" in plan, plan
