"""Spike detection running in insights, on the real database and broker, and the root-cause API.

Series are fed as ticket events through the real handler: five weeks of about 20 tickets a day (a short
baseline: the detector's documented wider band), then one day of 70. The round stores each alert once,
enqueues its event once (two replicas racing included), sets the metrics, and lists the episode with its
expected value, band and contributors; the volume guard keeps a 1-a-day seller quiet through a jump to 8.
The root-cause API splits a compensation-rate change into mix and rate exactly, on hand-computed numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY
from sqlalchemy import text

from services.insights.config import Settings
from services.insights.spikes_job import RoundResult, SpikeWatch
from shared.contracts import events as ev
from shared.contracts.registry import decode_envelope
from shared.contracts.topics import Topic
from shared.db import make_engine
from shared.regions import region
from tests.integration.insights.insights_support import apply, delivered, insights_engine

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
HISTORY_DAYS = 35


@pytest.fixture(scope="module")
async def engine(fresh_database):
    engine = await insights_engine(fresh_database)
    yield engine
    await engine.dispose()


def _ticket(tid: str, currency: str, reason: ev.TicketReason, seller: str, carrier: str | None) -> ev.TicketOpened:
    return ev.TicketOpened(ticket_id=tid, order_id=f"O-{tid}", buyer_id=f"B-{tid}", seller_id=seller,
                           carrier_id=carrier, reason=reason,
                           order_amount=ev.PositiveMoney(amount_minor=5000, currency=currency))


def _local_noon(day: date, tz: str) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=ZoneInfo(tz)).astimezone(UTC)


async def feed_series(engine, code: str, tag: str, reason: ev.TicketReason) -> date:  # type: ignore[no-untyped-def]
    """Five weeks of 18-22 tickets a day for seller {tag}-S1 on carrier {tag}-C1, then yesterday 20 there plus
    50 on carrier {tag}-C2; a small seller {tag}-S2 (no carrier, another reason) at 1 a day, 8 yesterday.
    Returns yesterday (the region's local day)."""
    r = region(code)
    yesterday = r.local(NOW).date() - timedelta(days=1)
    events = []
    for back in range(HISTORY_DAYS, -1, -1):
        day = yesterday - timedelta(days=back)
        at = _local_noon(day, r.timezone)
        plan = [(f"{tag}-C1", 20), (f"{tag}-C2", 50)] if back == 0 else [(f"{tag}-C1", 18 + back % 5)]
        n = 0
        for carrier, count in plan:
            for i in range(count):
                n += 1
                tid = f"{tag}-{day.isoformat()}-{n}"
                events.append(delivered("ticket.opened", _ticket(tid, r.currency, reason, f"{tag}-S1", carrier),
                                        region=code, at=at + timedelta(seconds=i), event_id=f"e-{tid}"))
        for i in range(8 if back == 0 else 1):
            tid = f"{tag}-{day.isoformat()}-small-{i}"
            events.append(delivered("ticket.opened", _ticket(tid, r.currency, ev.TicketReason.WRONG_ITEM,
                                                             f"{tag}-S2", None),
                                    region=code, at=at, event_id=f"e-{tid}"))
    for i in range(0, len(events), 500):
        await apply(engine, events[i:i + 500])
    return yesterday


def _settings(url: str, monkeypatch) -> Settings:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", url)
    return Settings()


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _scalar(engine, sql: str, **params):  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def test_a_spike_is_stored_once_published_once_and_counted(engine, fresh_database, monkeypatch):
    yesterday = await feed_series(engine, "SG", "SPK", ev.TicketReason.DAMAGED)
    settings = _settings(fresh_database, monkeypatch)
    before = _metric("insights_spikes_detected_total", region="SG", dimension="reason", kind="spike")
    first, second = SpikeWatch(engine, settings, regions=["SG"]), SpikeWatch(engine, settings, regions=["SG"])
    results = await asyncio.gather(first.run_once(NOW), second.run_once(NOW))
    assert sum(r.new for r in results if r is not None) == 2

    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT dimension, series_key, kind, day, observed, expected, lower_edge, upper_edge, contributors, "
            "event_id FROM spike_alerts WHERE region = 'SG' ORDER BY dimension"))).mappings().all()
    assert [(r["dimension"], r["series_key"], r["kind"], r["day"]) for r in rows] == [
        ("reason", "damaged", "spike", yesterday), ("seller", "SPK-S1", "spike", yesterday)]
    reason, seller = rows
    assert reason["observed"] == 70 and 17 < reason["expected"] < 23
    assert reason["lower_edge"] < reason["expected"] < reason["upper_edge"] < 40
    # the carrier that appeared with 50 tickets carries the excess; the usual one is not listed
    assert reason["contributors"][0]["key"] == "SPK-C2" and reason["contributors"][0]["observed"] == 50
    assert "SPK-C1" not in [c["key"] for c in reason["contributors"][:1]]
    assert seller["contributors"][0] == {**seller["contributors"][0], "key": "damaged", "observed": 70,
                                         "dimension": "reason"}
    # the guard: seller SPK-S2 and reason wrong_item went from 1 to 8 a day, under the minimum volume
    assert await _scalar(engine, "SELECT count(*) FROM spike_alerts WHERE series_key IN ('SPK-S2', 'wrong_item')") == 0

    outbox = await _scalar(engine, "SELECT count(*) FROM outbox WHERE topic = :t", t=Topic.INSIGHT_SPIKES.value)
    assert outbox == 2
    # a later round over the same rollups (a replica that has not judged them yet) finds the same alerts and
    # publishes nothing more; a replica that judged the same counts before skips the detector's work
    again = await SpikeWatch(engine, settings, regions=["SG"]).run_once(NOW + timedelta(minutes=15))
    assert again is not None and again.found == 2 and again.new == 0
    judged_before = max(results, key=lambda r: r.judged if r else -1)
    assert judged_before is not None and judged_before.judged >= 3
    for watch in (first, second):
        if watch._judged:
            skipped = await watch.run_once(NOW + timedelta(minutes=30))
            assert skipped is not None and skipped.judged == 0
    assert await _scalar(engine, "SELECT count(*) FROM outbox WHERE topic = :t", t=Topic.INSIGHT_SPIKES.value) == 2
    assert await _scalar(engine, "SELECT count(*) FROM spike_alerts WHERE region = 'SG'") == 2

    assert _metric("insights_spikes_detected_total", region="SG", dimension="reason", kind="spike") == before + 1
    assert _metric("insights_spike_episodes_open", region="SG", dimension="reason") == 1
    assert _metric("insights_spike_episodes_open", region="SG", dimension="seller") == 1
    assert _metric("insights_spike_episodes_open", region="SG", dimension="carrier") == 0


async def test_two_replicas_racing_publish_each_alert_once_on_the_broker(engine, fresh_database, kafka_bootstrap,
                                                                        monkeypatch):
    from shared.kafka import EventProducer
    from shared.outbox import OutboxRelay

    await feed_series(engine, "ID", "JKT", ev.TicketReason.LOST_IN_TRANSIT)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    settings = _settings(fresh_database, monkeypatch)
    other_engine = make_engine(fresh_database, "insights", pool_size=4)
    try:
        one, two = SpikeWatch(engine, settings, regions=["ID"]), SpikeWatch(other_engine, settings, regions=["ID"])
        # bypass the round's lock: both replicas judge the same series and insert at the same time
        results = (RoundResult(), RoundResult())
        await asyncio.gather(one._judge(region("ID"), "reason", NOW, results[0]),
                             two._judge(region("ID"), "reason", NOW, results[1]))
        assert results[0].found == results[1].found == 1
        assert results[0].new + results[1].new == 1
        await asyncio.gather(one.run_once(NOW), two.run_once(NOW))
    finally:
        await other_engine.dispose()
    alert_ids = {r[0] async for r in _stream(engine, "SELECT alert_id FROM spike_alerts WHERE region = 'ID'")}
    assert len(alert_ids) == 2

    producer = EventProducer(settings, "insights-test")
    await producer.start()
    relay = OutboxRelay(engine, producer, "insights-spikes-test")
    await relay.start()
    try:
        deadline = time.monotonic() + 60
        while await _scalar(engine, "SELECT count(*) FROM outbox") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await _scalar(engine, "SELECT count(*) FROM outbox") == 0
    finally:
        await relay.stop()
        await producer.stop()

    seen: Counter[str] = Counter()
    consumer = AIOKafkaConsumer(Topic.INSIGHT_SPIKES.value, bootstrap_servers=kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.assignment()
        while not partitions:
            await asyncio.sleep(0.05)
            partitions = consumer.assignment()
        ends = await consumer.end_offsets(list(partitions))
        deadline = time.monotonic() + 30

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind() and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    env, payload = decode_envelope(rec.value)
                    if env.region == "ID":
                        assert isinstance(payload, ev.SpikeDetected)
                        assert rec.key == b"ID"
                        seen[payload.alert_id] += 1
    finally:
        await consumer.stop()
    assert seen == Counter(dict.fromkeys(alert_ids, 1))


async def _stream(engine, sql: str):  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        for row in (await conn.execute(text(sql))).all():
            yield row


async def _root_cause_fixture(engine) -> None:  # type: ignore[no-untyped-def]
    """Malaysia, 2026-09-01 and 02. Carrier MY-C1 compensates 1 ticket in 5, MY-C2 3 in 5, both days; the
    tickets move from half on each to three quarters on MY-C1: the rate falls from 8/20 to 12/40, all mix."""
    events, comps = [], []
    plan = {date(2026, 9, 1): {"MY-C1": (10, 2), "MY-C2": (10, 6)},
            date(2026, 9, 2): {"MY-C1": (30, 6), "MY-C2": (10, 6)}}
    for day, carriers in plan.items():
        at = _local_noon(day, "Asia/Kuala_Lumpur")
        for carrier, (tickets, compensated) in carriers.items():
            for i in range(tickets):
                tid = f"RC-{day.isoformat()}-{carrier}-{i}"
                events.append(delivered("ticket.opened", _ticket(tid, "MYR", ev.TicketReason.DAMAGED, "MY-S1", carrier),
                                        region="MY", at=at, event_id=f"e-{tid}"))
                if i < compensated:
                    comps.append(delivered("compensation.manual_issued", ev.ManualCompensationIssued(
                        compensation_id=f"M-{tid}", ticket_id=tid, order_id=f"O-{tid}", buyer_id=f"B-{tid}",
                        seller_id="MY-S1", agent_id="A1", team="t1", kind=ev.CompensationKind.VOUCHER,
                        amount=ev.PositiveMoney(amount_minor=1000, currency="MYR"), reason_code="damaged",
                        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM),
                                                     amount_minor=1000)]),
                        region="MY", at=at + timedelta(hours=1), event_id=f"e-M-{tid}"))
    await apply(engine, events)
    await apply(engine, comps)


async def test_root_causes_and_spikes_api_scoped_and_validated(engine, fresh_database, monkeypatch, tmp_path):
    from services.insights.__main__ import _root_causes
    from services.insights.app import build_app
    from shared.auth import TokenService

    await _root_cause_fixture(engine)
    if not await _scalar(engine, "SELECT count(*) FROM spike_alerts WHERE region = 'SG'"):
        await feed_series(engine, "SG", "SPK", ev.TicketReason.DAMAGED)  # this test run alone
        await SpikeWatch(engine, _settings(fresh_database, monkeypatch), regions=["SG"]).run_once(NOW)
    settings = _settings(fresh_database, monkeypatch)
    app = build_app(settings, compactor=False)
    tokens = TokenService(settings.auth_token_secret.get_secret_value(), settings.auth_token_issuer)
    h = {"Authorization": f"Bearer {tokens.issue('mia', roles=['strategy_manager'], regions=['MY', 'SG'])}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://insights") as client:
        ok = await client.get("/v1/root-causes/MY", params={"dimension": "carrier", "period": "2026-09-02"},
                              headers=h)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["previous_period"]["label"] == "2026-09-01"
        rate = body["ratios"]["compensation_rate"]
        assert rate["exact"] == {"previous": "2/5", "current": "3/10", "change": "-1/10", "mix": "-1/10", "rate": "0"}
        assert rate["change"] == "-0.100000"
        by_key = {s["key"]: s for s in rate["segments"]}
        assert by_key["MY-C1"]["exact"] == {"mix": "1/20", "rate": "0", "total": "1/20"}
        assert by_key["MY-C2"]["exact"] == {"mix": "-3/20", "rate": "0", "total": "-3/20"}
        movers = body["movers"]
        assert movers["ticket_change"] == 20 and movers["amount_change_minor"] == 4000
        assert movers["top"][0]["key"] == "MY-C1" and movers["top"][0]["ticket_contribution"] == "1.000000"
        cost = body["ratios"]["cost_per_ticket_minor"]["exact"]
        assert cost["previous"] == "400" and cost["current"] == "300"

        as_csv = await client.get("/v1/root-causes/MY", params={"dimension": "carrier", "period": "2026-09-02",
                                                                "format": "csv"}, headers=h)
        assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(as_csv.text)))
        total = next(r for r in table if r["section"] == "compensation_rate:total")
        assert (total["mix_exact"], total["rate_exact"], total["total_exact"]) == ("-1/10", "0", "-1/10")
        assert [r["key"] for r in table if r["section"] == "mover"] == ["MY-C1"]
        # the CLI writes the same CSV
        out = tmp_path / "rc.csv"
        assert await _root_causes(argparse.Namespace(
            region="MY", dimension="carrier", period="2026-09-02", start=None, end=None, top=5, measure="count",
            format=None, output=str(out))) == 0
        assert out.read_text() == as_csv.text
        # both file commands name their default file after the region and period, and refuse a bad region
        from services.insights.__main__ import _report
        monkeypatch.chdir(tmp_path)
        common = {"period": "2026-09-02", "start": None, "end": None, "format": None, "output": None}
        assert await _report(argparse.Namespace(region="MY", **common)) == 0
        assert json.loads((tmp_path / "insights-MY-2026-09-02.json").read_text())["region"] == "MY"
        assert await _root_causes(argparse.Namespace(region="MY", dimension="carrier", top=5, measure="count",
                                                     **common)) == 0
        assert (tmp_path / "insights-root-causes-MY-carrier-2026-09-02.json").is_file()
        assert await _report(argparse.Namespace(region="XX", **common)) == 2

        spikes = await client.get("/v1/spikes/SG", headers=h)
        assert spikes.status_code == 200, spikes.text
        episodes = spikes.json()["episodes"]
        assert {(e["dimension"], e["key"]) for e in episodes} == {("reason", "damaged"), ("seller", "SPK-S1")}
        reason = next(e for e in episodes if e["dimension"] == "reason")
        assert reason["days"] == 1 and reason["peak"]["observed"] == 70
        assert reason["alerts"][0]["contributors"][0]["key"] == "SPK-C2"
        if region("SG").local(datetime.now(UTC)).date() == region("SG").local(NOW).date():
            assert reason["open"]
            opened = await client.get("/v1/spikes/SG", params={"status": "open", "dimension": "seller"}, headers=h)
            assert [e["key"] for e in opened.json()["episodes"]] == ["SPK-S1"]
        spikes_csv = await client.get("/v1/spikes/SG", params={"format": "csv"}, headers=h)
        assert spikes_csv.status_code == 200 and "SPK-C2:50/" in spikes_csv.text

        # scoping, authentication, bad input
        for path in ("/v1/root-causes/ID", "/v1/spikes/ID"):
            denied = await client.get(path, params={"dimension": "reason", "period": "2026-09"}, headers=h)
            assert denied.status_code == 403, path
            assert (await client.get(path, params={"dimension": "reason", "period": "2026-09"})).status_code == 401
        for path, params, field in (
                ("/v1/root-causes/MY", {"dimension": "colour", "period": "2026-09"}, "dimension"),
                ("/v1/root-causes/MY", {"dimension": "carrier", "period": "2026-13"}, "period"),
                ("/v1/root-causes/MY", {"dimension": "carrier", "from": "2026-09-10", "to": "2026-09-01"}, "to"),
                ("/v1/root-causes/MY", {"dimension": "carrier", "period": "2026-09", "measure": "weight"}, "measure"),
                ("/v1/root-causes/MY", {"dimension": "carrier", "period": "2026-09", "format": "xml"}, "format"),
                ("/v1/root-causes/MY", {"dimension": "carrier", "period": "2026-09", "top": "0"}, "top"),
                ("/v1/spikes/SG", {"dimension": "strategy"}, "dimension"),
                ("/v1/spikes/SG", {"status": "closed"}, "status"),
                ("/v1/spikes/SG", {"days": "401"}, "days")):
            bad = await client.get(path, params=params, headers=h)
            assert bad.status_code == 422, (path, params, bad.text)
            assert bad.headers["content-type"].startswith("application/problem+json")
            assert field in orjson.dumps(bad.json()["errors"]).decode(), bad.text
        assert (await client.get("/v1/root-causes/XX", params={"dimension": "reason", "period": "2026-09"},
                                 headers=h)).status_code == 404
