"""The HTTP API: authenticated, region-scoped decisions and strategies; reload keeps the old version on error."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
from prometheus_client import REGISTRY

from services.auto_comp.app import ReloadOnSighup, build_app
from services.auto_comp.config import Settings
from services.auto_comp.handlers import GrantHandler, TicketHandler
from shared.auth import TokenService
from tests.integration.auto_comp.autocomp_support import (
    RULES,
    STRATEGIES,
    allowance_requests,
    apply,
    autocomp_engine,
    damaged_ticket,
    grant,
    late_ticket,
    write_strategies,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def setup(fresh_database, tmp_path_factory):
    folder = write_strategies(tmp_path_factory.mktemp("api-strategies"))
    settings = Settings(database_url=fresh_database, strategies_dir=folder)
    engine = await autocomp_engine(fresh_database)
    app = build_app(settings, manage_lifecycle=False)
    store = app.state.store
    tickets = TicketHandler(store, RULES)
    await apply(engine, tickets, [late_ticket("A-1", "B-a", days_late=4), late_ticket("A-2", "B-b", days_late=1),
                                  damaged_ticket("A-3", "B-c"), damaged_ticket("A-gb", "B-g", region="GB",
                                                                                currency="GBP")])
    # A-1 (SG, paced at 10%) waits for its allowance: the ledger grants it
    for request in await allowance_requests(engine):
        if request["payload"]["pacing_allowance_percent"] == 10:
            await apply(engine, GrantHandler(RULES), [grant(request["payload"], 100_000)])
    tokens = TokenService(settings.require_token_secret(), settings.auth_token_issuer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://auto-comp") as client:
        yield client, tokens, folder, store
    await app.state.ctx.engine.dispose()
    await engine.dispose()


def bearer(tokens: TokenService, roles=("strategy_manager",), regions=("SG",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('someone', roles, regions)}"}


async def test_every_route_needs_credentials(setup):
    client, *_ = setup
    for method, path in (("GET", "/v1/decisions/A-1"), ("GET", "/v1/decisions"), ("GET", "/v1/strategies"),
                         ("POST", "/v1/admin/strategies/reload")):
        r = await client.request(method, path)
        assert r.status_code == 401, path
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await client.get("/v1/decisions", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401


async def test_get_decision(setup):
    client, tokens, *_ = setup
    r = await client.get("/v1/decisions/A-1", headers=bearer(tokens, ("auditor",)))
    assert r.status_code == 200
    body = r.json()
    assert body["outcome"] == "issued" and body["strategy_id"] == "sg-late" and body["strategy_version"] == 3
    assert body["issued"] == "10.00 SGD" and body["inputs"]["days_late"] == 4
    comp = body["compensation"]
    assert comp["status"] == "issued" and comp["kind"] == "voucher" and comp["voucher_code"].startswith("****")
    assert comp["liability_percent"] == [{"party": "platform", "id": None, "percent": 100}]
    r = await client.get("/v1/decisions/A-2", headers=bearer(tokens))
    assert r.json()["outcome"] == "not_eligible" and r.json()["failed_rule"] == "match.thresholds.days_late"
    r = await client.get("/v1/decisions/A-3", headers=bearer(tokens))
    assert r.json()["shadow"][0]["strategy_id"] == "sg-damaged-trial"


async def test_decision_outside_the_callers_regions_is_forbidden(setup):
    client, tokens, *_ = setup
    r = await client.get("/v1/decisions/A-gb", headers=bearer(tokens, regions=("SG",)))
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "region"
    assert (await client.get("/v1/decisions/A-gb", headers=bearer(tokens, regions=("GB",)))).status_code == 200
    assert (await client.get("/v1/decisions/nope", headers=bearer(tokens))).status_code == 404


async def test_roles_are_checked(setup):
    client, tokens, *_ = setup
    r = await client.get("/v1/decisions/A-1", headers=bearer(tokens, roles=("nobody",)))
    assert r.status_code == 403


async def test_list_filters_and_scoping(setup):
    client, tokens, *_ = setup
    sg = bearer(tokens, regions=("SG",))
    r = await client.get("/v1/decisions", headers=sg)
    assert {d["ticket_id"] for d in r.json()["items"]} == {"A-1", "A-2", "A-3"}  # GB is not visible
    r = await client.get("/v1/decisions", params={"outcome": "not_eligible"}, headers=sg)
    assert [d["ticket_id"] for d in r.json()["items"]] == ["A-2"]
    r = await client.get("/v1/decisions", params={"strategy_id": "sg-damaged"}, headers=sg)
    assert [d["ticket_id"] for d in r.json()["items"]] == ["A-3"]
    r = await client.get("/v1/decisions", params={"since": "2199-01-01T00:00:00Z"}, headers=sg)
    assert r.json()["items"] == []
    assert (await client.get("/v1/decisions", params={"region": "GB"}, headers=sg)).status_code == 403
    all_regions = bearer(tokens, regions=("*",))
    r = await client.get("/v1/decisions", params={"region": "GB"}, headers=all_regions)
    assert [d["ticket_id"] for d in r.json()["items"]] == ["A-gb"]


async def test_list_pages(setup):
    client, tokens, *_ = setup
    h = bearer(tokens, regions=("*",))
    seen, cursor = [], None
    while True:
        r = await client.get("/v1/decisions", params={"limit": 1, **({"cursor": cursor} if cursor else {})},
                             headers=h)
        seen += [d["ticket_id"] for d in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == ["A-1", "A-2", "A-3", "A-gb"]


@pytest.mark.parametrize(("params", "field"), [
    ({"outcome": "great"}, "query.outcome"), ({"limit": 0}, "query.limit"), ({"region": "sg"}, "query.region"),
    ({"region": "XX"}, "query.region"), ({"since": "yesterday"}, "query.since"),
    ({"since": "2026-01-01T00:00:00"}, "query.since"), ({"cursor": "!!"}, "query.cursor")])
async def test_bad_list_queries_name_the_field(setup, params, field):
    client, tokens, *_ = setup
    r = await client.get("/v1/decisions", params=params, headers=bearer(tokens, regions=("*",)))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == field


async def test_strategies_are_region_scoped(setup):
    client, tokens, *_ = setup
    r = await client.get("/v1/strategies", headers=bearer(tokens, regions=("GB",)))
    assert [s["id"] for s in r.json()["strategies"]] == ["gb-damaged"]
    assert r.json()["config_version"]
    assert (await client.get("/v1/strategies", params={"region": "SG"},
                             headers=bearer(tokens, regions=("GB",)))).status_code == 403


def metric(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_reload_keeps_the_old_version_on_error(setup):
    client, tokens, folder, store = setup
    admin = bearer(tokens, roles=("ops_admin",), regions=("*",))
    assert (await client.post("/v1/admin/strategies/reload", headers=bearer(tokens, roles=("auditor",),
                                                                              regions=("*",)))).status_code == 403
    # the set covers SG and GB: a manager of SG alone may not swap GB's strategies
    assert (await client.post("/v1/admin/strategies/reload", headers=bearer(tokens))).status_code == 403
    before = store.current.version
    (folder / "strategies.yaml").write_text(STRATEGIES.replace("version: 3", "version: zero"))
    r = await client.post("/v1/admin/strategies/reload", headers=admin)
    assert r.status_code == 422
    body = r.json()
    assert body["active_version"] == before
    assert body["errors"][0]["field"].endswith("strategies.yaml: sg-late: version")
    assert "whole number" in body["errors"][0]["message"]
    assert store.current.version == before
    assert metric("auto_comp_strategy_reload_failed") == 1.0
    # decisions keep using the old version
    r = await client.get("/v1/strategies", headers=admin)
    assert {s["id"]: s["version"] for s in r.json()["strategies"]}["sg-late"] == 3

    (folder / "strategies.yaml").write_text(STRATEGIES.replace("version: 3", "version: 4"))
    r = await client.post("/v1/admin/strategies/reload", headers=admin)
    assert r.status_code == 200 and r.json()["changed"] is True and r.json()["previous_version"] == before
    assert store.current.get("sg-late").version == 4
    assert metric("auto_comp_strategy_reload_failed") == 0.0
    assert REGISTRY.get_sample_value("auto_comp_strategy_version", {"strategy": "sg-late", "mode": "active"}) == 4
    assert REGISTRY.get_sample_value("auto_comp_strategy_config_info", {"version": store.current.version}) == 1
    (folder / "strategies.yaml").write_text(STRATEGIES)
    assert (await client.post("/v1/admin/strategies/reload", headers=admin)).status_code == 200


async def test_sighup_reloads(setup):
    _, _, folder, store = setup
    hup = ReloadOnSighup(store)
    await hup.start()
    try:
        (folder / "strategies.yaml").write_text(STRATEGIES.replace("version: 3", "version: 5"))
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(50):
            if store.current.get("sg-late").version == 5:
                break
            await asyncio.sleep(0.02)
        assert store.current.get("sg-late").version == 5
    finally:
        await hup.stop()
        (folder / "strategies.yaml").write_text(STRATEGIES)
        store.reload()
