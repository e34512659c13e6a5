"""The ledger's HTTP API and CLI in-process against real PostgreSQL and the real broker: budgets with
their audit trail, usage, balances, statements (JSON and CSV) and breakage against hand-computed
fixtures in IDR (0 decimals, UTC+7) and SGD (2 decimals, UTC+8) across a period boundary, lineage,
authentication, region scoping and bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text

from services.ledger.app import build_app
from services.ledger.config import Settings
from shared.db import migrate
from shared.money import MAX_BUDGET_MINOR
from tests.integration.ledger.ledger_support import MIGRATIONS, apply, ledger_engine, rows
from tests.unit.ledger.ledger_factories import (
    PLATFORM,
    carrier,
    correction,
    expired,
    issued,
    manual,
    redeemed,
    request,
    seller,
)

pytestmark = pytest.mark.integration
SECRET = "ledger-api-test-secret-0123456789"


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
async def ledger(fresh_database, kafka_bootstrap, topic_factory):
    (topic,) = await topic_factory("ledger-api-in", partitions=1)
    settings = Settings(database_url=fresh_database, kafka_bootstrap_servers=kafka_bootstrap,
                        auth_token_secret=SECRET, consumer_group="ledger-api-test")
    await migrate(fresh_database, "ledger", MIGRATIONS)
    app = build_app(settings, topics=[topic], housekeeping=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as client:
            yield app, client, settings


def token(app, roles=("finance",), regions=("SG", "ID")) -> dict[str, str]:
    return {"Authorization": "Bearer " + app.state.ctx.tokens.issue("alice", roles, regions)}


async def test_set_budgets_through_the_api(ledger):
    app, client, _ = ledger
    # A month no seeded book touches, so the answer does not depend on which tests ran before.
    for region, period, limit, currency in (("ID", "2026-08", 1_000_000, "IDR"), ("SG", "2026-08", 50_000, "SGD")):
        r = await client.put(f"/v1/budgets/{region}/{period}", headers=token(app),
                             json={"limit_minor": limit, "currency": currency, "reason": "monthly plan"})
        assert r.status_code == 200, r.text
        assert r.json()["limit_minor"] == limit and r.json()["used_minor"] == 0


async def test_budget_limits_are_announced_in_the_same_transaction(ledger):
    from services.ledger import queries
    from shared.contracts.registry import decode_envelope

    _, _, settings = ledger
    engine = await ledger_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            for limit in (70_000, 80_000):
                await queries.set_budget(conn, region="SG", period="2027-03", currency="SGD", limit=limit,
                                         actor="bob finance", via="api", reason="March plan")
            values = (await conn.execute(text(
                "SELECT key, value FROM outbox WHERE topic = 'budget.limits.v1' ORDER BY id"))).all()
            told = [(key, *decode_envelope(value)) for key, value in values]
            told = [(k, e, p) for k, e, p in told if p.budget_period == "2027-03"]
            assert [(k, p.limit.amount_minor, p.previous_limit and p.previous_limit.amount_minor)
                    for k, _, p in told] == [(b"SG", 70_000, None), (b"SG", 80_000, 70_000)]
            assert {p.actor for _, _, p in told} == {"bob_finance"}  # an Identifier: the space replaced
            assert len({e.event_id for _, e, _ in told}) == 2
    finally:
        await engine.dispose()


async def test_budget_api_refuses_bad_input_and_strangers(ledger):
    app, client, _ = ledger
    body = {"limit_minor": 100, "currency": "SGD", "reason": "test"}
    assert (await client.put("/v1/budgets/SG/2026-11", json=body)).status_code == 401
    r = await client.put("/v1/budgets/SG/2026-11", json=body, headers=token(app, roles=("auditor",)))
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    r = await client.put("/v1/budgets/US/2026-11", json={**body, "currency": "USD"}, headers=token(app))
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "region"
    r = await client.put("/v1/budgets/SG/2026-11", json={**body, "currency": "USD"}, headers=token(app))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.currency"
    r = await client.put("/v1/budgets/SG/2026-11", json={**body, "limit_minor": -1}, headers=token(app))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.limit_minor"
    r = await client.put("/v1/budgets/SG/2026-11", json={**body, "limit_minor": 10.5}, headers=token(app))
    assert r.status_code == 422
    r = await client.put("/v1/budgets/SG/2026-13", json=body, headers=token(app))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path.period"
    r = await client.put("/v1/budgets/XX/2026-11", json=body, headers=token(app, regions=("*",)))
    assert r.status_code == 404
    r = await client.get("/v1/budgets/SG/2026-11", headers={"Authorization": "Bearer forged"})
    assert r.status_code == 401


async def test_budget_limits_and_periods_are_bounded(ledger):
    """Issue 11: a limit of 10**30 answered 500; a period of year 1 or 9999 too. Every store and every sum
    holds a limit up to MAX_BUDGET_MINOR (ADR 0006); beyond it, and outside the span of years, a 422 naming
    the field, and nothing changes."""
    app, client, _ = ledger
    body = {"currency": "SGD", "reason": "bounds"}
    for limit in (10**30, 2**63, MAX_BUDGET_MINOR + 1):
        r = await client.put("/v1/budgets/SG/2030-01", json={**body, "limit_minor": limit}, headers=token(app))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.limit_minor", r.text
        assert r.headers["content-type"] == "application/problem+json"
    for period in ("0001-01", "9999-12", "1969-12", "2200-01", "2030-02-30"):
        r = await client.put(f"/v1/budgets/SG/{period}", json={**body, "limit_minor": 1}, headers=token(app))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path.period", (period, r.text)
        r = await client.get("/v1/reports/breakage", params={"region": "SG", "period": period}, headers=token(app))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.period", (period, r.text)
    r = await client.put("/v1/budgets/SG/2030-01", json={**body, "limit_minor": 1, "reason": "why\x00"},
                         headers=token(app))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.reason"
    r = await client.put("/v1/budgets/SG/2030-01", content=b'{"limit_minor": 1, "currency": "SGD", "reason": "abc"}',
                         headers={**token(app), "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert (await client.get("/v1/budgets/SG/2030-01", headers=token(app))).status_code == 404  # nothing set
    r = await client.put("/v1/budgets/SG/2199-12", json={**body, "limit_minor": MAX_BUDGET_MINOR}, headers=token(app))
    assert r.status_code == 200 and r.json()["limit_minor"] == MAX_BUDGET_MINOR


@pytest.fixture(scope="module")
async def books(ledger):
    """The November books the read tests look at (IDR and SGD, month edges in local time, a correction,
    redeemed and expired vouchers), with the month's budgets set through the API first: built once, and
    requested by every test that reads them, so none depends on another test having run before it."""
    app, client, settings = ledger
    for region, limit, currency in (("ID", 1_000_000, "IDR"), ("SG", 50_000, "SGD")):
        r = await client.put(f"/v1/budgets/{region}/2026-11", headers=token(app),
                             json={"limit_minor": limit, "currency": currency, "reason": "monthly plan"})
        assert r.status_code == 200, r.text
    engine = await ledger_engine(settings.database_url)
    try:
        # IDR, Asia/Jakarta (UTC+7): 2026-10-31T17:00Z is already 1 November there.
        await apply(engine, settings, [
            manual("ID-M1", 150_000, region="ID", at=at(2026, 10, 31, 16, 59), shares=[(seller("S-ID"), 150_000)]),
            manual("ID-M2", 250_000, region="ID", at=at(2026, 10, 31, 17, 0),
                   shares=[(seller("S-ID"), 200_000), (carrier("C-ID"), 50_000)]),
            manual("ID-M3", 99_999, region="ID", at=at(2026, 11, 30, 16, 59, 59), shares=[(seller("S-ID"), 99_999)]),
            manual("ID-M4", 10_000, region="ID", at=at(2026, 11, 30, 17, 0), shares=[(seller("S-ID"), 10_000)]),
        ])
        await apply(engine, settings, [correction("ID-K1", "ID-M2", 250_000, region="ID", at=at(2026, 11, 10),
                                                  shares=[(carrier("C-ID"), 250_000)])])
        # SGD, Asia/Singapore (UTC+8), 2 decimals.
        await apply(engine, settings, [
            request("SG-R1", 1_500), request("SG-R2", 2_000, kind="store_credit"), request("SG-R3", 800),
            request("SG-R4", 3_000, at=at(2026, 11, 20))])
        await apply(engine, settings, [
            issued("SG-R1", 1_500, shares=[(seller("S-SG"), 1_000), (PLATFORM, 500)]),
            issued("SG-R2", 2_000, kind="store_credit", shares=[(seller("S-SG"), 2_000)]),
            issued("SG-R3", 800, shares=[(seller("S-SG"), 800)])])
        await apply(engine, settings, [redeemed("comp-SG-R1", 1_200), expired("comp-SG-R3")])
        # 2026-11-30T16:30Z is 1 December 00:30 in Singapore: next period.
        await apply(engine, settings, [manual("SG-M9", 500, at=at(2026, 11, 30, 16, 30),
                                              shares=[(seller("S-SG"), 500)])])
    finally:
        await engine.dispose()
    return ledger


@pytest.mark.usefixtures("books")
async def test_budget_usage_idr_and_sgd(ledger):
    app, client, _ = ledger
    r = await client.get("/v1/budgets/ID/2026-11", headers=token(app, roles=("auditor",)))
    assert r.status_code == 200, r.text
    u = r.json()
    assert (u["limit_minor"], u["posted_manual_minor"], u["reserved_minor"], u["remaining_minor"]) == (
        1_000_000, 349_999, 0, 650_001)
    assert u["percent_used"] == "35.00" and u["used"] == "349999 IDR"
    assert u["period_start"].startswith("2026-10-31T17:00:00")
    assert u["changes"][0]["actor"] == "alice" and u["changes"][0]["via"] == "api"
    u = (await client.get("/v1/budgets/SG/2026-11", headers=token(app))).json()
    assert (u["reserved_minor"], u["posted_auto_minor"], u["posted_manual_minor"]) == (3_000, 3_200, 0)
    assert (u["used_minor"], u["remaining_minor"], u["percent_used"]) == (6_200, 43_800, "12.40")
    assert u["breakage_minor"] == 800 and u["released_minor"] == 300 and u["limit"] == "500.00 SGD"
    u = (await client.get("/v1/budgets/SG/2026-12", headers=token(app))).json()
    assert u["limit_minor"] is None and u["posted_manual_minor"] == 500 and u["percent_used"] is None


@pytest.mark.usefixtures("books")
async def test_statements_json_and_csv(ledger):
    app, client, _ = ledger
    r = await client.get("/v1/statements/seller:S-ID", params={"region": "ID", "period": "2026-11"},
                         headers=token(app))
    s = r.json()
    assert (s["opening_balance_minor"], s["charged_minor"], s["reversed_minor"], s["closing_balance_minor"]) == (
        150_000, 299_999, 200_000, 249_999)
    assert [(x["kind"], x["amount_minor"]) for x in s["lines"]] == [
        ("charge", 200_000), ("reversal", -200_000), ("charge", 99_999)]
    c = (await client.get("/v1/statements/carrier:C-ID", params={"region": "ID", "period": "2026-11"},
                          headers=token(app))).json()
    assert c["closing_balance_minor"] == 250_000 and c["closing_balance"] == "250000 IDR"

    # SGD vouchers: the seller ends up charged for what buyers received. SG-R1 (15.00, seller 10.00 +
    # platform 5.00) redeemed for 12.00: reversed and charged again 8.00 + 4.00; SG-R3 (8.00) expired
    # unused: reversed; SG-R2 is store credit, received in full when issued.
    s = (await client.get("/v1/statements/seller:S-SG", params={"region": "SG", "period": "2026-11"},
                          headers=token(app))).json()
    assert (s["opening_balance_minor"], s["closing_balance_minor"], s["closing_balance"]) == (0, 2_800, "28.00 SGD")
    assert (s["charged_minor"], s["reversed_minor"]) == (4_600, 1_800)
    assert [(x["tx_id"], x["kind"], x["amount_minor"], x["corrects_tx_id"], x["correction_id"])
            for x in s["lines"]] == [
        ("charge:comp-SG-R1:0", "charge", 1_000, None, None),
        ("charge:comp-SG-R1:1", "charge", 800, "charge:comp-SG-R1:0", None),
        ("charge:comp-SG-R2:0", "charge", 2_000, None, None),
        ("charge:comp-SG-R3:0", "charge", 800, None, None),
        ("reversal:charge:comp-SG-R1:0", "reversal", -1_000, None, None),
        ("reversal:charge:comp-SG-R3:0", "reversal", -800, None, None)]
    p = (await client.get("/v1/statements/platform", params={"region": "SG", "period": "2026-11"},
                          headers=token(app))).json()
    assert p["closing_balance_minor"] == 400
    d = (await client.get("/v1/statements/seller:S-SG", params={"region": "SG", "period": "2026-12"},
                          headers=token(app))).json()
    assert (d["opening_balance_minor"], d["closing_balance_minor"]) == (2_800, 3_300)

    r = await client.get("/v1/statements/seller:S-SG", params={"region": "SG", "period": "2026-11", "format": "csv"},
                         headers=token(app))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["compensation_id"], x["kind"], x["amount_minor"], x["amount"]) for x in table] == [
        ("comp-SG-R1", "charge", "1000", "10.00"), ("comp-SG-R1", "charge", "800", "8.00"),
        ("comp-SG-R2", "charge", "2000", "20.00"), ("comp-SG-R3", "charge", "800", "8.00"),
        ("comp-SG-R1", "reversal", "-1000", "-10.00"), ("comp-SG-R3", "reversal", "-800", "-8.00")]


@pytest.mark.usefixtures("books")
async def test_balances_and_unknown_accounts(ledger):
    app, client, _ = ledger
    b = (await client.get("/v1/accounts/seller:S-SG/balance", params={"region": "SG"}, headers=token(app))).json()
    assert b["balance_minor"] == 3_300 and b["balance"] == "33.00 SGD"
    b = (await client.get("/v1/accounts/budget:2026-11/balance", params={"region": "SG"}, headers=token(app))).json()
    assert b["balance_minor"] == -3_200  # posted automatic spend of the period
    r = await client.get("/v1/accounts/seller:nobody/balance", params={"region": "SG"}, headers=token(app))
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "account_key"
    r = await client.get("/v1/accounts/wallet:x/balance", params={"region": "SG"}, headers=token(app))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path.account_key"
    r = await client.get("/v1/accounts/platform/balance", params={"region": "US"}, headers=token(app))
    assert r.status_code == 403
    r = await client.get("/v1/statements/buyer:B1", params={"region": "SG", "period": "2026-11"}, headers=token(app))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path.party"


@pytest.mark.usefixtures("books")
async def test_lineage_and_breakage(ledger):
    app, client, _ = ledger
    r = await client.get("/v1/compensations/comp-SG-R1/lineage", headers=token(app))
    lin = r.json()
    assert lin["reservations"][0]["status"] == "posted" and lin["reservations"][0]["closed_by"] == "redeemed"
    # the redemption posts the budget and brings the charge down to the 12.00 received
    ids = [t["tx_id"] for t in lin["transactions"]]
    posting = lin["reservations"][0]["posting_tx_id"]
    assert sorted(ids) == sorted(["charge:comp-SG-R1:0", "charge:comp-SG-R1:1", posting,
                                  "reversal:charge:comp-SG-R1:0"])
    [posted] = [t for t in lin["transactions"] if t["tx_id"] == posting]
    assert posted["kind"] == "budget_posting" and posted["share_minor"] == 1_200  # its part of the posting
    assert posted["entries"][-1]["account"] == "budget:2026-11"
    [charge] = [t for t in lin["transactions"] if t["tx_id"] == "charge:comp-SG-R1:0"]
    # each line as stored (a transfer) and the transaction's entries, balanced
    assert all(x["amount_minor"] > 0 for x in charge["transfers"]) and sum(
        e["amount_minor"] for e in charge["entries"]) == 0
    assert lin["compensation"]["current_amount_minor"] == 1_200
    lin = (await client.get("/v1/compensations/ID-M2/lineage", headers=token(app))).json()
    assert [c["correction_id"] for c in lin["corrections"]] == ["ID-K1"]
    assert {t["tx_id"] for t in lin["transactions"]} >= {"charge:ID-M2:0", "reversal:charge:ID-M2:0",
                                                          "charge:ID-M2:1"}
    r = await client.get("/v1/compensations/ID-M2/lineage", headers=token(app, regions=("SG",)))
    assert r.status_code == 404  # another region's compensation is not even acknowledged
    br = (await client.get("/v1/reports/breakage", params={"region": "SG", "period": "2026-11"},
                           headers=token(app))).json()
    assert br["breakage_minor"] == 800 and br["breakage"] == "8.00 SGD"
    voucher = next(k for k in br["by_kind"] if k["kind"] == "voucher")
    assert voucher["unredeemed_remainder_minor"] == 300 and voucher["expired"] == 1


@pytest.mark.usefixtures("books")
async def test_limit_cannot_drop_below_committed_automatic_usage(ledger):
    app, client, _ = ledger
    r = await client.put("/v1/budgets/SG/2026-11", headers=token(app),
                         json={"limit_minor": 6_000, "currency": "SGD", "reason": "cut"})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "body.limit_minor"


@pytest.mark.usefixtures("books")
async def test_cli_budget_set_and_invariants(ledger):
    app, _, settings = ledger
    env = {**os.environ, "DATABASE_URL": settings.database_url, "LOG_JSON": "false"}
    cmd = [sys.executable, "-m", "services.ledger"]
    done = subprocess.run([*cmd, "budgets", "set", "--region", "SG", "--period", "2026-12", "--limit-minor",
                           "90000", "--actor", "bob", "--reason", "december plan"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for limit, period in (("-5", "2026-12"), (str(10**30), "2026-12"), (str(MAX_BUDGET_MINOR + 1), "2026-12"),
                          ("100", "0001-01"), ("100", "9999-12")):
        bad = subprocess.run([*cmd, "budgets", "set", "--region", "SG", "--period", period, "--limit-minor", limit,
                              "--actor", "bob"], env=env, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and ("limit-minor" in bad.stderr or period in bad.stderr), bad.stderr
        assert "Traceback" not in bad.stderr
    engine = await ledger_engine(settings.database_url)
    try:
        changes = await rows(engine, "SELECT actor, via, new_limit_minor FROM budget_changes "
                                     "WHERE period = '2026-12'")
        assert changes == [("bob", "cli", 90_000)]
    finally:
        await engine.dispose()
    # SG-R4 is long past its expiry: the housekeeper voids it, then every invariant holds.
    keeper = app.state.housekeeper
    await keeper.run_once(invariants_now=True)
    assert keeper.last_violations and sum(keeper.last_violations.values()) == 0, keeper.last_violations
    done = subprocess.run([*cmd, "check-invariants"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and '"violations": 0' in done.stdout, done.stdout + done.stderr
    async with app.state.ctx.engine.connect() as conn:
        status = (await conn.execute(text("SELECT status FROM reservations WHERE reservation_id = 'SG-R4'"))).scalar()
    assert status == "voided"


async def test_metrics_are_exposed(ledger):
    _, client, _ = ledger
    body = (await client.get("/metrics")).text
    for name in ("ledger_transactions_total", "ledger_transfers_total", "ledger_charges_total",
                 "ledger_budget_limit_minor", "ledger_budget_reserved_minor", "ledger_budget_posted_minor",
                 "ledger_budget_used_ratio", "ledger_invariant_violations", "ledger_budget_decisions_total"):
        assert name in body, name
    assert 'ledger_invariant_violations{check="budget_overspent"} 0.0' in body


async def test_events_waiting_for_their_compensation_are_visible(ledger, caplog):
    """Issue 13 part 4: a parked event is logged at WARNING with its ids, counted per region with its oldest
    age, listed by the API (region-scoped) and the CLI, and leaves every view once its compensation arrives."""
    import logging

    app, client, settings = ledger
    with caplog.at_level(logging.WARNING, logger="services.ledger.handlers"):
        await apply(app.state.ctx.engine, settings, [correction("K-WAIT-SG", "MAN-WAIT-SG", 100),
                                                     correction("K-WAIT-ID", "MAN-WAIT-ID", 100, region="ID")])
    parked_logs = [r for r in caplog.records if r.getMessage().startswith("event parked")]
    assert {(r.levelno, r.compensation_id, r.region, r.event_type) for r in parked_logs} == {
        (logging.WARNING, "MAN-WAIT-SG", "SG", "audit.correction_issued"),
        (logging.WARNING, "MAN-WAIT-ID", "ID", "audit.correction_issued")}
    assert all(r.event_id and r.correlation_id for r in parked_logs)

    await app.state.housekeeper.refresh_gauges()
    body = (await client.get("/metrics")).text
    assert 'ledger_parked_events{region="SG"} 1.0' in body and 'ledger_parked_events{region="ID"} 1.0' in body
    assert 'ledger_parked_oldest_age_seconds{region="SG"}' in body
    assert f"ledger_park_window_seconds {float(settings.park_seconds)}" in body

    r = await client.get("/v1/parked-events", params={"region": "SG"}, headers=token(app, roles=("ops_admin",)))
    assert r.status_code == 200, r.text
    listed = r.json()
    assert listed["count"] == 1 and listed["park_window_seconds"] == settings.park_seconds
    item = listed["items"][0]
    assert (item["compensation_id"], item["event_type"], item["region"]) == ("MAN-WAIT-SG", "audit.correction_issued",
                                                                             "SG")
    parked_at, dead_at = datetime.fromisoformat(item["parked_at"]), datetime.fromisoformat(item["dead_letter_at"])
    assert (dead_at - parked_at).total_seconds() == settings.park_seconds and item["age_seconds"] >= 0

    # region-scoped, authenticated, bad input named
    only_id = token(app, roles=("ops_admin",), regions=("ID",))
    assert (await client.get("/v1/parked-events", params={"region": "SG"}, headers=only_id)).status_code == 403
    assert (await client.get("/v1/parked-events", params={"region": "SG"})).status_code == 401
    assert (await client.get("/v1/parked-events", params={"region": "ZZ"}, headers=token(app))).status_code == 404
    bad = await client.get("/v1/parked-events", params={"region": "SG", "limit": 0}, headers=token(app))
    assert bad.status_code == 422 and "limit" in bad.text

    env = {**os.environ, "DATABASE_URL": settings.database_url, "LOG_JSON": "false"}
    cli = subprocess.run([sys.executable, "-m", "services.ledger", "parked", "--region", "ID"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    lines = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [(x["compensation_id"], x["region"]) for x in lines] == [("MAN-WAIT-ID", "ID")]
    unknown = subprocess.run([sys.executable, "-m", "services.ledger", "parked", "--region", "ZZ"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr

    # the compensation arrives: the waiting correction is applied, and nothing is listed or counted any more
    await apply(app.state.ctx.engine, settings, [manual("MAN-WAIT-SG", 500), manual("MAN-WAIT-ID", 500, region="ID")])
    r = await client.get("/v1/parked-events", params={"region": "SG"}, headers=token(app))
    assert r.json()["count"] == 0
    await app.state.housekeeper.refresh_gauges()
    body = (await client.get("/metrics")).text
    assert 'ledger_parked_events{region="SG"} 0.0' in body
    assert 'ledger_parked_oldest_age_seconds{region="SG"} 0.0' in body
