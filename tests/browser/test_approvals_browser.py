"""The approval queue in a real browser (issue 14): compensation requests go through the real broker into
audit_sampler; a lead of SG approves and rejects with reasons and escalates, a senior auditor decides the
escalated one; CSRF and region grants hold (a lead of SG cannot approve a GB request, nor post without the
session's token). Headless Debian Chromium through Playwright, uvicorn on a free port."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from services.audit_sampler.app import build_app
from services.audit_sampler.config import Settings
from services.audit_sampler.persistence import workbench as queries
from services.audit_sampler.web.security import hash_password
from shared.contracts import events as ev
from shared.contracts.registry import encode_envelope, make_envelope
from shared.db import migrate
from shared.kafka import EventProducer
from tests.browser.test_workbench_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    _free_port,
    _skip_reason,
    async_playwright,
    sign_in,
)

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "services" / "audit_sampler" / "migrations"
CURRENCY = {"SG": "SGD", "GB": "GBP"}

pytestmark = [pytest.mark.browser, pytest.mark.integration]
STATE: dict[str, Any] = {}


def _request(rid: str, region: str, amount: int) -> bytes:
    now = datetime.now(UTC)
    payload = ev.CompensationRequested(
        request_id=rid, ticket_id=f"T-{rid}", order_id=f"O-{rid}", buyer_id=f"B-{rid}", agent_id="agent-3",
        team="tier1", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=amount, currency=CURRENCY[region]),
        order_amount=ev.PositiveMoney(amount_minor=9000, currency=CURRENCY[region]), reason_code="late_delivery",
        note="parcel a week late; buyer's birthday present",
        evidence=[ev.EvidenceRef(kind="tracking_scan", uri=f"https://tracking.example/{rid}")],
        case=ev.CaseSnapshot(ticket_reason=ev.TicketReason.LATE_DELIVERY, carrier_id="C-ninja",
                             promised_delivery_at=now - timedelta(days=9), delivered_at=now - timedelta(days=2),
                             tracking_status="delivered"))
    return encode_envelope(make_envelope("compensation.requested", payload, source="cs-tool", region=region,
                                         occurred_at=now))


@pytest.fixture(scope="module")
async def server(fresh_database, kafka_bootstrap, topic_factory, tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import uvicorn

    await migrate(fresh_database, "audit_sampler", MIGRATIONS)
    policies = tmp_path_factory.mktemp("policies")
    (policies / "default.yaml").write_text(yaml.safe_dump({
        "region": "default", "seed": "approvals-browser-1", "baseline_rate": 0.1}))
    limits = tmp_path_factory.mktemp("limits")
    for region in ("SG", "GB"):
        (limits / f"{region.lower()}.yaml").write_text(yaml.safe_dump({
            "region": region, "currency": CURRENCY[region], "rules": [
                {"name": "agents", "max_single": 2000, "daily_total_per_agent": 10000,
                 "buyer_window_total": 5000}]}))
    (manual_topic, requests_topic) = await topic_factory("manual", "requests", partitions=1)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        policy_dir=str(policies), limits_dir=str(limits), manual_topic=manual_topic,
                        requests_topic=requests_topic, consumer_group=f"approvals-{manual_topic}",
                        requests_consumer_group=f"approvals-{requests_topic}", policy_reload_seconds=0,
                        metrics_refresh_seconds=3600, escalation_check_seconds=3600)
    app = build_app(settings)
    ctx = app.state.ctx
    await ctx.start()
    port = _free_port()
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
                                        access_log=False))
    task = asyncio.create_task(web.serve())
    try:
        producer = EventProducer(settings, "browser-test")
        await producer.start()
        try:
            for rid, region in (("RQ-sg-1", "SG"), ("RQ-sg-2", "SG"), ("RQ-sg-3", "SG"), ("RQ-gb-1", "GB")):
                await producer.send(requests_topic, _request(rid, region, 4500), f"B-{rid}".encode())
            await producer.producer.flush()
        finally:
            await producer.stop()
        deadline = time.monotonic() + 60
        while True:
            async with ctx.engine.connect() as conn:
                if (await conn.execute(text("SELECT count(*) FROM compensation_requests "
                                            "WHERE status = 'awaiting_approval'"))).scalar() >= 4:
                    break
            assert time.monotonic() < deadline, "the requests never reached the approval queue"
            await asyncio.sleep(0.2)
        async with ctx.engine.begin() as conn:
            await queries.upsert_user(conn, "lin", hash_password(PASSWORD), ["lead"], ["SG"])
            await queries.upsert_user(conn, "sam", hash_password(PASSWORD), ["senior_auditor"], ["SG"])
            await queries.upsert_user(conn, "ada", hash_password(PASSWORD), ["auditor"], ["SG"])
        STATE.update(engine=ctx.engine, settings=settings, manual_topic=manual_topic)
        while not web.started:
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        await task
        await ctx.stop()


async def status_of(request_id: str) -> tuple[str, int | None, str | None]:
    async with STATE["engine"].connect() as conn:
        row = (await conn.execute(text("SELECT status, approved_amount_minor, decided_by FROM "
                                       "compensation_requests WHERE request_id = :r"), {"r": request_id})).one()
    return row[0], row[1], row[2]


async def test_a_lead_approves_rejects_and_escalates_with_reasons(server):
    assert async_playwright is not None
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await sign_in(page, server, "lin")
            await page.click("text=Approvals")
            await page.wait_for_url("**/workbench/approvals")
            queue = await page.inner_text("#approval-queue")
            assert "RQ-sg-1" in queue and "RQ-gb-1" not in queue  # only the lead's regions

            await page.click("a[href$='/approvals/RQ-sg-1']")
            await page.wait_for_url("**/workbench/approvals/RQ-sg-1")
            assert "late_delivery" in await page.inner_text("#case")
            assert "C-ninja" in await page.inner_text("#case")
            assert "above the single limit 2000" in await page.inner_text("#judgement")
            await page.click("#approve")  # no reason: refused, nothing recorded
            assert "reason" in await page.inner_text("#errors")
            assert (await status_of("RQ-sg-1"))[0] == "awaiting_approval"
            await page.fill("input[name=amount]", "40.00")
            await page.fill("#decision-reason", "a week late on a gift; 40 is fair")
            await page.screenshot(path=str(ARTIFACTS / "workbench-approval.png"), full_page=True)
            await page.click("#approve")
            await page.wait_for_url("**/workbench/approvals?*")
            assert "RQ-sg-1 approved" in await page.inner_text("#message")
            assert await status_of("RQ-sg-1") == ("approved", 4000, "lin")

            await page.goto(f"{server}/workbench/approvals/RQ-sg-2")
            await page.fill("#decision-reason", "the order was refunded in full already")
            await page.click("#reject")
            await page.wait_for_url("**/workbench/approvals?*")
            assert await status_of("RQ-sg-2") == ("rejected", None, "lin")

            await page.goto(f"{server}/workbench/approvals/RQ-sg-3")
            await page.fill("#escalate-reason", "third request for this buyer this month")
            await page.click("#escalate")
            await page.wait_for_url("**/workbench/approvals?*")
            assert (await status_of("RQ-sg-3"))[0] == "escalated"
            await page.goto(f"{server}/workbench/approvals/RQ-sg-3")  # leads no longer decide it
            assert await page.locator("#decision-form").count() == 0
            assert "third request" in await page.inner_text("#approval-trail")
        finally:
            await browser.close()


async def test_grants_and_csrf_hold(server):
    assert async_playwright is not None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await sign_in(page, server, "lin")
            response = await page.goto(f"{server}/workbench/approvals/RQ-gb-1")
            assert response is not None and response.status == 403  # a lead of SG cannot see a GB request
            await page.goto(f"{server}/workbench/approvals")
            token = await page.get_attribute("input[name=csrf_token]", "value")
            post = """async ([url, token]) => {
                const body = new URLSearchParams({csrf_token: token, decision: "approve", reason: "ok"});
                return (await fetch(url, {method: "POST", body})).status; }"""
            # With the session's token, approving GB is still forbidden: the grant, not the form, decides.
            assert await page.evaluate(post, [f"{server}/workbench/approvals/RQ-gb-1/decide", token]) == 403
            # Without the session's token nothing is decided, even in the lead's own region.
            assert await page.evaluate(post, [f"{server}/workbench/approvals/RQ-sg-3/decide", "forged"]) == 403
            assert (await status_of("RQ-gb-1"))[0] == "awaiting_approval"
            assert (await status_of("RQ-sg-3"))[0] == "escalated"
        finally:
            await browser.close()


async def test_a_senior_auditor_decides_the_escalated_request(server):
    assert async_playwright is not None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await sign_in(page, server, "sam")
            await page.goto(f"{server}/workbench/approvals/RQ-sg-3")
            await page.fill("#decision-reason", "buyer history checked: genuine")
            await page.click("#approve")
            await page.wait_for_url("**/workbench/approvals?*")
            assert await status_of("RQ-sg-3") == ("approved", 4500, "sam")
            assert "buyer history checked" in await page.inner_text("#recent-decisions")
        finally:
            await browser.close()


def _issued(cid: str, request_id: str, amount: int) -> bytes:
    now = datetime.now(UTC)
    payload = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id=f"T-{request_id}", order_id=f"O-{request_id}", buyer_id=f"B-{request_id}",
        agent_id="agent-3", team="tier1", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=amount, currency="SGD"), reason_code="late_delivery",
        request_id=request_id, note="issued as approved",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.CARRIER, id="C-ninja"),
                                     amount_minor=amount)])
    return encode_envelope(make_envelope("compensation.manual_issued", payload, source="cs-tool", region="SG",
                                         occurred_at=now))


async def test_the_auditor_scores_a_flagged_issue_with_the_case_and_the_trail_on_the_page(server):
    """RQ-sg-1 was approved at 40.00; the agent issued 45.00: flagged at once, an audit item with the finding,
    the case (from the request) and the approval trail on the auditor's page."""
    assert async_playwright is not None
    producer = EventProducer(STATE["settings"], "browser-test")
    await producer.start()
    try:
        await producer.send(STATE["manual_topic"], _issued("MC-sg-1", "RQ-sg-1", 4500), b"B-RQ-sg-1")
        await producer.producer.flush()
    finally:
        await producer.stop()
    deadline = time.monotonic() + 60
    while True:
        async with STATE["engine"].connect() as conn:
            if (await conn.execute(text("SELECT count(*) FROM audit_items WHERE compensation_id = 'MC-sg-1' "
                                        "AND finding IS NOT NULL"))).scalar():
                break
        assert time.monotonic() < deadline, "the issued compensation was never flagged"
        await asyncio.sleep(0.2)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await sign_in(page, server, "ada")
            await page.click("#claim-SG")
            await page.wait_for_url("**/workbench/items/*")
            assert "issued 45.00 SGD, request RQ-sg-1 approved 40.00 SGD" in await page.inner_text("#finding")
            case = await page.inner_text("#case")
            assert "late_delivery" in case and "C-ninja" in case and "UTC" in await page.inner_text("#issued-at")
            assert "90.00 SGD" in await page.inner_text("#order-amount")  # from the request's case
            assert "40.00 SGD by lin" in await page.inner_text("#approved-amount")
            assert "a week late on a gift" in await page.inner_text("#approval-trail")
            assert "Why sampled" not in await page.inner_text("main")  # still blind to sampling reasons
            await page.screenshot(path=str(ARTIFACTS / "workbench-flagged-item.png"), full_page=True)
        finally:
            await browser.close()


async def test_a_lead_opens_a_corrective_action_from_the_flagged_item(server):
    assert async_playwright is not None
    async with STATE["engine"].connect() as conn:
        item_id = (await conn.execute(text("SELECT id FROM audit_items WHERE compensation_id = 'MC-sg-1'"))).scalar()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await sign_in(page, server, "lin")
            await page.goto(f"{server}/workbench/items/{item_id}")
            await page.click("#open-corrective-action")
            await page.wait_for_url("**/workbench/actions?*")
            assert await page.input_value("input[name=target_id]") == "agent-3"  # prefilled from the item
            assert await page.input_value("input[name=source_ref]") == f"item {item_id}"
            await page.select_option("select[name=kind]", "coaching")
            await page.click("#open-action-button")  # no due date: refused, naming the field
            assert "due_on" in await page.inner_text("#errors")
            due = (datetime.now(UTC) + timedelta(days=14)).date().isoformat()
            await page.fill("input[name=due_on]", due)
            await page.click("#open-action-button")
            await page.wait_for_url("**/workbench/actions/*")
            assert "opened" in await page.inner_text("#message")
            assert "not measurable yet" in await page.inner_text("#effect-reading")
            await page.select_option("select[name=status]", "in_progress")
            await page.click("#save-action")
            await page.wait_for_url("**/workbench/actions/*")
            assert await page.inner_text("#action-status") == "in progress"
            await page.click("text=Actions")
            assert "agent-3" in await page.inner_text("#open-actions")
        finally:
            await browser.close()
