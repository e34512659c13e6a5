"""The ops dashboard in a real browser: a finance user signs in, reads the overview in IDR (no decimals),
switches to an ISO week, opens root causes with a spike marked and the budget burn-down; a strategy manager
granted SG only is refused GB. Debian's Chromium through Playwright against insights served by uvicorn over
a real PostgreSQL. Screenshots go to test-artifacts/ (not committed)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from services.insights.app import build_app
from services.insights.config import Settings
from tests.integration.insights.dashboard_support import PASSWORD, migrated, seed

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.integration]

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


@pytest.fixture(scope="module")
async def server(fresh_database):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import uvicorn

    await migrated(fresh_database)
    app = build_app(Settings(database_url=fresh_database), compactor=False)
    engine = app.state.ctx.engine
    await seed(engine)
    port = _free_port()
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
                                        access_log=False))
    task = asyncio.create_task(web.serve())
    try:
        while not web.started:
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        await task
        await engine.dispose()


async def _browser(pw):  # type: ignore[no-untyped-def]
    return await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


async def _sign_in(page, server: str, username: str, target: str) -> None:  # type: ignore[no-untyped-def]
    await page.goto(f"{server}{target}")
    assert "/dashboard/signin" in page.url  # not signed in yet: the sign-in page, coming back afterwards
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"**{target}")


async def test_finance_reads_overview_root_causes_and_budget_in_idr(server):
    assert async_playwright is not None
    ARTIFACTS.mkdir(exist_ok=True)
    requests: list[str] = []
    async with async_playwright() as pw:
        browser = await _browser(pw)
        try:
            page = await browser.new_page(viewport={"width": 1360, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            await page.goto(f"{server}/dashboard/signin")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-signin.png"))
            await _sign_in(page, server, "fin", "/dashboard/overview?region=ID&period=2026-11")
            assert "fin (finance; ID, SG)" in await page.inner_text("#signed-in-as")
            assert "975,000 IDR" in await page.inner_text("#kpi-cost")
            assert "58.3%" in await page.inner_text("#kpi-rate")
            assert "95% CI" in await page.inner_text("#kpi-accuracy")
            assert await page.locator("svg.chart").count() == 6
            assert await page.locator("#volume svg .spike-mark").count() == 1
            await page.screenshot(path=str(ARTIFACTS / "dashboard-overview-idr.png"), full_page=True)

            # the ISO week picker (a real <input type=week>), in the region's zone
            await page.fill("#pick-week input[name=period]", "2026-W46")
            await page.click("#pick-week button")
            await page.wait_for_url("**period=2026-W46**")
            assert "2026-11-09 to 2026-11-15" in await page.inner_text("#period-shown")

            await page.goto(f"{server}/dashboard/root-causes?region=ID&period=2026-11")
            damaged = page.locator('#breakdown tr[data-key="damaged"]')
            assert await damaged.get_attribute("class") == "spiked"
            assert await damaged.locator(".spike-count").inner_text() == "1"
            assert "2026-11-10" in await page.inner_text("#spikes")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-root-causes.png"), full_page=True)
            await page.click("#dimension-carrier")
            await page.wait_for_url("**dimension=carrier**")
            assert await page.locator('#breakdown tr[data-key="C1"]').count() == 1

            await page.click("text=Budget")
            await page.wait_for_url("**/dashboard/budget**")
            await page.fill("#pick-month input[name=period]", "2026-11")
            await page.click("#pick-month button")
            await page.wait_for_url("**period=2026-11**")
            assert "1,500,000 IDR" in await page.inner_text("#kpi-limit")
            assert await page.locator("#burndown svg polyline.pace").count() == 1
            await page.screenshot(path=str(ARTIFACTS / "dashboard-budget.png"), full_page=True)

            await page.click("#sign-out")
            await page.wait_for_url("**/dashboard/signin")
        finally:
            await browser.close()
    assert all(url.startswith(server) for url in requests), "the pages fetched something from elsewhere"
    for name in ("dashboard-overview-idr.png", "dashboard-root-causes.png", "dashboard-budget.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000


async def test_a_user_granted_sg_is_refused_gb(server):
    assert async_playwright is not None
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await _browser(pw)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await _sign_in(page, server, "mia", "/dashboard/overview?region=SG&period=2026-11")
            assert "12.50 SGD" in await page.inner_text("#kpi-cost")  # two decimals here
            assert await page.locator("#region-picker a.region").count() == 0  # nothing but SG to pick
            answer = await page.goto(f"{server}/dashboard/root-causes?region=GB&period=2026-11")
            assert answer is not None and answer.status == 403
            assert "no grant for region GB" in await page.inner_text("#problem")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-gb-refused.png"), full_page=True)
        finally:
            await browser.close()
