"""The JSON API over HTTP (the real app, PostgreSQL behind it): authentication, region grants, roles,
problem details, and the audit flow from claim to dispute."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import yaml

from services.audit_sampler.app import build_app, refresh_gauges
from services.audit_sampler.config import Settings
from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.handlers import ManualCompensationHandler
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope, validate_payload
from shared.kafka import Delivered

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
ALL_OK = {"warranted": True, "amount_correct": True, "kind_correct": True, "liable_party_correct": True,
          "evidence_sufficient": True, "policy_compliant": True, "not_duplicate": True}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def api(audit_database, tmp_path_factory):
    folder = tmp_path_factory.mktemp("policies")
    base = {"seed": "api-seed-000001", "baseline_rate": 1.0, "agent_weekly_minimum": 0}
    (folder / "default.yaml").write_text(yaml.safe_dump({**base, "region": "default"}))
    settings = Settings(database_url=audit_database, policy_dir=str(folder))
    app = build_app(settings)
    ctx = app.state.ctx
    # the lifespan (broker, consumers) is not needed to serve the API: requests use the engine only
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://audit") as client:
        yield client, ctx
    await ctx.engine.dispose()


def bearer(ctx, subject: str, role: str, regions=("US",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx.tokens.issue(subject, [role], regions)}"}


async def enqueue(ctx, cid: str, region: str = "US", agent: str = "agent-1") -> None:
    currency = {"US": "USD", "GB": "GBP"}[region]
    payload = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id="T1", order_id="O1", buyer_id=f"B-{cid}", seller_id="S1", agent_id=agent,
        team="team-1", kind=ev.CompensationKind.VOUCHER, amount=ev.PositiveMoney(amount_minor=800, currency=currency),
        reason_code="late_delivery",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S1"), amount_minor=800)])
    envelope = make_envelope("compensation.manual_issued", payload, source="test", region=region, occurred_at=NOW)
    handler = ManualCompensationHandler(lambda: _policies(ctx), lambda: NOW)
    async with ctx.engine.begin() as conn:
        await handler(conn, [Delivered(envelope, validate_payload(envelope), "manual", 0, 0, None, 0)])


def _policies(ctx):
    return PolicySet.load(ctx.settings.policy_dir)


async def test_requests_without_valid_credentials_get_401(api):
    client, _ = api
    for method, path in [("GET", "/v1/queues"), ("POST", "/v1/queues/US/claim"), ("GET", "/v1/items/1")]:
        r = await client.request(method, path)
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    r = await client.get("/v1/queues", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401


async def test_regions_without_a_grant_get_403(api):
    client, ctx = api
    await enqueue(ctx, "gb-1", region="GB")
    us = bearer(ctx, "us-auditor", "auditor")
    r = await client.get("/v1/queues", params={"region": "GB"}, headers=us)
    assert r.status_code == 403 and r.headers["content-type"] == PROBLEM
    assert r.json()["errors"][0]["field"] == "region"
    assert (await client.post("/v1/queues/GB/claim", headers=us)).status_code == 403
    gb = bearer(ctx, "gb-auditor", "auditor", ("GB",))
    item = (await client.post("/v1/queues/GB/claim", headers=gb)).json()
    assert item["region"] == "GB"
    assert (await client.get(f"/v1/items/{item['id']}", headers=us)).status_code == 403
    assert (await client.post(f"/v1/items/{item['id']}/release", headers=us)).status_code == 403
    queues = (await client.get("/v1/queues", headers=us)).json()["queues"]
    assert all(q["region"] == "US" for q in queues)


async def test_auditors_cannot_do_leads_actions(api):
    client, ctx = api
    await enqueue(ctx, "roles-1")
    auditor = bearer(ctx, "plain-auditor", "auditor")
    item = (await client.post("/v1/queues/US/claim", headers=auditor)).json()
    r = await client.post(f"/v1/items/{item['id']}/reassign", json={"auditor_id": "x"}, headers=auditor)
    assert r.status_code == 403 and r.headers["content-type"] == PROBLEM
    gold = {"region": "US", "expected": ALL_OK, "compensation": {
        "compensation_id": "g", "ticket_id": "t", "order_id": "o", "buyer_id": "b", "agent_id": "a", "team": "t",
        "kind": "voucher", "amount": {"amount_minor": 100, "currency": "USD"}, "reason_code": "damaged",
        "liability": [{"party": {"type": "platform"}, "amount_minor": 100}]}}
    assert (await client.post("/v1/gold-items", json=gold, headers=auditor)).status_code == 403
    assert (await client.post("/v1/verdicts/1/dispute", json={"reason": "x"}, headers=auditor)).status_code == 403
    assert (await client.post("/v1/disputes/1/resolve", json={"outcome": "uphold"},
                              headers=auditor)).status_code == 403
    finance = bearer(ctx, "fin", "finance")
    assert (await client.get("/v1/queues", headers=finance)).status_code == 403


async def test_bad_input_gets_problem_details_naming_the_field(api):
    client, ctx = api
    await enqueue(ctx, "bad-1")
    auditor = bearer(ctx, "careful-auditor", "auditor")
    item = (await client.post("/v1/queues/US/claim", headers=auditor)).json()
    url = f"/v1/items/{item['id']}/verdict"
    r = await client.post(url, json={"attributes": {"warranted": True}, "passed": True}, headers=auditor)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "body.attributes.amount_correct" in {e["field"] for e in r.json()["errors"]}
    r = await client.post(url, json={"attributes": {**ALL_OK, "kind_correct": False}, "passed": True},
                          headers=auditor)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["passed"]
    r = await client.post(url, json={"attributes": {**ALL_OK, "kind_correct": False}, "passed": False},
                          headers=auditor)
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["error_category"]
    r = await client.post(url, json={"attributes": {**ALL_OK, "amount_correct": False}, "passed": False,
                                     "error_category": "wrong_amount", "corrected_amount_minor": 1.5},
                          headers=auditor)
    assert r.status_code == 422  # money is integer minor units, never floats
    r = await client.post(url, json={"attributes": ALL_OK, "passed": True, "extra": 1}, headers=auditor)
    assert r.status_code == 422
    assert (await client.post("/v1/items/999999/verdict", json={"attributes": ALL_OK, "passed": True},
                              headers=auditor)).status_code == 404
    assert (await client.post("/v1/queues/ZZ/claim", headers=bearer(ctx, "a", "auditor", ("*",)))).status_code == 404
    lead = bearer(ctx, "lead-x", "lead")
    r = await client.post("/v1/gold-items", headers=lead, json={
        "region": "US", "expected": ALL_OK, "compensation": {
            "compensation_id": "g", "ticket_id": "t", "order_id": "o", "buyer_id": "b", "agent_id": "a",
            "team": "t", "kind": "voucher", "amount": {"amount_minor": 100, "currency": "GBP"},
            "reason_code": "damaged", "liability": [{"party": {"type": "platform"}, "amount_minor": 100}]}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "compensation.amount.currency"
    # nothing changed: the item is still claimed and has no verdict
    detail = (await client.get(f"/v1/items/{item['id']}", headers=auditor)).json()
    assert detail["status"] == "claimed" and detail["verdict"] is None


async def test_inconsistent_verdicts_get_422_naming_the_field_and_change_nothing(api):
    client, ctx = api
    await enqueue(ctx, "inconsistent-1")
    auditor = bearer(ctx, "consistent-auditor", "auditor")
    item = (await client.post("/v1/queues/US/claim", headers=auditor)).json()
    url = f"/v1/items/{item['id']}/verdict"
    cases = [
        # the field case: "duplicate" while not_duplicate was answered yes
        ({"attributes": {**ALL_OK, "kind_correct": False}, "passed": False, "error_category": "duplicate"},
         "error_category", "duplicate means not_duplicate is no"),
        # a category with every answer yes
        ({"attributes": ALL_OK, "passed": True, "error_category": "duplicate"},
         "error_category", "every attribute was answered yes"),
        # an amount correction while the amount was answered correct
        ({"attributes": {**ALL_OK, "evidence_sufficient": False}, "passed": False,
          "error_category": "missing_evidence", "corrected_amount_minor": 300},
         "corrected_amount_minor", "only when amount_correct is no"),
        # liable parties while the liable party was answered correct
        ({"attributes": {**ALL_OK, "amount_correct": False}, "passed": False, "error_category": "wrong_amount",
          "corrected_amount_minor": 300,
          "corrected_liability": [{"party": {"type": "platform"}, "amount_minor": 300}]},
         "corrected_liability", "only when liable_party_correct is no"),
    ]
    for body, field, says in cases:
        r = await client.post(url, json=body, headers=auditor)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
        problem = r.json()
        assert [e["field"] for e in problem["errors"]] == [field]
        assert says in problem["errors"][0]["message"]
    detail = (await client.get(f"/v1/items/{item['id']}", headers=auditor)).json()
    assert detail["status"] == "claimed" and detail["verdict"] is None
    r = await client.post(url, headers=auditor, json={
        "attributes": {**ALL_OK, "not_duplicate": False, "warranted": False}, "passed": False,
        "error_category": "duplicate"})
    assert r.status_code == 201, r.text


async def test_the_audit_flow_over_http(api):
    client, ctx = api
    await enqueue(ctx, "flow-1", agent="agent-flow")
    auditor, lead = bearer(ctx, "flow-auditor", "auditor"), bearer(ctx, "flow-lead", "lead")
    senior = bearer(ctx, "flow-senior", "senior_auditor")
    # drain what other tests left, auditing it as correct, until flow-1 comes up
    while True:
        r = await client.post("/v1/queues/US/claim", headers=auditor)
        assert r.status_code == 200
        item = r.json()
        if item["compensation_id"] == "flow-1":
            break
        await client.post(f"/v1/items/{item['id']}/verdict", json={"attributes": ALL_OK, "passed": True},
                          headers=auditor)
    # auditors audit blind: no sampling rationale (it would single out gold and re-audit items); leads see it
    assert "reasons" not in item and "inclusion_probability" not in item and item["item_kind"] == "audit"
    seen_by_lead = (await client.get(f"/v1/items/{item['id']}", headers=lead)).json()
    assert seen_by_lead["inclusion_probability"] == 1.0 and seen_by_lead["reasons"] == ["baseline"]
    r = await client.post(f"/v1/items/{item['id']}/verdict", headers=auditor, json={
        "attributes": {**ALL_OK, "liable_party_correct": False}, "passed": False,
        "error_category": "wrong_liable_party", "note": "carrier lost it",
        "corrected_liability": [{"party": {"type": "carrier", "id": "K1"}, "amount_minor": 800}]})
    assert r.status_code == 201, r.text
    verdict = r.json()
    assert verdict["correction_id"] and verdict["corrected_amount_minor"] == 800
    assert (await client.post("/v1/queues/US/claim", headers=auditor)).status_code == 204
    queues = (await client.get("/v1/queues", params={"region": "US"}, headers=auditor)).json()["queues"]
    assert queues and {"waiting", "claimed", "oldest_age_seconds", "sla_hours", "sla_breached"} <= set(queues[0])
    r = await client.post(f"/v1/verdicts/{verdict['id']}/dispute", json={"reason": "seller accepted blame"},
                          headers=lead)
    assert r.status_code == 201
    dispute = r.json()
    listed = (await client.get("/v1/disputes", headers=lead)).json()["disputes"]
    assert dispute["id"] in {d["id"] for d in listed}
    # whoever raised it, or gave the verdict, may not resolve it, whatever roles they hold
    for who in (bearer(ctx, "flow-lead", "senior_auditor"), bearer(ctx, "flow-auditor", "senior_auditor")):
        r = await client.post(f"/v1/disputes/{dispute['id']}/resolve", json={"outcome": "overturn"}, headers=who)
        assert r.status_code == 403 and r.headers["content-type"] == PROBLEM
        assert r.json()["errors"][0]["field"] == "dispute_id"
    r = await client.post(f"/v1/disputes/{dispute['id']}/resolve", json={"outcome": "uphold"}, headers=senior)
    assert r.status_code == 200 and r.json()["status"] == "upheld" and r.json()["reverse_correction_id"] is None
    detail = (await client.get(f"/v1/items/{item['id']}", headers=lead)).json()
    assert detail["verdict"]["status"] == "upheld"
    assert detail["agent_history"][0]["compensation_id"] == "flow-1"


async def test_metrics_show_queues_verdicts_and_estimated_accuracy(api):
    client, ctx = api
    await enqueue(ctx, "metrics-1", region="GB")
    await refresh_gauges(ctx, _policies(ctx))
    body = (await client.get("/metrics")).text
    assert 'audit_queue_depth{queue="normal",region="GB"}' in body
    assert 'audit_queue_oldest_age_seconds{queue="normal",region="GB"}' in body
    # the AuditQueueOverSla alert compares the age with the queue's SLA: both must be exported
    assert 'audit_queue_sla_seconds{queue="normal",region="GB"} 259200.0' in body
    assert 'audit_sampled_total{reason="baseline",region="GB"}' in body
    assert 'audit_verdicts_total{item_kind="sample",outcome="fail",region="US"}' in body
    assert 'audit_verdict_attribute_failures_total{attribute="liable_party_correct",region="US"}' in body
    accuracy = [line for line in body.splitlines() if line.startswith('audit_estimated_accuracy_ratio{region="US"}')]
    assert accuracy and float(accuracy[0].split()[-1]) == 0.0  # its only audited item failed
