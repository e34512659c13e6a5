"""An auditor's day in a real browser: sign in, claim, score, submit, and see the queue and own stats move.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright against the real service (real broker,
real PostgreSQL, uvicorn on a free port). Leaves screenshots of the item page and the lead's gold-item form
in test-artifacts/."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

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

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
MIGRATIONS = ROOT / "services" / "audit_sampler" / "migrations"
PASSWORD = "browser test password"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.integration]
STATE: dict[str, str] = {}  # the running server's broker and corrections topic, for reading what it published

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None


def _skip_reason() -> str | None:
    if async_playwright is None:
        return "playwright is not installed (pip install playwright; it is in the test extra)"
    if not CHROMIUM.exists():
        return "no /usr/bin/chromium (apt-get install chromium)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manual(cid: str) -> bytes:
    payload = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id=f"T-{cid}", order_id=f"O-{cid}", buyer_id=f"B-{cid}", seller_id="S7",
        agent_id="agent-7", team="team-7", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=1500, currency="USD"),
        order_amount=ev.PositiveMoney(amount_minor=4000, currency="USD"), reason_code="damaged",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S7"), amount_minor=1500)],
        evidence=[ev.EvidenceRef(kind="photo", uri=f"https://evidence.example/{cid}.jpg")],
        note="buyer sent a photo of the broken lid")
    return encode_envelope(make_envelope("compensation.manual_issued", payload, source="browser-test",
                                         region="US", occurred_at=datetime.now(UTC)))


@pytest.fixture(scope="module")
async def server(fresh_database, kafka_bootstrap, topic_factory, tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import uvicorn

    await migrate(fresh_database, "audit_sampler", MIGRATIONS)
    policies = tmp_path_factory.mktemp("policies")
    base = {"seed": "browser-seed-1", "baseline_rate": 1.0, "agent_weekly_minimum": 0, "calibration_share": 0.0,
            "queues": {"normal": {"sla_hours": 72, "min_risk": 0}}}
    (policies / "default.yaml").write_text(yaml.safe_dump({**base, "region": "default"}))
    (manual_topic, corrections) = await topic_factory("manual", "corrections", partitions=1)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        policy_dir=str(policies), manual_topic=manual_topic, corrections_topic=corrections,
                        consumer_group=f"browser-{manual_topic}", policy_reload_seconds=0,
                        metrics_refresh_seconds=3600)
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
            for i in range(3):
                await producer.send(manual_topic, _manual(f"br-{i}"), f"B-br-{i}".encode())
            await producer.producer.flush()
        finally:
            await producer.stop()
        deadline = time.monotonic() + 60
        while True:
            async with ctx.engine.connect() as conn:
                if (await conn.execute(text("SELECT count(*) FROM audit_items"))).scalar() >= 3:
                    break
            assert time.monotonic() < deadline, "the manual compensations never reached the queue"
            await asyncio.sleep(0.2)
        async with ctx.engine.begin() as conn:
            await queries.upsert_user(conn, "ada", hash_password(PASSWORD), ["auditor"], ["US"])
            await queries.upsert_user(conn, "lin", hash_password(PASSWORD), ["lead"], ["US"])
            # a lead who is also a senior auditor (may raise disputes and resolve others'), and a senior auditor
            await queries.upsert_user(conn, "vic", hash_password(PASSWORD), ["lead", "senior_auditor"], ["US"])
            await queries.upsert_user(conn, "sam", hash_password(PASSWORD), ["senior_auditor"], ["US"])
        STATE.update(kafka=kafka_bootstrap, corrections=corrections)
        while not web.started:
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        await task
        await ctx.stop()


async def test_auditor_signs_in_claims_scores_and_submits(server):
    assert async_playwright is not None
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{server}/workbench/queues")
            assert "/workbench/signin" in page.url  # not signed in yet
            await page.fill("input[name=username]", "ada")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/workbench/queues")
            assert "ada (auditor; US)" in await page.inner_text("#signed-in-as")
            waiting = page.locator('tr[data-region="US"][data-queue="normal"] td.waiting')
            assert await waiting.inner_text() == "3"

            await page.click("#claim-US")
            await page.wait_for_url("**/workbench/items/*")
            assert "Score the compensation" in await page.inner_text("#scoring")
            assert "15.00 USD" in await page.inner_text("#compensation")
            assert "broken lid" in await page.inner_text("#compensation")
            for name in ("warranted", "amount_correct", "kind_correct", "liable_party_correct",
                         "policy_compliant", "not_duplicate"):
                await page.check(f"input[name=attr_{name}][value=yes]")
            await page.check("input[name=attr_evidence_sufficient][value=no]")
            await page.select_option("select[name=error_category]", "missing_evidence")
            await page.fill("textarea[name=note]", "photo shows a different item")
            await page.screenshot(path=str(ARTIFACTS / "workbench-item.png"), full_page=True)

            await page.click("#submit-verdict")
            await page.wait_for_url("**/workbench/queues?*")
            assert "Verdict recorded" in await page.inner_text("#message")
            assert await waiting.inner_text() == "2"

            await page.click("text=My stats")
            await page.wait_for_url("**/workbench/me")
            assert await page.inner_text("#stat-today") == "1"
            assert "missing_evidence" in await page.inner_text("main")
        finally:
            await browser.close()
    assert (ARTIFACTS / "workbench-item.png").stat().st_size > 10_000


async def test_lead_seeds_a_gold_item_from_the_form(server):
    assert async_playwright is not None
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{server}/workbench/signin")
            await page.fill("input[name=username]", "lin")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/workbench/queues")
            await page.click("text=Gold items")
            await page.wait_for_url("**/workbench/gold")
            for name, value in (("compensation_id", "gold-br-1"), ("ticket_id", "T-gold"), ("order_id", "O-gold"),
                                ("buyer_id", "B-gold"), ("agent_id", "agent-7"), ("team", "team-7"),
                                ("amount", "9.99"), ("reason_code", "damaged"), ("share_0_amount", "9.99")):
                await page.fill(f"input[name={name}]", value)
            await page.select_option("select[name=kind]", "voucher")
            await page.select_option("select[name=share_0_type]", "platform")
            for name in ("warranted", "amount_correct", "kind_correct", "liable_party_correct",
                         "policy_compliant", "not_duplicate"):
                await page.check(f"input[name=expect_{name}][value=yes]")
            await page.check("input[name=expect_evidence_sufficient][value=no]")
            await page.screenshot(path=str(ARTIFACTS / "workbench-gold-form.png"), full_page=True)
            await page.click("#seed-gold")
            await page.wait_for_url("**/workbench/gold?*")
            assert "seeded into US / normal" in await page.inner_text("#message")
            assert "gold-br-1" in await page.inner_text("#gold-items")
        finally:
            await browser.close()


async def test_lead_sees_unaudited_items_as_non_response_not_a_census(server):
    """The field case: one of three sampled compensations audited (and failed) showed "0.0%, 95% CI
    0.0%-0.0%" labelled census. After the auditor's verdict above, the lead's accuracy page says what is
    missing and gives an exact interval."""
    assert async_playwright is not None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{server}/workbench/signin")
            await page.fill("input[name=username]", "lin")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/workbench/queues")
            await page.goto(f"{server}/workbench/accuracy?region=US&period=day")
            estimate = await page.inner_text("#accuracy-estimate")
            assert "0.0%" in estimate and "95% CI 0.0% - 97.5%" in estimate
            assert "Clopper-Pearson" in estimate and "1 audited" in estimate and "census" not in estimate
            note = await page.inner_text("#nonresponse")
            assert "2 of 3 sampled compensations (66.7%) are not audited yet" in note
            assert "if every one passed 66.7%" in note
            await page.screenshot(path=str(ARTIFACTS / "workbench-accuracy.png"), full_page=True)
        finally:
            await browser.close()


async def sign_in(page, server: str, username: str) -> None:
    await page.goto(f"{server}/workbench/signin")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/workbench/queues")


async def published_reversal(correction_id: str) -> ev.AuditCorrectionIssued:
    """Read the corrections topic until the reversal is there (the relay publishes it after the commit)."""
    from aiokafka import AIOKafkaConsumer

    from shared.contracts.registry import decode_envelope

    consumer = AIOKafkaConsumer(STATE["corrections"], bootstrap_servers=STATE["kafka"],
                                auto_offset_reset="earliest", group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    _, payload = decode_envelope(record.value)
                    if payload.correction_id == correction_id:
                        return payload
        raise AssertionError(f"{correction_id} was never published")
    finally:
        await consumer.stop()


async def test_a_dispute_is_resolved_by_a_third_person_and_the_reversal_names_everyone(server):
    """Separation of duties in the browser: the auditor fails a compensation (money corrected); a lead who
    is also a senior auditor disputes it and is offered no way to resolve it; another senior auditor
    overturns it; the reversal sent to the ledger and the pages name all three."""
    assert async_playwright is not None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ada = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            await sign_in(ada, server, "ada")
            await ada.click("#claim-US")
            await ada.wait_for_url("**/workbench/items/*")
            item_url = ada.url
            for name in ("amount_correct", "kind_correct", "liable_party_correct", "evidence_sufficient",
                         "policy_compliant", "not_duplicate"):
                await ada.check(f"input[name=attr_{name}][value=yes]")
            await ada.check("input[name=attr_warranted][value=no]")
            await ada.select_option("select[name=error_category]", "not_warranted")
            await ada.click("#submit-verdict")
            await ada.wait_for_url("**/workbench/queues?*")
            assert "sent to the ledger" in await ada.inner_text("#message")

            vic = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            await sign_in(vic, server, "vic")
            await vic.goto(item_url)
            await vic.fill("textarea[name=reason]", "the parcel photo was in the chat")
            await vic.click("text=Open dispute")
            await vic.wait_for_url("**/workbench/disputes?*")
            row = vic.locator("#disputes tbody tr").first
            assert await row.locator(".raised-by").inner_text() == "vic"
            assert await row.locator(".verdict-by").inner_text() == "ada"
            # vic holds the senior auditor's role, yet is offered no way to resolve their own dispute
            assert await row.locator("button[value=overturn]").count() == 0
            assert "you raised this dispute" in await row.locator(".conflict").inner_text()
            await vic.screenshot(path=str(ARTIFACTS / "workbench-dispute-raised.png"), full_page=True)

            sam = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            await sign_in(sam, server, "sam")
            await sam.goto(f"{server}/workbench/disputes")
            row = sam.locator("#disputes tbody tr").first
            await row.locator("input[name=note]").fill("photo confirms the damage")
            await row.locator("button[value=overturn]").click()
            await sam.wait_for_url("**/workbench/disputes?*")
            message = await sam.inner_text("#message")
            assert "overturned. Raised by vic, verdict by ada, resolved by sam." in message
            assert "Reversal audit-correction-US-" in message and "-reversal sent to the ledger" in message
            reversal_id = message.split("Reversal ")[1].split(" ")[0]
            done = sam.locator("#disputes tbody tr").first
            assert await done.locator(".resolved-by").inner_text() == "sam (photo confirms the damage)"
            assert await done.locator(".reversal").inner_text() == reversal_id

            await sam.goto(item_url)
            dispute = await sam.inner_text("#dispute")
            assert "raised by vic" in dispute and "resolved by sam" in dispute and "verdict by ada" in dispute
            assert reversal_id in dispute
            await sam.screenshot(path=str(ARTIFACTS / "workbench-dispute-resolved.png"), full_page=True)
        finally:
            await browser.close()
    reversal = await published_reversal(reversal_id)
    assert (reversal.auditor_id, reversal.dispute_raised_by, reversal.disputed_auditor_id) == ("sam", "vic", "ada")
    assert reversal.corrects_correction_id == reversal_id.removesuffix("-reversal")
