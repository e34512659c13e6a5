"""The lead's gold-item form in the workbench (real PostgreSQL, through the service's web router): a good
submission seeds the item through the same workflow as ``POST /v1/gold-items``; bad input is shown field
by field and writes nothing; another region's item is refused; every post needs the session's CSRF
token."""

from __future__ import annotations

import re

import httpx
import pytest
import yaml
from sqlalchemy import text

from services.audit_sampler.app import build_app
from services.audit_sampler.config import Settings
from services.audit_sampler.domain.verdicts import ATTRIBUTES
from services.audit_sampler.persistence import workbench as queries
from services.audit_sampler.web.security import hash_password

pytestmark = pytest.mark.integration

PASSWORD = "gold form password 1"


@pytest.fixture(scope="module")
async def app(audit_database, tmp_path_factory):

    folder = tmp_path_factory.mktemp("policies")
    base = {"seed": "gold-form-seed-1", "baseline_rate": 1.0, "agent_weekly_minimum": 0,
            "queues": {"urgent": {"sla_hours": 8, "min_risk": 3}, "normal": {"sla_hours": 72, "min_risk": 0}}}
    (folder / "default.yaml").write_text(yaml.safe_dump({**base, "region": "default"}))
    built = build_app(Settings(database_url=audit_database, policy_dir=str(folder)))
    ctx = built.state.ctx
    # Pages use the engine only: the broker and consumers are not needed to serve them.
    async with ctx.engine.begin() as conn:
        for name, roles, regions in (("lee", ["lead"], ["US", "GB"]), ("ann", ["auditor"], ["US"])):
            await queries.upsert_user(conn, name, hash_password(PASSWORD), roles, regions)
    yield built
    await ctx.engine.dispose()


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                             follow_redirects=False)


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "page has no CSRF field"
    return found.group(1)


async def login(c: httpx.AsyncClient, username: str) -> None:
    page = await c.get("/workbench/signin")
    r = await c.post("/workbench/signin", data={"username": username, "password": PASSWORD,
                                               "csrf_token": csrf(page.text), "next": "/workbench/queues"})
    assert r.status_code == 303, r.text


async def gold_rows(app) -> list[dict]:
    async with app.state.ctx.engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT id, region, queue, compensation_id, compensation, gold_expected, created_by, status "
            "FROM audit_items WHERE item_kind = 'gold' ORDER BY id"))
        return [dict(r._mapping) for r in rows]


def good_form(token: str, **changes: str) -> dict[str, str]:
    form = {
        "csrf_token": token, "region": "US", "queue": "urgent", "compensation_id": "gold-form-1",
        "ticket_id": "T-g1", "order_id": "O-g1", "buyer_id": "B-g1", "seller_id": "S-9", "agent_id": "agent-4",
        "team": "team-4", "kind": "voucher", "amount": "12.50", "order_amount": "80", "reason_code": "damaged",
        "voucher_code": "V-G1", "valid_until": "2031-01-31T23:59",
        "share_0_type": "seller", "share_0_id": "S-9", "share_0_amount": "10.00",
        "share_1_type": "platform", "share_1_amount": "2.50",
        "evidence_0_kind": "photo", "evidence_0_uri": "https://evidence.example/g1.jpg",
        "note": "photo shows an intact item",
        **{f"expect_{name}": "yes" for name in ATTRIBUTES}, "expect_warranted": "no"}
    form.update(changes)
    return form


async def test_a_good_submission_seeds_the_item_in_the_queue(app):
    async with client(app) as c:
        await login(c, "lee")
        page = await c.get("/workbench/gold")
        assert page.status_code == 200 and 'id="gold-form"' in page.text
        assert 'href="/workbench/gold">Gold items</a>' in page.text  # leads get the page in the menu
        done = await c.post("/workbench/gold", data=good_form(csrf(page.text)))
        assert done.status_code == 303, done.text
        assert done.headers["location"].startswith("/workbench/gold?region=US&message=Gold+item+")
        rows = await gold_rows(app)
        assert len(rows) == 1
        row = rows[0]
        assert (row["region"], row["queue"], row["compensation_id"], row["created_by"], row["status"]) == (
            "US", "urgent", "gold-form-1", "lee", "queued")
        comp = row["compensation"]
        assert comp["amount"] == {"amount_minor": 1250, "currency": "USD"}  # typed in dollars, stored in cents
        assert comp["order_amount"] == {"amount_minor": 8000, "currency": "USD"}
        assert comp["liability"] == [{"party": {"type": "seller", "id": "S-9"}, "amount_minor": 1000},
                                     {"party": {"type": "platform", "id": None}, "amount_minor": 250}]
        assert comp["valid_until"] == "2031-02-01T04:59:00Z"  # New York local time
        assert comp["evidence"] == [{"kind": "photo", "uri": "https://evidence.example/g1.jpg"}]
        assert row["gold_expected"] == {**dict.fromkeys(ATTRIBUTES, True), "warranted": False}
        listing = await c.get(done.headers["location"])
        assert f"Gold item {row['id']} seeded into US / urgent." in listing.text
        assert f'<a href="/workbench/items/{row["id"]}">{row["id"]}</a>' in listing.text
    # an auditor claims it from that queue like any other item, blind to the answer
    async with client(app) as c:
        await login(c, "ann")
        queues = await c.get("/workbench/queues")
        assert 'href="/workbench/gold"' not in queues.text
        claim = await c.post("/workbench/claim", data={"region": "US", "queue": "urgent",
                                                       "csrf_token": csrf(queues.text)})
        assert claim.headers["location"] == f"/workbench/items/{row['id']}"
        item = await c.get(claim.headers["location"])
        assert "gold-form-1" in item.text and "gold" not in item.text.lower().replace("gold-form-1", "")


async def test_bad_input_is_shown_by_field_and_writes_nothing(app):
    before = await gold_rows(app)
    async with client(app) as c:
        await login(c, "lee")
        token = csrf((await c.get("/workbench/gold")).text)
        form = good_form(token, compensation_id="gold-form-bad", amount="12.5.0", ticket_id="", queue="nope",
                         share_1_type="", share_1_amount="", share_2_type="carrier", share_2_amount="2,50",
                         evidence_0_uri="")
        del form["expect_not_duplicate"]
        bad = await c.post("/workbench/gold", data=form)
        assert bad.status_code == 422
        html = bad.text
        assert 'id="errors"' in html and "The gold item was not seeded" in html
        for field in ("compensation.amount", "compensation.ticket_id", "queue", "expected.not_duplicate",
                      "compensation.liability.2.amount_minor", "compensation.evidence.0.uri"):
            assert f"<code>{field}</code>" in html, field
        # each message sits next to its own input; the liability row is the one the lead filled in (row 2)
        share_2 = html[html.index('id="share-2"'):html.index('id="share-2"') + 1200]
        assert 'class="field-error"' in share_2 and "write it like 12.50" in share_2
        assert 'class="field-error"' not in html[html.index('id="share-1"'):html.index('id="share-2"')]
        amount = html[html.index('name="amount"'):html.index('name="order_amount"')]
        assert "write it like 12.50" in amount
        # what the lead typed stays in the form
        assert 'value="gold-form-bad"' in html and 'value="12.5.0"' in html
        # readable, but the workflow's rules refuse it: the shares do not add up to the amount
        short = await c.post("/workbench/gold", data=good_form(token, compensation_id="gold-form-short",
                                                               share_1_amount="1.00"))
        assert short.status_code == 422 and "must sum exactly to the amount" in short.text
        # a region outside the catalogue is a field error, not a crash
        nowhere = await c.post("/workbench/gold", data=good_form(token, region="XX"))
        assert nowhere.status_code == 422 and "<code>region</code>" in nowhere.text
        # a NUL in free text is refused by name before anything is written (issue 11: accepted means stored)
        nul = await c.post("/workbench/gold", data=good_form(token, compensation_id="gold-form-nul",
                                                             note="late\x00parcel"))
        assert nul.status_code == 422 and "<code>note</code>" in nul.text and "NUL" in nul.text
    assert await gold_rows(app) == before


async def test_other_regions_and_other_roles_are_refused(app):
    before = await gold_rows(app)
    async with client(app) as c:
        await login(c, "lee")  # US and GB only
        token = csrf((await c.get("/workbench/gold")).text)
        sg = await c.post("/workbench/gold", data=good_form(token, region="SG", compensation_id="gold-sg",
                                                            queue=""))
        assert sg.status_code == 403
        # even a form that is wrong in other ways says nothing but "not your region"
        sg_bad = await c.post("/workbench/gold", data=good_form(token, region="SG", amount="lots"))
        assert sg_bad.status_code == 403 and "lots" not in sg_bad.text
        page = await c.get("/workbench/gold")
        assert '<option value="SG"' not in page.text and '<option value="GB"' in page.text
    async with client(app) as c:
        await login(c, "ann")  # an auditor: no gold seeding
        assert (await c.get("/workbench/gold")).status_code == 403
        token = csrf((await c.get("/workbench/me")).text)
        assert (await c.post("/workbench/gold", data=good_form(token, compensation_id="gold-ann"))).status_code == 403
    assert await gold_rows(app) == before


async def test_posts_without_the_sessions_csrf_token_are_refused(app):
    before = await gold_rows(app)
    async with client(app) as c:
        await login(c, "lee")
        page = await c.get("/workbench/gold")
        missing = good_form("", compensation_id="gold-no-csrf")
        del missing["csrf_token"]
        assert (await c.post("/workbench/gold", data=missing)).status_code == 403
        forged = await c.post("/workbench/gold", data=good_form("forged-token", compensation_id="gold-forged"))
        assert forged.status_code == 403
        assert csrf(page.text) != "forged-token"
    async with client(app) as stranger:  # no session at all: off to the sign-in page
        r = await stranger.post("/workbench/gold", data=good_form("x"))
        assert r.status_code == 303 and r.headers["location"].startswith("/workbench/signin")
    assert await gold_rows(app) == before
