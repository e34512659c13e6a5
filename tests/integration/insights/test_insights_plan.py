"""Issue 15 parts 3 and 6 through the real service on the real database and broker: the budget plan over
three years of simulated rollups (band, backtest coverage and MAPE, CSV, scoping, bad input), the budget
watch's exhaustion gauges, and the market report of a strategy whose events came over the broker."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from sqlalchemy import text

from services.insights.app import build_app
from services.insights.config import Settings
from shared.auth import TokenService
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from shared.db import migrate
from shared.kafka import EventProducer
from shared.kafka.producer import record_for
from shared.regions import region
from shared.web.security import hash_password
from tests.integration.insights.dashboard_support import PASSWORD, STORE
from tests.integration.insights.insights_support import MIGRATIONS, insights_engine
from tests.integration.insights.test_dashboard_pages import signed_in, text_of
from tests.unit.insights.budget_history import simulate

pytestmark = pytest.mark.integration
SG = region("SG")


def _tokens(settings: Settings) -> TokenService:
    return TokenService(settings.auth_token_secret.get_secret_value(), settings.auth_token_issuer)


async def _seed_history(engine, today) -> None:  # type: ignore[no-untyped-def]
    """Three years of SG rollups up to yesterday, as the consumer would have compacted them, and a live
    strategy s-late (version 2 for the last 40 days) issuing the automatic amounts."""
    last = today - timedelta(days=1)
    history = simulate(7, last - timedelta(days=3 * 365), last)
    tickets, comps, decisions = [], [], []
    for day, by in history.items():
        version = 2 if day > last - timedelta(days=40) else 1
        for reason, v in by.items():
            tickets.append(("SG", day, reason, "C1", v.tickets))
            comps.append(("SG", day, reason, "C1", "auto", "s-late", v.auto_minor))
            comps.append(("SG", day, reason, "C1", "manual", "", v.manual_minor))
            decisions.append(("SG", day, "s-late", version, "issued", v.tickets, v.auto_minor))
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO ticket_daily (region, day, reason, carrier, tickets, compensated, compensated_auto, "
            "compensated_manual, claimed, detected) VALUES (:r, :d, :reason, :c, :n, 0, 0, 0, 0, 0)"),
            [dict(zip(("r", "d", "reason", "c", "n"), t, strict=True)) for t in tickets])
        cols = ", ".join(f"{m}" for m in ("comps", "seller_minor", "carrier_minor", "platform_minor", "vouchers",
                                          "voucher_minor", "redeemed", "redeemed_minor", "expired", "expired_minor",
                                          "revoked", "proactive", "timed", "ttc_seconds",
                                          *[f"ttc_{i:02d}" for i in range(17)]))
        zeros = ", ".join("0" for _ in cols.split(","))
        await conn.execute(text(
            f"INSERT INTO comp_daily (region, day, reason, carrier, source, strategy, amount_minor, {cols}) "
            f"VALUES (:r, :d, :reason, :c, :s, :st, :a, {zeros})"),
            [dict(zip(("r", "d", "reason", "c", "s", "st", "a"), t, strict=True)) for t in comps])
        await conn.execute(text(
            "INSERT INTO decision_daily (region, day, strategy, strategy_version, outcome, failed_rule, tier, shadow, "
            "decisions, amount_minor) VALUES (:r, :d, :s, :v, :o, '', '', false, :n, :a) "
            "ON CONFLICT (region, day, strategy, strategy_version, outcome, failed_rule, tier, shadow) "
            "DO UPDATE SET decisions = decision_daily.decisions + EXCLUDED.decisions, "
            "amount_minor = decision_daily.amount_minor + EXCLUDED.amount_minor"),
            [dict(zip(("r", "d", "s", "v", "o", "n", "a"), t, strict=True)) for t in decisions])


async def test_budget_plan_api_and_exhaustion_watch(fresh_database, monkeypatch):
    engine = await insights_engine(fresh_database)
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    settings = Settings()
    today = SG.local(datetime.now(UTC)).date()
    await _seed_history(engine, today)
    nxt = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    label = f"{nxt:%Y-%m}"
    app = build_app(settings, compactor=False)
    sg = _tokens(settings).issue("fin", roles=["finance"], regions=["SG"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://insights",
                                 headers={"Authorization": f"Bearer {sg}"}) as client:
        plan = await client.get(f"/v1/budget-plans/SG/{label}")
        assert plan.status_code == 200, plan.text
        body = plan.json()
        assert body["period"] == label and body["currency"] == "SGD"
        assert [s["strategy"] for s in body["active_strategies"]] == ["s-late"]
        assert body["active_strategies"][0]["version"] == 2
        assert body["cost_window"]["days"] == 40  # since s-late's current version decides
        for m in ("auto", "manual", "total"):
            t = body["totals"][m]
            assert isinstance(t["forecast"], int) and t["low"] < t["forecast"] < t["high"], (m, t)
            assert t["past_periods"] == 12
        bt = body["backtest"]
        assert bt["periods"] == 12 and len(bt["months"]) == 12
        assert all(bt["judged"][m] == 12 for m in ("auto", "manual", "total", "tickets"))
        assert all(0 < bt["mape"][m] < 0.2 for m in bt["mape"])
        assert {s["scenario"] for s in body["scenarios"]} >= {"late_delivery", "damaged"}
        as_csv = await client.get(f"/v1/budget-plans/SG/{label}", params={"format": "csv"})
        assert as_csv.status_code == 200 and as_csv.text.startswith("section,region,period")
        assert "calibration,SG" in as_csv.text and "backtest,SG" in as_csv.text
        # scoping and bad input
        assert (await client.get(f"/v1/budget-plans/MY/{label}")).status_code == 403
        assert (await client.get(f"/v1/budget-plans/SG/{label}", headers={"Authorization": ""})).status_code == 401
        for path, field in ((f"/v1/budget-plans/SG/{today.year - 1}-01", "period"),
                            ("/v1/budget-plans/SG/2026-13", "period"),
                            (f"/v1/budget-plans/SG/{today:%Y-%m-%d}", "period"),
                            (f"/v1/budget-plans/SG/{today.year + 3}-01", "period")):
            bad = await client.get(path)
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == field, (path, bad.text)
        bad = await client.get(f"/v1/budget-plans/SG/{label}", params={"format": "xml"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "format"

        # usage monitoring: a limit of 10,000.00 with 1,000.00 used a day runs out on day 10
        period = f"{today:%Y-%m}"
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO budget_limits (region, period, currency, limit_minor, set_at, event_id) "
                "VALUES ('SG', :p, 'SGD', 1000000, now(), 'lim-1')"), {"p": period})
            await conn.execute(text(
                "INSERT INTO budget_daily (region, period, day, source, committed_minor, released_minor) "
                "SELECT 'SG', :p, d::date, 'auto', 100000, 0 FROM generate_series(CAST(:a AS date), CAST(:b AS date), "
                "interval '1 day') d"), {"p": period, "a": today.replace(day=1), "b": today})
        await app.state.budget_watch.run_once()
        expected = today.replace(day=1) + timedelta(days=9)  # reached on day 10 (or, before it, paced to it)
        burn = (await client.get(f"/v1/budgets/SG/{period}/burndown")).json()
        assert burn["projected_exhaustion_day"] == expected.isoformat() and burn["exhausts_before_period_end"]
        scraped = (await client.get("/metrics")).text
        line = next(x for x in scraped.splitlines() if x.startswith(
            f'insights_budget_projected_exhaustion_timestamp_seconds{{period="{period}",region="SG"}}'))
        assert float(line.split()[-1]) == datetime.combine(expected, datetime.min.time(), SG.tz).timestamp()
        assert f'insights_budget_period_end_timestamp_seconds{{period="{period}",region="SG"}}' in scraped

    # the dashboard: the plan page (next month by default) and the exhaustion day on the budget page
    async with engine.begin() as conn:
        await STORE.upsert_user(conn, "fin", hash_password(PASSWORD, n=2 ** 12), ["finance"], ["SG"])
    async with signed_in(app, "fin") as c:
        page = await c.get("/dashboard/plan", params={"region": "SG"})
        assert page.status_code == 200, page.text
        assert f"Budget plan: Singapore, {label}" in page.text
        assert "SGD" in text_of(page.text, "kpi-total") and "80% band" in text_of(page.text, "kpi-total")
        assert "of 36 past month amounts inside their 80% band" in text_of(page.text, "kpi-coverage")
        assert page.text.count("<svg") >= 3 and "plan against actual" in page.text
        assert text_of(page.text, "plan-backtest").count(" SGD") >= 12 * 4
        assert (await c.get("/dashboard/plan", params={"region": "MY"})).status_code == 403
        past = await c.get("/dashboard/plan", params={"region": "SG", "period": f"{today.year - 1}-01"})
        assert past.status_code == 422 and "plan the current month" in past.text
        budget = await c.get("/dashboard/budget", params={"region": "SG", "period": period})
        assert expected.isoformat() in text_of(budget.text, "kpi-exhaustion")
        assert "before the month ends" in text_of(budget.text, "kpi-exhaustion")
    await engine.dispose()


async def test_market_report_from_decisions_over_the_broker(fresh_database, kafka_bootstrap, make_topics,
                                                            monkeypatch):
    decisions_topic, volume_topic = await make_topics("decisions", "volume")
    await migrate(fresh_database, "insights", MIGRATIONS)
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("INSIGHTS_CONSUMER_GROUP", f"insights-{decisions_topic}")
    monkeypatch.setenv("INSIGHTS_COMPACT_INTERVAL_SECONDS", "0.2")
    settings = Settings()
    app = build_app(settings, topics=[decisions_topic, volume_topic])
    ctx = app.state.ctx
    await ctx.start()
    producer = EventProducer(settings, "test-feed")
    await producer.start()
    try:
        now = datetime.now(UTC)
        today = SG.local(now).date()
        records = []

        def decision(i: int, strategy: str, version: int, amount: int, order: int | None, shadow: bool = False,
                     outcome: ev.DecisionOutcome = ev.DecisionOutcome.ISSUED) -> ev.DecisionRecorded:
            money = ev.PositiveMoney(amount_minor=amount, currency="SGD")
            issued = outcome is ev.DecisionOutcome.ISSUED
            return ev.DecisionRecorded(
                ticket_id=f"MKT-T{i}", order_id=f"O{i}", buyer_id=f"B{i}", reason=ev.TicketReason.LATE_DELIVERY,
                ticket_occurred_at=now, shadow=shadow, outcome=outcome, detail="d", strategy_id=strategy,
                strategy_version=version, tier="base", kind=ev.CompensationKind.VOUCHER, amount=money,
                compensation_id=f"MKT-C{i}" if issued else None,
                liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=amount)]
                if issued else [],
                order_amount=None if order is None else ev.PositiveMoney(amount_minor=order, currency="SGD"))

        payloads = [decision(0, "s-late", 2, 100, 4000), decision(1, "s-late", 2, 150, 5000),
                    decision(2, "s-late", 2, 150, 2000), decision(3, "s-late", 2, 400, None),  # before issue 15
                    decision(4, "s-late", 1, 900, 5000),  # the previous version, same month: not its level now
                    decision(5, "s-late", 2, 120, 5000, outcome=ev.DecisionOutcome.HOLDOUT),  # gives nothing
                    decision(6, "s-new", 1, 250, 5000, shadow=True, outcome=ev.DecisionOutcome.WOULD_ISSUE)]
        for i, p in enumerate(payloads):
            records.append(make_envelope("decision.recorded", p, source="t", region="SG", occurred_at=now,
                                         event_id=f"mkt-d{i}"))
        vol = ev.OrderVolumeReported(day=today, orders=10, gmv=ev.NonNegativeMoney(amount_minor=50_000, currency="SGD"))
        volume = make_envelope("order.volume_reported", vol, source="t", region="SG", occurred_at=now, event_id="mkt-v")
        for env, topic in [*((r, decisions_topic) for r in records), (volume, volume_topic)]:
            _, key, value, headers = record_for(env)
            await (await producer.send(topic, value, key, headers))
        tokens = _tokens(settings)
        h = {"Authorization": f"Bearer {tokens.issue('mia', roles=['strategy_manager'], regions=['SG'])}"}
        started = time.monotonic()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://insights",
                                     headers=h) as client:
            while True:
                rep = (await client.get("/v1/market/SG")).json()
                if len(rep["strategies"]) == 2 and rep["average_order_minor"]:
                    break
                assert time.monotonic() - started < 60, rep
                await asyncio.sleep(0.2)
            live, shadow = rep["strategies"]
            # s-late v2 gave 100, 150, 150, 400: median (nearest rank) 150; shares 250, 300, 750 bp: median 3%
            assert (live["strategy"], live["version"], live["decisions"], live["median_minor"]) == ("s-late", 2, 4, 150)
            assert (live["median_pct_of_order"], live["with_order_value"]) == (3.0, 3)
            # SG's sample references for late delivery: 100 (Lazada) to 200 (Shopee): 150 is at, and trails 200
            assert (live["position"], live["gap_to_best_minor"]) == ("at", 50)
            assert live["median_pct_of_average_order"] == 3.0  # 150 of a 5,000 average order
            assert (shadow["strategy"], shadow["shadow"], shadow["position"]) == ("s-new", True, "above")
            assert rep["trails_best_reference"] is True and rep["examples_only"] is True
            assert rep["trailing"] == [{"scenario": "late_delivery", "best_minor": 200,
                                        "best_reference": "Shopee: On-Time Guarantee", "strategies": ["s-late"]}]
            overview = (await client.get("/v1/market")).json()
            assert overview["trailing"] == ["SG"]
            as_csv = await client.get("/v1/market/SG", params={"format": "csv"})
            assert as_csv.status_code == 200 and ",s-late,2,false,late_delivery,4,150,3.0," in as_csv.text
            assert (await client.get("/v1/market/MY")).status_code == 403
            bad = await client.get("/v1/market/SG", params={"period": "2026-W01"})
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "period"
            # a broken reference file answers a problem naming the field, not a half report
            broken = tmp_dir(monkeypatch)
            (broken / "SG.yaml").write_text("region: SG\ncurrency: SGD\nreferences:\n  - {marketplace: X}\n")
            app2 = build_app(Settings(), compactor=False)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app2), base_url="http://insights",
                                         headers=h) as c2:
                err = await c2.get("/v1/market/SG")
                assert err.status_code == 500 and err.json()["errors"][0]["field"] == "references[0].policy"
                us = tokens.issue("u", roles=["finance"], regions=["US"])
                missing = await c2.get("/v1/market/US", headers={"Authorization": f"Bearer {us}"})
                assert missing.status_code == 404  # no reference file for US in that folder
    finally:
        await producer.stop()
        await ctx.stop()


def tmp_dir(monkeypatch):  # type: ignore[no-untyped-def]
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="market-"))
    monkeypatch.setenv("INSIGHTS_MARKET_DIR", str(path))
    return path


async def test_cli_budget_plan_and_market_report(fresh_database, monkeypatch, tmp_path, capsys):
    from services.insights.__main__ import main as cli

    async def main(argv: list[str]) -> int:
        return await asyncio.to_thread(cli, argv)  # the CLI runs its own event loop

    await migrate(fresh_database, "insights", MIGRATIONS)
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    monkeypatch.setenv("INSIGHTS_MARKET_DIR", "")
    today = SG.local(datetime.now(UTC)).date()
    nxt = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    out = tmp_path / "plan.csv"
    assert await main(["budget-plan", "--region", "SG", "--period", f"{nxt:%Y-%m}", "-o", str(out)]) == 0
    # an empty history plans nothing, says so and still has every section
    assert out.read_text().startswith("section,region,period") and "calibration,SG" in out.read_text()
    for argv, message in ((["--region", "XX", "--period", f"{nxt:%Y-%m}"], "XX"),
                          (["--region", "SG", "--period", "2026-W01"], "period"),
                          (["--region", "SG", "--period", f"{today.year - 1}-01"], "period")):
        assert await main(["budget-plan", *argv, "-o", str(tmp_path / "x.json")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert await main(["market-report", "--region", "MY", "--check"]) == 0
    assert "valid" in capsys.readouterr().err
    broken = tmp_path / "MY.yaml"
    broken.write_text("region: MY\ncurrency: MYR\nreferences:\n  - {marketplace: Shopee, policy: OTG, "
                      "scenario: late_delivery, amount_minor: 0, what: v, source: s, as_of: 2024-04-01, "
                      "status: example}\n")
    assert await main(["market-report", "--region", "MY", "--references", str(broken), "--check"]) == 2
    assert "references[0].amount_minor" in capsys.readouterr().err
    report = tmp_path / "market.json"
    assert await main(["market-report", "--region", "MY", "-o", str(report)]) == 0
    body = orjson.loads(report.read_bytes())
    assert body["region"] == "MY" and body["strategies"] == [] and body["trails_best_reference"] is False
    assert body["scenarios_without_strategy"] == ["late_delivery", "not_received"]
