"""The strategy review queue page and a strategy's scorecard page over a real database: strategies whose
verdict is review or retire with their reasons and 95% intervals, links to their scorecard, the planned
sample stated up front; same sign-in and region grants as the other dashboard pages; bad input answers a
page naming the field."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from services.insights.app import build_app
from services.insights.config import Settings
from services.insights.web.auth import STORE
from shared.web.security import hash_password
from tests.integration.insights.dashboard_support import PASSWORD, USERS, migrated

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
SG = ZoneInfo("Asia/Singapore")
AT = NOW - timedelta(days=40)
RANGE = {"region": "SG", "from": (NOW - timedelta(days=45)).astimezone(SG).date().isoformat(),
         "to": (NOW - timedelta(days=35)).astimezone(SG).date().isoformat()}
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
# strategy: (treated buyers' later order, holdout buyers' later order, issued per treated buyer); 40 each side
EXPOSED = {"sg-keep": (3_000, 500, 500), "sg-poor": (0, 0, 1_000)}


@pytest.fixture(scope="module")
async def app(fresh_database, tmp_path_factory) -> AsyncIterator[FastAPI]:
    await migrated(fresh_database)
    path = tmp_path_factory.mktemp("thresholds") / "scorecard.yaml"
    path.write_text(THRESHOLDS)
    application = build_app(Settings(database_url=fresh_database, scorecard_thresholds_file=str(path)),
                            compactor=False)
    engine = application.state.ctx.engine
    async with engine.begin() as conn:
        for name, roles, regions in USERS:
            await STORE.upsert_user(conn, name, hash_password(PASSWORD, n=2 ** 12), roles, regions)
        for sid, (treated_order, holdout_order, issued) in EXPOSED.items():
            await conn.execute(text(
                "INSERT INTO return_exposures (ticket_id, region, strategy_id, strategy_version, buyer_id, outcome, "
                "ticket_occurred_at, issued_minor, currency, event_id) "
                "SELECT :s || g || i, 'SG', :s, 1, :s || '-B-' || g || i, "
                "CASE g WHEN 't' THEN 'issued' ELSE 'holdout' END, :at, CASE g WHEN 't' THEN CAST(:issued AS bigint) "
                "END, 'SGD', :s || 'e' || g || i FROM generate_series(1, 40) AS i, unnest(ARRAY['t', 'c']) AS g"),
                {"s": sid, "at": AT, "issued": issued})
            await conn.execute(text(
                "INSERT INTO buyer_orders (order_id, buyer_id, region, amount_minor, currency, occurred_at) "
                "SELECT :s || '-O-' || g || i, :s || '-B-' || g || i, 'SG', "
                "CASE g WHEN 't' THEN CAST(:t AS bigint) ELSE CAST(:c AS bigint) END, 'SGD', :at "
                "FROM generate_series(1, 40) AS i, unnest(ARRAY['t', 'c']) AS g "
                "WHERE CASE g WHEN 't' THEN CAST(:t AS bigint) ELSE CAST(:c AS bigint) END > 0"),
                {"s": sid, "t": treated_order, "c": holdout_order, "at": AT + timedelta(days=2)})
        await conn.execute(text(
            "INSERT INTO comp_daily (region, day, reason, carrier, source, strategy, comps, amount_minor, vouchers, "
            "redeemed, timed, ttc_seconds) VALUES "
            "('SG', :d, 'late_delivery', '', 'auto', 'sg-keep', 40, 20000, 40, 30, 40, 144000), "
            "('SG', :d, 'lost_in_transit', '', 'auto', 'sg-poor', 40, 40000, 40, 4, 40, 144000), "
            "('SG', :d, 'damaged', '', 'auto', 'sg-noholdout', 7, 3500, 0, 0, 7, 700)"),
            {"d": AT.astimezone(SG).date()})
    yield application
    await engine.dispose()


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found
    return found.group(1)


@asynccontextmanager
async def signed_in(app: FastAPI, username: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                                 follow_redirects=False) as c:
        page = await c.get("/dashboard/signin")
        answer = await c.post("/dashboard/signin", data={"username": username, "password": PASSWORD,
                                                         "csrf_token": csrf(page.text), "next": "/dashboard/overview"})
        assert answer.status_code == 303, answer.text
        yield c


def rows(html: str) -> dict[str, str]:
    """The queue's rows by strategy, as the text a person reads."""
    out = {}
    for sid, body in re.findall(r'<tr data-strategy="([^"]+)"[^>]*>(.*?)</tr>', html, re.S):
        out[sid] = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip()
    return out


async def test_the_queue_lists_review_and_retire_with_reasons_intervals_and_links(app):
    async with signed_in(app, "mia") as c:  # a strategy manager of SG
        page = await c.get("/dashboard/strategies", params=RANGE)
        assert page.status_code == 200, page.text
        html = page.text
        queue = rows(html)
        assert list(queue) == ["sg-poor", "sg-noholdout"]  # retire first; the kept strategy is not in the queue
        # sg-poor: no later orders on either side, 1,000 issued per buyer: return on cost 0 (0 .. 0) < 0.25
        assert "retire" in queue["sg-poor"] and "below the retire threshold 0.25" in queue["sg-poor"]
        assert "0.00 (0.00 .. 0.00)" in queue["sg-poor"] and "400.00 SGD" in queue["sg-poor"]
        assert "+0.0% (" in queue["sg-poor"] and "40 / 40 of 30" in queue["sg-poor"]
        assert "no holdout buyers in the period: no evidence of return" in queue["sg-noholdout"]
        assert "35.00 SGD" in queue["sg-noholdout"]
        # each links to its scorecard, keeping region and period
        link = re.search(r'id="scorecard-sg-poor" href="|href="([^"]+)" id="scorecard-sg-poor"', html)
        assert link and link.group(1).startswith("/dashboard/strategies/sg-poor?region=SG&amp;from=")
        # the minimum sample and the peeking rule are stated up front
        method = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.split('id="method"')[1].split("</section>")[0]))
        assert "planned sample of 30 buyers per group" in method and "same verdict" in method
        assert 'id="nav-strategies"' in html and "Retire 1, review 1, keep 1." in html
        everything = rows((await c.get("/dashboard/strategies", params={**RANGE, "show": "all"})).text)
        assert list(everything) == ["sg-poor", "sg-noholdout", "sg-keep"]
        assert "keep" in everything["sg-keep"] and "5.00 (5.00 .. 5.00)" in everything["sg-keep"]


async def test_a_strategys_scorecard_page(app):
    async with signed_in(app, "mia") as c:
        page = await c.get("/dashboard/strategies/sg-poor", params=RANGE)
        assert page.status_code == 200, page.text
        html = re.sub(r"\s+", " ", page.text)
        assert re.search(r'id="kpi-verdict".*?retire', html)
        assert "judged on first 30 buyers per group" in html
        assert "below the retire threshold 0.25" in html and "10.0% of 40 vouchers" in html
        assert re.search(r"Planned sample \(buyers per group, stated up front\)</th><td class=\"num\">30<", html)
        unknown = await c.get("/dashboard/strategies/sg-nothing", params=RANGE)
        assert unknown.status_code == 200 and 'id="not-scored"' in unknown.text


async def test_region_grants_and_sign_in(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        answer = await c.get("/dashboard/strategies", params=RANGE, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/dashboard/signin?next=")
    async with signed_in(app, "mia") as c:  # SG only
        for path in ("/dashboard/strategies", "/dashboard/strategies/gb-late"):
            other = await c.get(path, params={**RANGE, "region": "GB"})
            assert other.status_code == 403, path
        picker = (await c.get("/dashboard/strategies", params=RANGE)).text
        assert 'id="region-GB"' not in picker
    async with signed_in(app, "fin") as c:  # ID and SG; ID has no thresholds in this file
        missing = await c.get("/dashboard/strategies", params={**RANGE, "region": "ID"})
        assert missing.status_code == 404 and "<code>region</code>" in missing.text
        assert "no scorecard thresholds for ID" in missing.text


async def test_bad_input_answers_a_page_naming_the_field(app):
    async with signed_in(app, "ops") as c:
        for path, params, status, field in (
                ("/dashboard/strategies", {**RANGE, "show": "everything"}, 422, "show"),
                ("/dashboard/strategies", {"region": "SG", "period": "2026-13"}, 422, "period"),
                ("/dashboard/strategies", {"region": "XX"}, 404, "region"),
                ("/dashboard/strategies/Not%20An%20Id", RANGE, 422, "strategy_id")):
            answer = await c.get(path, params=params)
            assert answer.status_code == status, (path, params, answer.text)
            assert any(f"<code>{p}{field}</code>" in answer.text for p in ("", "query.", "path.")), answer.text
