"""The workbench and the reports against the real service: manual compensations go through the real
broker into the population and the queues; people sign in, claim, score and submit over HTTP; reports
read what they did."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI
from sqlalchemy import text

from services.audit_sampler.app import build_app
from services.audit_sampler.config import Settings
from services.audit_sampler.domain.verdicts import ATTRIBUTES, VerdictInput
from services.audit_sampler.operations import claims, verdicts
from services.audit_sampler.operations import gold as gold_items
from services.audit_sampler.persistence import workbench as queries
from services.audit_sampler.web import build_web_router
from services.audit_sampler.web.auth import DEVICE_COOKIE, SESSION_COOKIE
from services.audit_sampler.web.security import hash_password
from services.audit_sampler.web.settings import WorkbenchSettings
from shared.auth import Principal
from shared.contracts import events as ev
from shared.contracts.registry import encode_envelope, make_envelope
from shared.http import install_problem_handlers
from shared.kafka import EventProducer

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "audit_sampler" / "migrations"
PASSWORD = "correct horse battery staple"
ALL_OK = dict.fromkeys(ATTRIBUTES, True)
N_US = 60


def manual(cid: str, *, region: str = "US", currency: str = "USD", amount: int = 2000, agent: str = "agent-1",
           reason: str = "damaged") -> bytes:
    payload = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id=f"T-{cid}", order_id=f"O-{cid}", buyer_id=f"B-{cid}", seller_id="S1",
        agent_id=agent, team=f"team-{agent[-1]}", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=amount, currency=currency),
        order_amount=ev.PositiveMoney(amount_minor=50_000, currency=currency), reason_code=reason,
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S1"),
                                     amount_minor=amount)],
        evidence=[ev.EvidenceRef(kind="photo", uri=f"https://evidence.example/{cid}.jpg"),
                  ev.EvidenceRef(kind="chat_transcript", uri="javascript:alert(1)")])
    env = make_envelope("compensation.manual_issued", payload, source="test", region=region,
                        occurred_at=datetime.now(UTC))
    return encode_envelope(env)


def write_policies(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"seed": "workbench-seed-1", "baseline_rate": 0.5, "agent_weekly_minimum": 0,
            "queues": {"normal": {"sla_hours": 72, "min_risk": 0}}, "calibration_share": 0.0}
    (folder / "default.yaml").write_text(yaml.safe_dump({**base, "region": "default"}))
    (folder / "us.yaml").write_text(yaml.safe_dump({**base, "region": "US"}))
    # GB: everything sampled and every verdict double-audited, for the calibration pages
    (folder / "gb.yaml").write_text(yaml.safe_dump({**base, "region": "GB", "baseline_rate": 1.0,
                                                    "calibration_share": 1.0}))
    return str(folder)


@pytest.fixture(scope="module")
async def service(audit_database, kafka_bootstrap, topic_factory, tmp_path_factory):
    (manual_topic, corrections) = await topic_factory("manual", "corrections", partitions=2)
    settings = Settings(database_url=audit_database, kafka_bootstrap_servers=kafka_bootstrap,
                        policy_dir=write_policies(tmp_path_factory.mktemp("policies")),
                        manual_topic=manual_topic, corrections_topic=corrections,
                        consumer_group=f"wb-{manual_topic}", consumer_poll_timeout_ms=50,
                        policy_reload_seconds=0, metrics_refresh_seconds=3600)
    app = build_app(settings)
    ctx = app.state.ctx
    await ctx.start()
    try:
        producer = EventProducer(settings, "workbench-test")
        await producer.start()
        try:
            for i in range(N_US):
                # agent-2 gets quality_issue tickets: the rule the auditors below find wrong
                agent = "agent-2" if i % 3 == 0 else "agent-1"
                reason = "quality_issue" if i % 3 == 0 else "damaged"
                await producer.send(manual_topic, manual(f"us-{i}", agent=agent, reason=reason), f"B-us-{i}".encode())
            for i in range(6):
                await producer.send(manual_topic, manual(f"gb-{i}", region="GB", currency="GBP"), f"B-gb-{i}".encode())
            await producer.producer.flush()
        finally:
            await producer.stop()
        await wait_for(ctx.engine, "SELECT count(*) FROM population", N_US + 6)
        async with ctx.engine.begin() as conn:
            for name, roles, regions in (("ann", ["auditor"], ["US"]), ("bob", ["auditor"], ["US", "GB"]),
                                         ("gia", ["auditor"], ["GB"]), ("lee", ["lead"], ["US", "GB"]),
                                         ("sam", ["senior_auditor"], ["US", "GB"])):
                await queries.upsert_user(conn, name, hash_password(PASSWORD), roles, regions)
        yield app
    finally:
        await ctx.stop()


async def wait_for(engine, sql: str, expected: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with engine.connect() as conn:
            got = (await conn.execute(text(sql))).scalar()
        if got >= expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{sql}: {got} < {expected} after {timeout}s")
        await asyncio.sleep(0.2)


async def scalar(app: FastAPI, sql: str, **params):
    async with app.state.ctx.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                             follow_redirects=False)


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "page has no CSRF field"
    return found.group(1)


async def sign_in(c: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    page = await c.get("/workbench/signin")
    return await c.post("/workbench/signin", data={"username": username, "password": password,
                                                   "csrf_token": csrf(page.text), "next": "/workbench/queues"})


async def login(c: httpx.AsyncClient, username: str) -> httpx.AsyncClient:
    response = await sign_in(c, username)
    assert response.status_code == 303, response.text
    return c


def scores(**wrong: bool) -> dict[str, str]:
    return {f"attr_{name}": "no" if wrong.get(name) else "yes" for name in ATTRIBUTES}


# ------------------------------------------------------------------ sign-in, sessions, CSRF


async def test_pages_need_a_session_and_sign_in_is_checked(service):
    async with client(service) as c:
        first = await c.get("/workbench/queues?region=US")
        assert first.status_code == 303
        assert first.headers["location"] == "/workbench/signin?next=/workbench/queues%3Fregion%3DUS"
        page = await c.get("/workbench/signin")
        assert page.status_code == 200 and 'type="password"' in page.text
        forged = await c.post("/workbench/signin", data={"username": "ann", "password": PASSWORD,
                                                          "csrf_token": "forged"})
        assert forged.status_code == 403
        wrong = await sign_in(c, "ann", "not the password at all")
        assert wrong.status_code == 401 and "unknown user name or wrong password" in wrong.text
        nobody = await sign_in(c, "nobody", PASSWORD)
        assert nobody.status_code == 401 and "unknown user name or wrong password" in nobody.text
        ok = await sign_in(c, "ann")
        assert ok.status_code == 303 and ok.headers["location"] == "/workbench/queues"
        cookie = ok.headers["set-cookie"]
        assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Max-Age=28800" in cookie
        queues = await c.get("/workbench/queues")
        assert queues.status_code == 200 and "ann (auditor; US)" in queues.text
        assert queues.headers["cache-control"] == "no-store"
        metrics = (await c.get("/metrics")).text
        assert 'audit_workbench_sign_ins_total{outcome="ok"}' in metrics
        assert 'audit_workbench_sign_ins_total{outcome="failed"}' in metrics


def without_token(html: str) -> str:
    return re.sub(r'name="csrf_token" value="[^"]+"', "", html)


async def test_sign_in_pauses_by_account_and_client_and_answers_alike(service):
    """Five wrong passwords from one address pause that address for the account: the right password then
    gets the very answer a wrong one and an unknown account get. The owner elsewhere, or in the browser
    they signed in with before, is not paused by it."""
    async with service.state.ctx.engine.begin() as conn:
        await queries.upsert_user(conn, "lou", hash_password(PASSWORD), ["auditor"], ["US"])
    async with client(service) as owner:
        ok = await sign_in(owner, "lou")
        assert ok.status_code == 303
        device = next(h for h in ok.headers.get_list("set-cookie") if h.startswith(f"{DEVICE_COOKIE}="))
        assert "HttpOnly" in device and "SameSite=strict" in device and "Path=/workbench" in device
        known_browser = owner.cookies.get(DEVICE_COOKIE)
    async with client(service) as stranger:  # another browser at the same address
        answers = [await sign_in(stranger, "lou", "wrong password here") for _ in range(5)]
        paused = await sign_in(stranger, "lou")
        unknown = await sign_in(stranger, "nobody-at-all", "wrong password here")
        for answer in (*answers, paused, unknown):
            assert answer.status_code == 401
            assert without_token(answer.text) == without_token(answers[0].text)
        assert "unknown user name or wrong password" in paused.text
    other_place = httpx.AsyncClient(transport=httpx.ASGITransport(app=service, client=("10.9.8.7", 5000)),
                                    base_url="http://testserver", follow_redirects=False)
    async with other_place:
        assert (await sign_in(other_place, "lou")).status_code == 303
    async with client(service) as back_home:  # the paused address, but the browser lou signed in with
        back_home.cookies.set(DEVICE_COOKIE, known_browser or "", path="/workbench")
        assert (await sign_in(back_home, "lou")).status_code == 303
    metrics = (await client(service).get("/metrics")).text
    assert 'audit_workbench_sign_in_locks_total{scope="account_client"}' in metrics
    assert 'audit_workbench_sign_ins_total{outcome="throttled"}' in metrics


async def test_sign_out_expiry_and_disabling_end_sessions(service):
    engine = service.state.ctx.engine
    async with engine.begin() as conn:
        await queries.upsert_user(conn, "tia", hash_password(PASSWORD), ["auditor"], ["US"])
    async with client(service) as c:
        await login(c, "tia")
        page = await c.get("/workbench/me")
        assert page.status_code == 200
        no_token = await c.post("/workbench/signout", data={})
        assert no_token.status_code == 403  # CSRF checked on every POST, sign-out included
        out = await c.post("/workbench/signout", data={"csrf_token": csrf(page.text)})
        assert out.status_code == 303
    # the old cookie is still correctly signed, but its session has ended
    stale = client(service)
    stale.cookies.set(SESSION_COOKIE, c.cookies.get(SESSION_COOKIE) or "")
    async with stale:
        assert (await stale.get("/workbench/me")).status_code == 303
    async with client(service) as c2:
        await login(c2, "tia")
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE workbench_sessions SET expires_at = now() - interval '1 second' "
                                    "WHERE username = 'tia' AND ended_at IS NULL"))
        assert (await c2.get("/workbench/me")).status_code == 303
    async with client(service) as c3:
        await login(c3, "tia")
        async with engine.begin() as conn:
            await queries.disable_user(conn, "tia", datetime.now(UTC))
        assert (await c3.get("/workbench/me")).status_code == 303
        assert (await sign_in(c3, "tia")).status_code == 401


async def test_tampered_cookie_is_not_a_session(service):
    async with client(service) as c:
        c.cookies.set(SESSION_COOKIE, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJsZWUifQ.")
        assert (await c.get("/workbench/accuracy")).status_code == 303


# ------------------------------------------------------------------ the auditor's loop


async def test_auditor_claims_scores_and_submits(service):
    async with client(service) as c:
        await login(c, "ann")
        queues = await c.get("/workbench/queues?region=US")
        waiting_before = int(re.search(r'data-region="US" data-queue="normal">.*?class="num waiting">(\d+)<',
                                       queues.text, re.S).group(1))
        claim = await c.post("/workbench/claim", data={"region": "US", "csrf_token": csrf(queues.text)})
        assert claim.status_code == 303
        item_url = claim.headers["location"]
        item_id = int(item_url.rsplit("/", 1)[1])
        page = await c.get(item_url)
        assert page.status_code == 200
        assert 'id="verdict-form"' in page.text and "Compensation was warranted" in page.text
        assert '<a href="https://evidence.example/' in page.text
        assert 'href="javascript:' not in page.text  # upstream URIs other than http(s) are not links
        assert "recent audits" in page.text
        token = csrf(page.text)
        # no CSRF token: refused, nothing recorded
        assert (await c.post(f"{item_url}/verdict", data={**scores(), "currency": "USD"})).status_code == 403
        # incomplete scorecard: 422 with the fields named, the form kept
        partial = {**scores(), "csrf_token": token, "currency": "USD"}
        del partial["attr_kind_correct"]
        bad = await c.post(f"{item_url}/verdict", data=partial)
        assert bad.status_code == 422 and "attributes.kind_correct" in bad.text
        # failed without a category: the workflow's own rule, shown on the page
        no_category = await c.post(f"{item_url}/verdict", data={**scores(amount_correct=True), "csrf_token": token,
                                                                "currency": "USD", "corrected_amount": "12.50"})
        assert no_category.status_code == 422 and "error_category" in no_category.text
        # a category that contradicts the answers, and an amount typed although the amount was answered
        # right: refused, each message next to its field, the form kept as typed
        contradiction = await c.post(f"{item_url}/verdict", data={
            **scores(kind_correct=True), "csrf_token": token, "currency": "USD", "corrected_amount": "3.00",
            "error_category": "duplicate"})
        assert contradiction.status_code == 422
        assert re.search(r'data-field="error_category">duplicate means not_duplicate is no, but it was answered '
                         r'yes', contradiction.text)
        assert re.search(r'data-field="corrected_amount_minor">only when amount_correct is no', contradiction.text)
        assert 'value="3.00"' in contradiction.text and '<option value="duplicate" selected>' in contradiction.text
        all_yes = await c.post(f"{item_url}/verdict", data={**scores(), "csrf_token": token, "currency": "USD",
                                                            "error_category": "duplicate"})
        assert all_yes.status_code == 422 and "every attribute was answered yes" in all_yes.text
        assert await scalar(service, "SELECT count(*) FROM verdicts WHERE item_id = :i", i=item_id) == 0
        done = await c.post(f"{item_url}/verdict", data={
            **scores(amount_correct=True), "csrf_token": token, "currency": "USD", "corrected_amount": "12.50",
            "error_category": "wrong_amount", "note": "order total was lower"})
        assert done.status_code == 303
        assert "Verdict+recorded" in done.headers["location"] or "Verdict%20recorded" in done.headers["location"]
        verdict = (await c.get(item_url)).text
        assert 'id="verdict"' in verdict and "Failed" in verdict and "12.50 USD" in verdict
        after = await c.get("/workbench/queues?region=US")
        waiting_after = int(re.search(r'data-region="US" data-queue="normal">.*?class="num waiting">(\d+)<',
                                      after.text, re.S).group(1))
        assert waiting_after == waiting_before - 1
        me = await c.get("/workbench/me")
        assert re.search(r'id="stat-today">1<', me.text)
        row = await scalar(service, "SELECT corrected_amount_minor FROM verdicts WHERE item_id = :i", i=item_id)
        assert row == 1250
        # a second submission of the same item is a conflict, shown as a page
        again = await c.post(f"{item_url}/verdict", data={**scores(), "csrf_token": token, "currency": "USD"})
        assert again.status_code == 409


# ------------------------------------------------------------------ authorization


async def test_no_grant_for_a_region_means_403(service):
    us_item = await scalar(service, "SELECT min(id) FROM audit_items WHERE region = 'US'")
    async with client(service) as c:  # GB only
        await login(c, "gia")
        assert (await c.get("/workbench/queues?region=US")).status_code == 403
        assert (await c.get(f"/workbench/items/{us_item}")).status_code == 403
        page = await c.get("/workbench/queues")
        assert 'data-region="US"' not in page.text
        claim = await c.post("/workbench/claim", data={"region": "US", "csrf_token": csrf(page.text)})
        assert claim.status_code == 403
        assert (await c.get("/v1/reports/accuracy?region=US")).status_code == 403
    token = service.state.ctx.tokens.issue("fin", ["finance"], ["GB"])
    async with client(service) as api:
        answer = await api.get("/v1/reports/accuracy?region=US", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"][0]["field"] == "region"


async def test_auditor_cannot_do_a_leads_work(service):
    us_item = await scalar(service, "SELECT min(id) FROM audit_items WHERE region = 'US' AND status = 'queued'")
    failed = await scalar(service, "SELECT min(id) FROM verdicts WHERE region = 'US' AND NOT passed")
    async with client(service) as c:
        await login(c, "ann")
        token = csrf((await c.get("/workbench/me")).text)
        for page in ("/workbench/accuracy", "/workbench/calibration", "/workbench/disputes"):
            assert (await c.get(page)).status_code == 403, page
        assert (await c.post(f"/workbench/items/{us_item}/reassign",
                             data={"auditor_id": "bob", "csrf_token": token})).status_code == 403
        assert (await c.post(f"/workbench/verdicts/{failed}/dispute",
                             data={"reason": "unfair", "csrf_token": token})).status_code == 403
        assert (await c.get("/v1/reports/accuracy?region=US")).status_code == 403
        assert "Accuracy</a>" not in (await c.get("/workbench/me")).text
    async with client(service) as lead:
        await login(lead, "lee")
        assert (await lead.get("/workbench/accuracy?region=US")).status_code == 200
        assert (await lead.get("/workbench/disputes")).status_code == 200


async def test_supervisors_find_open_items_and_failed_verdicts(service):
    """Without a list, a lead could reassign or dispute only items whose id they already knew."""
    open_us = await scalar(service, "SELECT count(*) FROM audit_items WHERE region = 'US' "
                                    "AND status IN ('queued', 'claimed')")
    failed = await scalar(service, "SELECT min(item_id) FROM verdicts WHERE region = 'US' AND NOT passed "
                                   "AND item_kind = 'sample'")
    assert open_us > 0 and failed is not None
    async with client(service) as lead:
        await login(lead, "lee")
        page = await lead.get("/workbench/items?region=US")
        assert page.status_code == 200 and 'href="/workbench/items">Items</a>' in page.text
        table = page.text[page.text.index('id="open-items"'):page.text.index('id="failed-verdicts"')]
        assert table.count("<tr data-item=") == min(open_us, 100) and "<td>GB</td>" not in table
        assert f'<a href="/workbench/items/{failed}">{failed}</a>' in page.text
        item = await lead.get(f"/workbench/items/{failed}")
        assert "Open dispute</button>" in item.text  # the list leads to the dispute form
        assert (await lead.get("/workbench/items?region=SG")).status_code == 403
    async with client(service) as auditor:
        await login(auditor, "ann")
        assert (await auditor.get("/workbench/items")).status_code == 403


async def test_lead_disputes_and_senior_auditor_resolves(service):
    failed = await scalar(service, "SELECT min(id) FROM verdicts WHERE region = 'US' AND NOT passed "
                                   "AND status = 'final'")
    async with client(service) as lead:
        await login(lead, "lee")
        token = csrf((await lead.get("/workbench/disputes")).text)
        raised = await lead.post(f"/workbench/verdicts/{failed}/dispute",
                                 data={"reason": "the order total was right", "csrf_token": token})
        assert raised.status_code == 303
        listing = await lead.get("/workbench/disputes")
        assert "the order total was right" in listing.text and "Overturn</button>" not in listing.text
    dispute_id = await scalar(service, "SELECT id FROM disputes WHERE verdict_id = :v", v=failed)
    async with client(service) as senior:
        await login(senior, "sam")
        page = await senior.get("/workbench/disputes")
        assert "Overturn</button>" in page.text
        resolved = await senior.post(f"/workbench/disputes/{dispute_id}/resolve",
                                     data={"outcome": "overturn", "note": "agreed", "csrf_token": csrf(page.text)})
        assert resolved.status_code == 303
    assert await scalar(service, "SELECT status FROM verdicts WHERE id = :v", v=failed) == "overturned"


# ------------------------------------------------------------------ reports


async def audit_everything(app: FastAPI, region: str, auditor: str) -> None:
    """Work the region's queue dry through the workflow: quality_issue compensations were not warranted."""
    who = Principal(auditor, "token", frozenset({"auditor"}), frozenset({region}))
    engine, runtime = app.state.ctx.engine, app.state.audit_runtime
    while (item := await claims.claim_next(engine, who, region, runtime=runtime)) is not None:
        comp = item["compensation"]
        if comp["reason_code"] == "quality_issue":
            verdict = VerdictInput({**ALL_OK, "warranted": False}, False, "not_warranted")
        else:
            verdict = VerdictInput(ALL_OK, True)
        await verdicts.submit_verdict(engine, who, item["id"], verdict, runtime=runtime)


async def test_accuracy_report_matches_a_hand_computed_estimate(service):
    await audit_everything(service, "US", "bob")
    async with service.state.ctx.engine.connect() as conn:
        # The local day the compensations fell on (not today's: a run across US midnight would look at an
        # empty day).
        (today,) = (await conn.execute(text(
            "SELECT DISTINCT local_day FROM population WHERE region = 'US'"))).scalars().all()
        rows = (await conn.execute(text(
            "SELECT p.effective_probability AS p, (v.passed OR v.status = 'overturned') AS ok, "
            "CASE WHEN v.status = 'overturned' THEN 0 ELSE v.amount_minor - coalesce(v.corrected_amount_minor, "
            "v.amount_minor) END AS over FROM verdicts v JOIN population p USING (compensation_id) "
            "WHERE v.item_kind = 'sample' AND v.region = 'US'"))).all()
    weights = [1 / r.p for r in rows]
    expected = sum(w for w, r in zip(weights, rows, strict=True) if r.ok) / sum(weights)
    expected_over = N_US * sum(w * r.over for w, r in zip(weights, rows, strict=True)) / sum(weights)
    token = service.state.ctx.tokens.issue("fin", ["finance"], ["US"])
    headers = {"Authorization": f"Bearer {token}"}
    async with client(service) as api:
        answer = await api.get(f"/v1/reports/accuracy?region=US&period=day&date={today}", headers=headers)
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["population"]["compensations"] == N_US
        assert doc["population"]["audited"] == len(rows) == doc["population"]["sampled"]
        assert doc["accuracy"]["estimate"] == pytest.approx(expected, abs=1e-6)
        assert doc["accuracy"]["ci95_low"] <= expected <= doc["accuracy"]["ci95_high"]
        assert doc["misstated"]["over_compensation"]["estimate_minor"] == pytest.approx(expected_over, abs=1)
        assert doc["period"]["label"] == today.isoformat()
        agents = {r["key"]: r for r in doc["error_rates"]["agent"]}
        assert agents["agent-1"]["errors"] <= 1 < agents["agent-2"]["errors"]  # ann's one finding is on agent-1
        assert doc["root_causes"][0]["category"] == "not_warranted"
        month = (await api.get(f"/v1/reports/accuracy?region=US&period=month&date={today}",
                                headers=headers)).json()
        assert month["population"]["compensations"] == N_US
        csv_answer = await api.get(f"/v1/reports/accuracy?region=US&period=day&date={today}&format=csv",
                                   headers=headers)
        assert csv_answer.headers["content-type"].startswith("text/csv")
        assert f'filename="accuracy-US-{today}.csv"' in csv_answer.headers["content-disposition"]
        table = list(csv.DictReader(io.StringIO(csv_answer.text)))
        assert {r["section"] for r in table} >= {"accuracy", "misstated", "error_rate_by_agent",
                                                 "error_rate_by_attribute", "root_cause"}
        # nothing issued yesterday: an honest empty report, not an error
        empty = (await api.get(f"/v1/reports/accuracy?region=US&period=day&date={today - timedelta(days=1)}",
                               headers=headers)).json()
        assert empty["population"]["compensations"] == 0 and empty["accuracy"]["estimate"] is None
        assert 'audit_report_seconds_count{report="accuracy"}' in (await api.get("/metrics")).text


async def test_report_parameters_are_validated(service):
    token = service.state.ctx.tokens.issue("fin", ["finance"], ["*"])
    headers = {"Authorization": f"Bearer {token}"}
    async with client(service) as api:
        assert (await api.get("/v1/reports/accuracy?region=US")).status_code == 401
        bad = await api.get("/v1/reports/accuracy?region=XX&period=year&date=31-12-2024", headers=headers)
        assert bad.status_code == 422
        assert {e["field"] for e in bad.json()["errors"]} == {"query.period", "query.date"}
        unknown = await api.get("/v1/reports/accuracy?region=XX&date=2024-02-30", headers=headers)
        assert {e["field"] for e in unknown.json()["errors"]} == {"region", "date"}
        ancient = await api.get("/v1/reports/accuracy?region=US&date=0001-01-01", headers=headers)
        assert ancient.status_code == 422 and ancient.json()["errors"][0]["field"] == "query.date"
        fmt = await api.get("/v1/reports/accuracy?region=US&format=xml", headers=headers)
        assert fmt.status_code == 422 and fmt.json()["errors"][0]["field"] == "query.format"
        missing = await api.get("/v1/reports/calibration?region=US", headers=headers)
        assert missing.status_code == 403  # finance does not see auditor agreement
        lead = service.state.ctx.tokens.issue("lee", ["lead"], ["US"])
        no_region = await api.get("/v1/reports/calibration", headers={"Authorization": f"Bearer {lead}"})
        assert no_region.status_code == 422 and no_region.json()["errors"][0]["field"] == "query.region"


async def test_calibration_and_gold_reach_the_lead_pages(service):
    engine, runtime = service.state.ctx.engine, service.state.audit_runtime
    bob = Principal("bob", "token", frozenset({"auditor"}), frozenset({"GB"}))
    gia = Principal("gia", "token", frozenset({"auditor"}), frozenset({"GB"}))
    lee = Principal("lee", "token", frozenset({"lead"}), frozenset({"GB"}))
    comp = ev.ManualCompensationIssued(
        compensation_id="gold-1", ticket_id="T-g", order_id="O-g", buyer_id="B-g", agent_id="agent-9",
        team="team-9", kind=ev.CompensationKind.VOUCHER, amount=ev.PositiveMoney(amount_minor=500, currency="GBP"),
        reason_code="damaged", liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM),
                                                            amount_minor=500)]).model_dump(mode="json")
    await gold_items.seed_gold_item(engine, lee, gold_items.GoldItemInput("GB", comp, ALL_OK), runtime=runtime)
    # bob audits GB first (all pass, but he fails the damaged ones' evidence); gia re-audits blind
    while (item := await claims.claim_next(engine, bob, "GB", runtime=runtime)) is not None:
        strict = item["compensation"]["compensation_id"] in ("gb-0", "gb-1", "gold-1")
        verdict = (VerdictInput({**ALL_OK, "evidence_sufficient": False}, False, "missing_evidence") if strict
                   else VerdictInput(ALL_OK, True))
        await verdicts.submit_verdict(engine, bob, item["id"], verdict, runtime=runtime)
    while (item := await claims.claim_next(engine, gia, "GB", runtime=runtime)) is not None:
        await verdicts.submit_verdict(engine, gia, item["id"], VerdictInput(ALL_OK, True), runtime=runtime)
    assert await scalar(service, "SELECT count(*) FROM calibration_pairs WHERE region = 'GB'") == 6
    async with client(service) as c:
        await login(c, "lee")
        page = await c.get("/workbench/calibration?region=GB&period=week")
        assert page.status_code == 200
        assert "<svg" in page.text and "Cohen" in page.text
        assert re.search(r"<td>bob</td><td class=\"num\">6</td>", page.text)
        report = (await c.get("/v1/reports/calibration?region=GB&period=week")).json()  # session cookie works
        evidence = next(r for r in report["agreement_by_attribute"] if r["key"] == "evidence_sufficient")
        assert evidence["pairs"] == 6 and evidence["percent_agreement"] == pytest.approx(4 / 6)
        warranted = next(r for r in report["agreement_by_attribute"] if r["key"] == "warranted")
        assert warranted["kappa"] is None  # all agreed on one answer: undefined, not 1
        gold = [g for g in report["gold_accuracy"] if g["auditor_id"] == "bob"]
        assert gold[-1]["items"] == 1 and gold[-1]["accuracy"] == 0.0
        dash = await c.get("/workbench/accuracy?region=US&period=month")
        assert dash.status_code == 200 and dash.text.count("<svg") == 3
        assert "estimated accuracy" in dash.text


async def test_trusted_header_mode_signs_in_known_users_only(service):
    ctx = service.state.ctx
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(build_web_router(ctx, service.state.audit_runtime, WorkbenchSettings(trusted_header_auth=True)))
    async with client(app) as c:
        assert (await c.get("/workbench/me")).status_code == 303  # no header: sign-in page explains
        assert (await c.get("/workbench/me", headers={"X-Forwarded-User": "mallory"})).status_code == 403
        first = await c.get("/workbench/me", headers={"X-Forwarded-User": "ann"})
        assert first.status_code == 200 and SESSION_COOKIE in first.headers["set-cookie"]
        again = await c.get("/workbench/me", headers={"X-Forwarded-User": "ann"})
        assert again.status_code == 200 and "set-cookie" not in again.headers  # same session reused
        # forms still need the session's CSRF token
        assert (await c.post("/workbench/claim", data={"region": "US"},
                             headers={"X-Forwarded-User": "ann"})).status_code == 403


async def cli(database_url: str, *args: str, stdin: str = "") -> tuple[int, str, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_JSON": "false"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.audit_sampler", *args, env=env, cwd=str(MIGRATIONS.parents[2]),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_users_cli(service):
    url = str(service.state.ctx.settings.database_url)
    code, out, err = await cli(url, "users", "create", "--username", "Zoe", "--role", "auditor,lead",
                               "--regions", "US,gb", "--password-stdin", stdin="a long enough password\n")
    assert code == 0, err
    assert "created zoe: roles auditor,lead; regions GB,US" in out
    code, _, err = await cli(url, "users", "create", "--username", "zed", "--role", "root", "--regions", "XX",
                             "--no-password")
    assert code == 2 and "unknown role 'root'" in err and "unknown region 'XX'" in err
    code, out, _ = await cli(url, "users", "list")
    assert code == 0 and re.search(r"zoe\s+auditor,lead\s+GB,US\s+active", out)
    async with client(service) as c:
        assert (await sign_in(c, "zoe", "a long enough password")).status_code == 303
    code, out, _ = await cli(url, "users", "unlock", "--username", "Zoe")
    assert code == 0 and "zoe:" in out and "sign-in counters cleared" in out
    code, out, _ = await cli(url, "users", "disable", "--username", "zoe")
    assert code == 0 and "disabled zoe" in out
    async with client(service) as c:
        assert (await sign_in(c, "zoe", "a long enough password")).status_code == 401
