"""The dashboard's HTTP answers over a real database: sign-in (CSRF, wrong password, another site's cookie),
every page's numbers in the region's currency (IDR without decimals), region grants (403, picker), roles,
bad input (422/404 pages naming the field), spikes marked once the spike table exists, and the users CLI."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.insights.app import build_app
from services.insights.config import Settings
from services.insights.domain.periods import parse_period
from services.insights.web import spikes
from services.insights.web.auth import DASHBOARD
from tests.integration.insights.dashboard_support import GB_ONLY_CARRIER, PASSWORD, add_spike, migrated, seed

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
async def app(fresh_database) -> AsyncIterator[FastAPI]:
    await migrated(fresh_database)
    settings = Settings(database_url=fresh_database)
    application = build_app(settings, compactor=False)
    await seed(application.state.ctx.engine, spike=False)
    yield application
    await application.state.ctx.engine.dispose()


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                             follow_redirects=False)


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "page has no CSRF field"
    return found.group(1)


async def sign_in(c: httpx.AsyncClient, username: str, password: str = PASSWORD,
                  next_page: str = "/dashboard/overview") -> httpx.Response:
    page = await c.get("/dashboard/signin")
    return await c.post("/dashboard/signin", data={"username": username, "password": password,
                                                   "csrf_token": csrf(page.text), "next": next_page})


@asynccontextmanager
async def signed_in(app: FastAPI, username: str) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as c:
        response = await sign_in(c, username)
        assert response.status_code == 303, response.text
        yield c


def text_of(html: str, element_id: str) -> str:
    """The text inside the element with this id (tags stripped), for assertions on what a person reads."""
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</(div|section|table|p)>', html, re.S)
    assert found, f"no element #{element_id}"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1))).strip()


async def test_pages_need_a_session_and_sign_in_returns_to_the_page(app):
    async with client(app) as c:
        for path in ("/dashboard/overview?region=ID&period=2026-11", "/dashboard/root-causes", "/dashboard/budget",
                     "/dashboard"):
            answer = await c.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/dashboard/signin?next=")
        signin = await c.get("/dashboard/signin")
        assert signin.headers["content-security-policy"].startswith("default-src 'self'")
        assert signin.headers["x-frame-options"] == "DENY" and signin.headers["cache-control"] == "no-store"
        ok = await sign_in(c, "fin", next_page="/dashboard/budget?region=ID&period=2026-11")
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard/budget?region=ID&period=2026-11"
        cookies = ok.headers.get_list("set-cookie")
        session = next(h for h in cookies if h.startswith(f"{DASHBOARD.session_cookie}="))
        assert "HttpOnly" in session and "SameSite=lax" in session
        assert (await c.get("/dashboard/budget?region=ID&period=2026-11")).status_code == 200


async def test_sign_in_refuses_forged_forms_wrong_passwords_and_unknown_roles(app):
    async with client(app) as c:
        # no sign-in CSRF cookie: a forged cross-site sign-in
        forged = await c.post("/dashboard/signin", data={"username": "fin", "password": PASSWORD,
                                                         "csrf_token": "x", "next": "/dashboard/overview"})
        assert forged.status_code == 403
        wrong = await sign_in(c, "fin", "not the password")
        assert wrong.status_code == 401 and "unknown user name or wrong password" in wrong.text
        # off-site next targets are replaced by the overview (no open redirect)
        elsewhere = await sign_in(c, "fin", next_page="https://evil.example/")
        assert elsewhere.headers["location"] == "/dashboard/overview"
        # signing out needs the session's CSRF token
        assert (await c.post("/dashboard/signout", data={})).status_code == 403
        page = await c.get("/dashboard/overview?region=ID&period=2026-11")
        out = await c.post("/dashboard/signout", data={"csrf_token": csrf(page.text)})
        assert out.status_code == 303
        assert (await c.get("/dashboard/overview")).status_code == 303  # the session is over
    async with client(app) as c:
        assert (await sign_in(c, "aud")).status_code == 303  # signs in ...
        refused = await c.get("/dashboard/overview?region=ID")
        assert refused.status_code == 403 and "requires one of the roles" in refused.text  # ... sees nothing


async def test_a_workbench_or_forged_cookie_opens_nothing(app):
    tokens = app.state.ctx.tokens
    workbench_like = tokens.issue("fin", ["finance"], ["ID"], ttl_seconds=600, audience="workbench-session:abc")
    async with client(app) as c:
        for value in (workbench_like, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJmaW4ifQ."):
            c.cookies.set(DASHBOARD.session_cookie, value)
            assert (await c.get("/dashboard/overview?region=ID")).status_code == 303


async def test_overview_in_idr_without_decimals(app):
    async with signed_in(app, "fin") as c:
        page = await c.get("/dashboard/overview", params={"region": "ID", "period": "2026-11"})
        assert page.status_code == 200, page.text
        html = page.text
        assert "<script" not in html and " src=" not in html and "style=" not in html
        assert 'href="/dashboard/static/dashboard.css"' in html
        assert text_of(html, "kpi-tickets").startswith("Tickets 12")
        assert "+6 vs 2026-10" in text_of(html, "kpi-tickets")
        assert "58.3%" in text_of(html, "kpi-rate")  # 7 of 12
        assert "975,000 IDR" in text_of(html, "kpi-cost")  # 4 x 150,000 + 3 x 125,000, no decimals
        assert "+775,000 IDR vs 2026-10" in text_of(html, "kpi-cost")  # October: 2 x 100,000
        assert "81,250 IDR" in text_of(html, "kpi-cost-per-ticket")  # 975,000 / 12
        assert "42.9% / 38.5%" in text_of(html, "kpi-auto-share")
        accuracy = text_of(html, "kpi-accuracy")
        assert "95% CI" in accuracy and "2 audited of 3 sampled" in accuracy
        assert "IDR" in html and ".00 IDR" not in html
        assert html.count("<svg") == 6 and html.count('class="chart"') == 6
        # the region picker offers the granted regions only, the trend table the last six months
        assert re.findall(r'id="region-([A-Z]+)"', html) == ["SG"]
        assert text_of(html, "trend-table").count("2026-") == 6
        week = await c.get("/dashboard/overview", params={"region": "ID", "period": "2026-W46"})
        assert week.status_code == 200 and "2026-11-09 to 2026-11-15" in text_of(week.text, "period-shown")
        custom = await c.get("/dashboard/overview", params={"region": "ID", "from": "2026-11-01", "to": "2026-11-15"})
        assert custom.status_code == 200 and "Asia/Jakarta" in text_of(custom.text, "period-shown")


async def test_two_decimal_currency_and_region_grants(app):
    async with signed_in(app, "mia") as c:
        home = await c.get("/dashboard/overview")  # no region: the first granted one, this month
        assert home.status_code == 200 and "Singapore" in home.text
        nov = await c.get("/dashboard/overview", params={"region": "SG", "period": "2026-11"})
        assert "12.50 SGD" in text_of(nov.text, "kpi-cost")
        assert re.findall(r'id="region-([A-Z]+)"', nov.text) == []  # only SG: nothing else to pick
        for path in ("/dashboard/overview", "/dashboard/root-causes", "/dashboard/budget"):
            other = await c.get(path, params={"region": "GB", "period": "2026-11"})
            assert other.status_code == 403, path
            assert GB_ONLY_CARRIER not in other.text and "no grant for region GB" in other.text
        causes = await c.get("/dashboard/root-causes", params={"region": "SG", "period": "2026-11",
                                                               "dimension": "carrier"})
        assert causes.status_code == 200 and GB_ONLY_CARRIER not in causes.text
    async with signed_in(app, "ops") as c:  # every region: GB's carrier is there
        gb = await c.get("/dashboard/root-causes", params={"region": "GB", "period": "2026-11",
                                                           "dimension": "carrier"})
        assert gb.status_code == 200 and GB_ONLY_CARRIER in gb.text
        assert len(re.findall(r'id="region-([A-Z]+)"', gb.text)) >= 7


async def test_bad_input_answers_a_page_naming_the_field(app):
    async with signed_in(app, "fin") as c:
        for params, status, field in (
                ({"region": "ID", "period": "2026-13"}, 422, "period"),
                ({"region": "ID", "from": "2026-11-10", "to": "2026-11-01"}, 422, "to"),
                ({"region": "ID", "from": "2026-11-10"}, 422, "to"),
                ({"region": "ID", "period": "x" * 11}, 422, "period"),
                ({"region": "TOOLONGREGION"}, 422, "region"),
                ({"region": "XX"}, 404, "region")):
            answer = await c.get("/dashboard/overview", params=params)
            assert answer.status_code == status, (params, answer.text)
            assert f"<code>{field}</code>" in answer.text or f"query.{field}" in answer.text, answer.text
            assert answer.headers["content-security-policy"]
        dim = await c.get("/dashboard/root-causes", params={"region": "ID", "dimension": "colour"})
        assert dim.status_code == 422 and "<code>dimension</code>" in dim.text
        week = await c.get("/dashboard/budget", params={"region": "ID", "period": "2026-W46"})
        assert week.status_code == 422 and "calendar months" in week.text


async def test_root_causes_mark_spikes_once_the_spike_table_exists(app):
    engine = app.state.ctx.engine
    nov = parse_period("2026-11")
    async with engine.connect() as conn:
        assert await spikes.spike_marks(conn, "ID", nov.first, nov.last) == []  # no table yet: nothing, no error
    async with signed_in(app, "fin") as c:
        before = await c.get("/dashboard/root-causes", params={"region": "ID", "period": "2026-11"})
        assert before.status_code == 200 and "No spike alerts for reasons" in before.text
        await add_spike(engine)
        page = await c.get("/dashboard/root-causes", params={"region": "ID", "period": "2026-11"})
        html = page.text
        row = re.search(r'<tr data-key="damaged" class="spiked">(.*?)</tr>', html, re.S)
        assert row, "the damaged row is not marked"
        assert '<td class="num spike-count">1</td>' in row.group(1) and 'class="spike-mark"' in row.group(1)
        assert "2026-11-10" in text_of(html, "spikes") and "damaged" in text_of(html, "spikes")
        overview = await c.get("/dashboard/overview", params={"region": "ID", "period": "2026-11"})
        assert 'class="spike-mark"' in overview.text  # the day is flagged on the volume chart too
        strategy = await c.get("/dashboard/root-causes", params={"region": "ID", "period": "2026-11",
                                                                 "dimension": "strategy"})
        assert strategy.status_code == 200 and "late-voucher" in strategy.text
        seller = await c.get("/dashboard/root-causes", params={"region": "ID", "period": "2026-11",
                                                               "dimension": "seller"})
        assert seller.status_code == 200 and 'data-key="S1"' in seller.text
    async with engine.connect() as conn:
        marks = await spikes.spike_marks(conn, "ID", nov.first, nov.last, "reason")
    assert [(m.key, m.day, m.observed) for m in marks] == [("damaged", date(2026, 11, 10), 3)]


async def test_budget_burn_down_with_the_pace_line(app):
    async with signed_in(app, "fin") as c:
        page = await c.get("/dashboard/budget", params={"region": "ID", "period": "2026-11"})
        assert page.status_code == 200
        html = page.text
        assert "1,500,000 IDR" in text_of(html, "kpi-limit")
        assert "975,000 IDR" in text_of(html, "kpi-used") and "65.0% of the limit" in text_of(html, "kpi-used")
        assert "525,000 IDR" in text_of(html, "kpi-remaining")
        assert 'class="line pace dashed"><title>pace' in html and 'class="limit"' in html
        assert 'class="line used"' in html
        assert "limit 1.5M" in html  # the limit line's label, in major units
        empty = await c.get("/dashboard/budget", params={"region": "SG", "period": "2026-11"})
        assert empty.status_code == 200 and "no limit known" in text_of(empty.text, "kpi-limit")
        assert 'class="line pace dashed"><title>pace' not in empty.text and 'class="limit"' not in empty.text


async def cli(database_url: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_JSON": "false"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.insights", *args, env=env, cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_users_cli(app, fresh_database):
    code, out, err = await cli(fresh_database, "users", "add", "--username", "Sam", "--role", "strategy_manager",
                               "--regions", "id,sg", "--password-stdin", stdin="a long enough password\n")
    assert code == 0, err
    assert "created sam: roles strategy_manager; regions ID,SG" in out
    code, _, err = await cli(fresh_database, "users", "create", "--username", "zed", "--role", "auditor",
                             "--regions", "XX", "--no-password")
    assert code == 2 and "unknown role 'auditor' (dashboard roles:" in err and "unknown region 'XX'" in err
    code, out, _ = await cli(fresh_database, "users", "list")
    assert code == 0 and re.search(r"sam\s+strategy_manager\s+ID,SG\s+active", out)
    async with client(app) as c:
        assert (await sign_in(c, "sam", "a long enough password")).status_code == 303
    code, out, _ = await cli(fresh_database, "users", "disable", "--username", "sam")
    assert code == 0 and "disabled sam" in out
    async with client(app) as c:
        assert (await sign_in(c, "sam", "a long enough password")).status_code == 401
