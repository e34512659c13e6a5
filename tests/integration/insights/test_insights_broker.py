"""insights end to end on the real broker: events produced to its topics show in a report within 60 s,
a redelivered record (same event id) counts once, and a compensation produced before its ticket moves to
the ticket's day when the ticket arrives."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.insights.app import build_app
from services.insights.config import Settings
from shared.auth import TokenService
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from shared.db import migrate
from shared.kafka import EventProducer
from shared.kafka.producer import record_for
from tests.integration.insights.insights_support import MIGRATIONS

pytestmark = pytest.mark.integration
FRESHNESS_SECONDS = 60  # the promise: new events show in reports within this


async def test_events_show_within_a_minute_once_each(fresh_database, kafka_bootstrap, make_topics, monkeypatch):
    tickets_topic, comps_topic = await make_topics("tickets", "comps")
    await migrate(fresh_database, "insights", MIGRATIONS)
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("INSIGHTS_CONSUMER_GROUP", f"insights-{tickets_topic}")
    monkeypatch.setenv("INSIGHTS_COMPACT_INTERVAL_SECONDS", "0.2")
    settings = Settings()
    app = build_app(settings, topics=[tickets_topic, comps_topic])
    ctx = app.state.ctx
    await ctx.start()
    producer = EventProducer(settings, "test-feed")
    await producer.start()
    try:
        day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=2)
        ticket = ev.TicketOpened(ticket_id="BRK-T1", order_id="O1", buyer_id="B1", seller_id="S1",
                                 reason=ev.TicketReason.DAMAGED,
                                 order_amount=ev.PositiveMoney(amount_minor=4000, currency="SGD"))
        comp = ev.ManualCompensationIssued(
            compensation_id="BRK-M1", ticket_id="BRK-T1", order_id="O1", buyer_id="B1", agent_id="A", team="t",
            kind=ev.CompensationKind.STORE_CREDIT, amount=ev.PositiveMoney(amount_minor=700, currency="SGD"),
            reason_code="damaged",
            liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=700)])
        comp_env = make_envelope("compensation.manual_issued", comp, source="t", region="SG",
                                 occurred_at=day + timedelta(days=1), event_id="brk-m1")
        ticket_env = make_envelope("ticket.opened", ticket, source="t", region="SG", occurred_at=day,
                                   event_id="brk-t1")
        # the compensation first, twice (a redelivery), then its ticket
        for env, topic in ((comp_env, comps_topic), (comp_env, comps_topic), (ticket_env, tickets_topic)):
            _, key, value, headers = record_for(env)
            await (await producer.send(topic, value, key, headers))
        token = TokenService(settings.auth_token_secret.get_secret_value(), settings.auth_token_issuer).issue(
            "ops", roles=["ops_admin"], regions=["SG"])
        local_day = day.astimezone(ZoneInfo("Asia/Singapore")).date().isoformat()
        started = time.monotonic()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://insights",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            while True:
                rep = (await client.get("/v1/reports/SG", params={"period": local_day})).json()
                if rep["volume"]["tickets"] == 1 and rep["compensations"]["count"] == 1:
                    break
                assert time.monotonic() - started < FRESHNESS_SECONDS, rep["volume"]
                await asyncio.sleep(0.2)
            assert rep["compensations"]["amount_minor"] == 700  # once, though delivered twice
            assert rep["volume"]["compensated_tickets"] == 1
            assert rep["compensations"]["time_to_compensate"]["p50_seconds"] == 86400
            # nothing left at the compensation's own day
            next_day = (datetime.fromisoformat(local_day) + timedelta(days=1)).date().isoformat()
            later = (await client.get("/v1/reports/SG", params={"period": next_day})).json()
            assert later["compensations"]["count"] == 0
    finally:
        await producer.stop()
        await ctx.stop()


async def test_the_approval_stage_and_corrective_actions_arrive_from_their_topics(
        fresh_database, kafka_bootstrap, make_topics, monkeypatch):
    """A request queued and then approved by a lead, a flagged manual compensation and a corrective action,
    produced to their topics (the approval steps out of order), show in the report of their local day."""
    approvals_topic, actions_topic = await make_topics("approvals", "actions")
    await migrate(fresh_database, "insights", MIGRATIONS)
    monkeypatch.setenv("DATABASE_URL", fresh_database)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("INSIGHTS_CONSUMER_GROUP", f"insights-{approvals_topic}")
    settings = Settings()
    app = build_app(settings, topics=[approvals_topic, actions_topic])
    ctx = app.state.ctx
    await ctx.start()
    producer = EventProducer(settings, "test-feed")
    await producer.start()
    try:
        asked = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0) - timedelta(days=2)
        sgd = "SGD"
        common = dict(request_id="REQ-1", ticket_id="T1", order_id="O1", buyer_id="B1", agent_id="A1", team="t1",
                      reason_code="damaged", kind=ev.CompensationKind.VOUCHER,
                      requested_amount=ev.PositiveMoney(amount_minor=9000, currency=sgd), requested_at=asked)
        queued = ev.CompensationRequestDecided(
            **common, outcome=ev.RequestOutcome.AWAITING_APPROVAL, automatic=True, decided_by="authority_limits",
            reason="above max_single", exceeded=["max_single"], decided_at=asked, due_at=asked + timedelta(hours=4))
        approved = ev.CompensationRequestDecided(
            **common, outcome=ev.RequestOutcome.APPROVED, automatic=False, decided_by="lead-1", reason="ok",
            approved_amount=ev.PositiveMoney(amount_minor=8000, currency=sgd), decided_at=asked + timedelta(hours=2))
        flagged = ev.CompensationIssueFlagged(
            compensation_id="MC-9", ticket_id="T9", buyer_id="B9", agent_id="A1", team="t1", reason_code="damaged",
            issued_amount=ev.PositiveMoney(amount_minor=500, currency=sgd), mismatches=[ev.IssueMismatch.NO_REQUEST],
            finding="no request", issued_at=asked)
        action = ev.CorrectiveActionRecorded(
            action_id=1, source=ev.ActionSource.FINDING, target_type=ev.ActionTargetType.AGENT, target_id="A1",
            kind="coaching", owner="lead-1", due_on=asked.date() + timedelta(days=7), status=ev.ActionStatus.OPEN,
            opened_by="lead-1", opened_at=asked, updated_at=asked)
        for event_type, payload, event_id, topic in (
                ("compensation.request_decided", approved, "rq-2", approvals_topic),  # the answer before the queueing
                ("compensation.request_decided", queued, "rq-1", approvals_topic),
                ("compensation.issue_flagged", flagged, "fl-1", approvals_topic),
                ("audit.corrective_action_recorded", action, "ac-1", actions_topic)):
            env = make_envelope(event_type, payload, source="t", region="SG", occurred_at=asked, event_id=event_id)
            _, key, value, headers = record_for(env)
            await (await producer.send(topic, value, key, headers))
        token = TokenService(settings.auth_token_secret.get_secret_value(), settings.auth_token_issuer).issue(
            "lead", roles=["strategy_manager"], regions=["SG"])
        local_day = asked.astimezone(ZoneInfo("Asia/Singapore")).date().isoformat()
        started = time.monotonic()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://insights",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            while True:
                rep = (await client.get("/v1/reports/SG", params={"period": local_day})).json()
                if (rep["approvals"]["requests"] == 1 and rep["approvals"]["issues_flagged"]["count"] == 1
                        and rep["corrective_actions"]["opened"] == 1):
                    break
                assert time.monotonic() - started < FRESHNESS_SECONDS, rep["approvals"]
                await asyncio.sleep(0.2)
        a = rep["approvals"]
        assert (a["queued"], a["approved_by_approver"], a["awaiting"], a["within_authority"]) == (1, 1, 0, 0)
        assert a["approval_time_seconds"]["p50"] == 7200
        assert (a["requested_minor"], a["approved_minor"]) == (9000, 8000)
        assert a["issues_flagged"]["by_mismatch"] == {"no_request": 1}
        assert rep["corrective_actions"]["by_kind"][0]["kind"] == "coaching"
        assert rep["corrective_actions"]["open"] == 1
    finally:
        await producer.stop()
        await ctx.stop()
