"""The scorecard API and CLI on a seeded database: a strategy with a clear return is kept, one without a
holdout says "no evidence of return", the verdict filter is the review queue, CSV; region scoping and bad
input answer problem details naming the parameter; a bad thresholds file stops the start."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text

from services.insights import returns
from services.insights.__main__ import main
from services.insights.app import build_app
from services.insights.config import Settings
from services.insights.domain.scorecard import ThresholdsLoadError
from shared.auth import TokenService
from tests.integration.insights.insights_support import insights_engine

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
SG = ZoneInfo("Asia/Singapore")
AT = NOW - timedelta(days=40)
THRESHOLDS = """
regions:
  SG:
    planned_buyers_per_group: 30
    keep_min_return_on_cost: 1
    retire_below_return_on_cost: 0.25
    min_redemption_rate: null
    min_csat_after_compensation: null
    min_csat_responses: 1
    max_mean_hours_to_compensate: null
"""


def local(days: int) -> str:
    return (NOW - timedelta(days=days)).astimezone(SG).date().isoformat()


RANGE = {"from": local(45), "to": local(35)}


@pytest.fixture(scope="module")
async def seeded(fresh_database, tmp_path_factory):
    engine = await insights_engine(fresh_database)
    async with engine.begin() as conn:
        # 40 treated buyers (500 issued each) who order 3,000 again, 40 holdout buyers who order 500.
        await conn.execute(text(
            "INSERT INTO return_exposures (ticket_id, region, strategy_id, strategy_version, buyer_id, outcome, "
            "ticket_occurred_at, issued_minor, currency, event_id) "
            "SELECT 'K-' || g || i, 'SG', 'sg-keep', 1, 'KB-' || g || i, "
            "CASE g WHEN 't' THEN 'issued' ELSE 'holdout' END, :at, CASE g WHEN 't' THEN 500 END, 'SGD', 'e' || g || i "
            "FROM generate_series(1, 40) AS i, unnest(ARRAY['t', 'c']) AS g"), {"at": AT})
        await conn.execute(text(
            "INSERT INTO buyer_orders (order_id, buyer_id, region, amount_minor, currency, occurred_at) "
            "SELECT 'KO-' || g || i, 'KB-' || g || i, 'SG', CASE g WHEN 't' THEN 3000 ELSE 500 END, 'SGD', :at "
            "FROM generate_series(1, 40) AS i, unnest(ARRAY['t', 'c']) AS g"), {"at": AT + timedelta(days=2)})
        await conn.execute(text(
            "INSERT INTO comp_daily (region, day, reason, carrier, source, strategy, comps, amount_minor, vouchers, "
            "redeemed, timed, ttc_seconds) VALUES "
            "('SG', :d, 'late_delivery', '', 'auto', 'sg-keep', 40, 20000, 40, 30, 40, 144000), "
            "('SG', :d, 'damaged', '', 'auto', 'sg-noholdout', 7, 3500, 0, 0, 7, 700), "
            "('GB', :d, 'damaged', '', 'auto', 'gb-other', 3, 900, 0, 0, 0, 0)"),
            {"d": AT.astimezone(SG).date()})
    path = tmp_path_factory.mktemp("thresholds") / "scorecard.yaml"
    path.write_text(THRESHOLDS)
    settings = Settings(database_url=fresh_database, scorecard_thresholds_file=str(path))
    app = build_app(settings, compactor=False)
    tokens = TokenService(settings.require_token_secret(), settings.auth_token_issuer)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://insights") as client:
        yield client, tokens, settings
    await engine.dispose()


def bearer(tokens: TokenService, regions=("SG",), roles=("strategy_manager",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('mia', roles, regions)}"}


async def test_verdicts_with_reasons(seeded):
    client, tokens, _ = seeded
    r = await client.get("/v1/scorecard/SG", params=RANGE, headers=bearer(tokens))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["thresholds"]["planned_buyers_per_group"] == 30 and body["currency"] == "SGD"
    rows = {s["strategy_id"]: s for s in body["strategies"]}
    assert set(rows) == {"sg-keep", "sg-noholdout"}  # GB's strategy is not SG's
    keep = rows["sg-keep"]
    assert keep["verdict"] == "keep" and keep["at_planned_sample"] and keep["judged_buyers_per_group"] == 30
    assert (keep["treated_buyers"], keep["holdout_buyers"], keep["compensations"], keep["cost_minor"]) == (
        40, 40, 40, 20000)
    # (3,000 - 500) x 40 / 20,000 = 5 per unit of cost; every buyer alike, so the interval is [5, 5]
    assert keep["return_on_cost"] == 5.0 and keep["return_on_cost_ci95"] == [5.0, 5.0]
    assert keep["redemption_rate"] == 0.75 and keep["mean_hours_to_compensate"] == 1.0
    lo, hi = keep["repeat_rate_uplift_ci95"]
    assert keep["repeat_rate_uplift"] == 0.0 and lo < 0 < hi
    assert "meeting the keep threshold 1.00" in keep["reasons"][0]
    none = rows["sg-noholdout"]
    assert none["verdict"] == "review" and none["reasons"] == [
        "no holdout buyers in the period: no evidence of return"]
    # the review queue: review and retire only
    queue = (await client.get("/v1/scorecard/SG", params={**RANGE, "verdict": "review,retire"},
                              headers=bearer(tokens))).json()
    assert [s["strategy_id"] for s in queue["strategies"]] == ["sg-noholdout"]


async def test_csv(seeded):
    client, tokens, _ = seeded
    r = await client.get("/v1/scorecard/SG", params={**RANGE, "format": "csv"}, headers=bearer(tokens))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["strategy_id"], x["verdict"]) for x in rows] == [("sg-noholdout", "review"), ("sg-keep", "keep")]
    assert rows[1]["return_on_cost_ci95"] == "5.0000 .. 5.0000"


async def test_region_scoping_and_bad_input(seeded):
    client, tokens, _ = seeded
    assert (await client.get("/v1/scorecard/SG", params=RANGE)).status_code == 401
    r = await client.get("/v1/scorecard/SG", params=RANGE, headers=bearer(tokens, regions=("GB",)))
    assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
    # GB is granted but has no thresholds in this file: 404 naming the region
    r = await client.get("/v1/scorecard/GB", params=RANGE, headers=bearer(tokens, regions=("GB",)))
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "region"
    for params, field in (({"period": "2026-13"}, "period"), ({**RANGE, "format": "xml"}, "format"),
                          ({**RANGE, "verdict": "maybe"}, "verdict"), ({**RANGE, "verdict": ""}, "verdict")):
        r = await client.get("/v1/scorecard/SG", params=params, headers=bearer(tokens))
        assert r.status_code == 422, params
        assert r.json()["errors"][0]["field"] == field, r.json()
    assert (await client.get("/v1/scorecard/XX", params=RANGE, headers=bearer(tokens))).status_code == 404


async def test_cli_writes_the_scorecard(seeded, tmp_path, monkeypatch):
    _, _, settings = seeded
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("INSIGHTS_SCORECARD_THRESHOLDS_FILE", settings.scorecard_thresholds_file)
    out = tmp_path / "card.csv"
    code = await asyncio.to_thread(main, ["scorecard", "--region", "SG", "--from", RANGE["from"], "--to",
                                          RANGE["to"], "--format", "csv", "-o", str(out)])
    assert code == 0 and "sg-keep,keep" in out.read_text()
    assert await asyncio.to_thread(main, ["scorecard", "--region", "XX", "--period", "2026-11"]) == 2


def test_a_bad_thresholds_file_stops_the_start(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("regions: {SG: {planned_buyers_per_group: 5}}")
    with pytest.raises(ThresholdsLoadError) as exc:
        build_app(Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x", scorecard_thresholds_file=str(path)))
    assert any(e.field == "planned_buyers_per_group" for e in exc.value.errors)


async def test_the_planned_sample_is_each_groups_first_buyers(seeded):
    """tallies(first_buyers=30) counts each group's first 30 buyers by decision time: what the verdict is
    judged on, whoever comes later."""
    _, _, settings = seeded
    engine = await insights_engine(settings.database_url)
    start = datetime.combine(datetime.fromisoformat(RANGE["from"]).date(), datetime.min.time(), SG)
    end = datetime.combine(datetime.fromisoformat(RANGE["to"]).date(), datetime.min.time(), SG) + timedelta(days=1)
    try:
        async with engine.connect() as conn:
            every = await returns.tallies(conn, strategy_id="sg-keep", region="SG", currency="SGD", start=start,
                                          end=end, window_days=30, margin_days=90, now=NOW)
            first = await returns.tallies(conn, strategy_id="sg-keep", region="SG", currency="SGD", start=start,
                                          end=end, window_days=30, margin_days=90, now=NOW, first_buyers=30)
    finally:
        await engine.dispose()
    assert (every.treated.buyers, every.control.buyers, every.treated.cost_minor) == (40, 40, 20_000)
    assert (first.treated.buyers, first.control.buyers, first.treated.cost_minor) == (30, 30, 15_000)
    assert (first.treated.value_minor, first.control.value_minor) == (90_000, 15_000)
