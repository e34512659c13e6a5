"""intake against the real PostgreSQL and the real broker: every event type to its topic, validation,
idempotency, batches, authentication and scopes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import text

from services.intake.api import ROUTES
from shared.auth import TokenService
from shared.contracts.registry import LATEST, decode_envelope
from tests.integration.intake.intake_support import (
    Watch,
    create_key,
    intake_settings,
    migrated,
    new_id,
    received_ids,
    running,
)
from tests.unit.intake.intake_samples import sample

pytestmark = pytest.mark.integration

PATHS = {r.event_type: r.path for r in ROUTES}
TOPICS = tuple(sorted({LATEST[t].topic.value for t in PATHS}))


@pytest.fixture(scope="module")
async def service(fresh_database, kafka_bootstrap):
    settings = intake_settings(await migrated(fresh_database), kafka_bootstrap)
    async with running(settings) as svc:
        yield svc


@pytest.fixture(scope="module")
async def key(service):
    return (await create_key(service.engine, system="order-system"))[1]


@pytest.fixture
async def watch(kafka_bootstrap):
    w = await Watch(kafka_bootstrap, TOPICS).start()
    yield w
    await w.stop()


def item(event_type: str, **overrides):
    base = sample(event_type)
    if "buyer_id" in base:  # buyer-scoped events get a buyer of their own (region-keyed ones have none)
        overrides.setdefault("buyer_id", new_id("buyer"))
    return sample(event_type, event_id=new_id(event_type.split(".")[0]), **overrides)


async def test_every_event_type_arrives_on_its_topic_with_the_contract_key_and_headers(service, key, watch):
    sent = {}
    for event_type, path in PATHS.items():
        single = item(event_type, correlation_id="corr-1")
        r = await service.client.post(path, json=single, headers={"X-API-Key": key})
        assert r.status_code == 202, r.text
        answer_id = {"request_id": single["request_id"]} if event_type == "compensation.requested" else {}
        assert r.json() == {"event_id": single["event_id"], "status": "accepted", **answer_id}
        batch = [item(event_type), item(event_type)]
        r = await service.client.post(path + "/batch", json={"items": batch}, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted"]
        for it in (single, *batch):
            sent[it["event_id"]] = (event_type, it)
    arrived = await watch.until(sent, timeout=30)
    for event_id, (event_type, it) in sent.items():
        assert len(arrived[event_id]) == 1, f"{event_type} {event_id} arrived {len(arrived[event_id])} times"
        a = arrived[event_id][0]
        assert a.topic == LATEST[event_type].topic.value
        assert a.key == (it["buyer_id"] if "buyer_id" in it else "SG").encode()  # region-keyed: order volume
        assert a.headers["event_type"] == event_type.encode()
        assert a.headers["event_id"] == event_id.encode()
        assert a.headers["region"] == b"SG"
        assert a.headers["schema_version"] == str(LATEST[event_type].version).encode()
        envelope, payload = decode_envelope(__import__("orjson").dumps(a.envelope))
        assert envelope.source == "order-system" and envelope.region == "SG"
        assert getattr(payload, "buyer_id", None) == it.get("buyer_id")
        if it.get("correlation_id"):
            assert envelope.correlation_id == "corr-1" and a.headers["correlation_id"] == b"corr-1"


async def test_requests_and_received_events_are_logged_under_their_correlation_ids(service, key, caplog):
    """`make logs` follows a ticket (issue 13): the request line and each item's line at INFO, under the
    correlation id the event carries on (its own, else the request's); probes are not logged."""
    import logging

    own = item("ticket.opened", correlation_id="log-item-corr")
    plain = item("ticket.opened")
    with caplog.at_level(logging.INFO):
        r = await service.client.post("/v1/tickets/batch", json={"items": [own, plain, plain]},
                                      headers={"X-API-Key": key, "X-Correlation-Id": "log-req-corr"})
        assert r.status_code == 200, r.text
        assert (await service.client.get("/healthz")).status_code == 200
    lines = [(rec.getMessage(), rec.__dict__) for rec in caplog.records if rec.levelno == logging.INFO]
    requests = [x for m, x in lines if m == "http request"]
    assert [(x["method"], x["path"], x["status"], x["correlation_id"]) for x in requests] == [
        ("POST", "/v1/tickets/batch", 200, "log-req-corr")]
    received = [(x["event_id"], x["correlation_id"], x["status"], x["event_type"]) for m, x in lines
                if m == "event received"]
    assert received == [(own["event_id"], "log-item-corr", "accepted", "ticket.opened"),
                        (plain["event_id"], "log-req-corr", "accepted", "ticket.opened"),
                        (plain["event_id"], "log-req-corr", "duplicate", "ticket.opened")]


async def test_events_without_their_own_correlation_id_carry_the_requests(service, key, watch):
    own = item("ticket.opened", correlation_id="item-corr")
    plain = [item("ticket.opened"), item("ticket.opened")]
    r = await service.client.post("/v1/tickets/batch", json={"items": [own, *plain]},
                                  headers={"X-API-Key": key, "X-Correlation-Id": "req-corr-7"})
    assert r.status_code == 200 and r.headers["x-correlation-id"] == "req-corr-7", r.text
    single = item("ticket.opened")
    r = await service.client.post("/v1/tickets", json=single, headers={"X-API-Key": key})
    assert r.status_code == 202, r.text
    generated = r.headers["x-correlation-id"]  # intake's own id for a request that came without one
    arrived = await watch.until([e["event_id"] for e in (own, *plain, single)], timeout=30)
    expected = {own["event_id"]: "item-corr", plain[0]["event_id"]: "req-corr-7",
                plain[1]["event_id"]: "req-corr-7", single["event_id"]: generated}
    for event_id, correlation in expected.items():
        (a,) = arrived[event_id]
        assert a.envelope["correlation_id"] == correlation and a.headers["correlation_id"] == correlation.encode()


FUTURE = (datetime.now(UTC) + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize("change, status, field", [
    ({"surprise": True}, 422, "body.surprise"),
    ({"order_amount": {"amount_minor": 45.9, "currency": "SGD"}}, 422, "body.order_amount.amount_minor"),
    ({"order_amount": {"amount_minor": 4590, "currency": "USD"}}, 422, "body.order_amount.currency"),
    ({"region": "ZZ"}, 422, "body.region"),
    ({"occurred_at": "2026-11-20T09:30:00"}, 422, "body.occurred_at"),
    ({"occurred_at": FUTURE}, 422, "body.occurred_at"),
    ({"reason": "boredom"}, 422, "body.reason"),
    ({"evidence": [{"kind": "photo"}]}, 422, "body.evidence.0.uri"),
    ({"delivered_at": None}, 422, "body"),  # late_delivery needs both dates (a cross-field contract rule)
])
async def test_invalid_single_events_are_refused_naming_the_field_and_nothing_is_stored(
        service, key, change, status, field):
    bad = item("ticket.opened", **change)
    r = await service.client.post("/v1/tickets", json=bad, headers={"X-API-Key": key})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]
    assert await received_ids(service.engine, [bad["event_id"]]) == set()


# Issue 11: inputs that were accepted and then dead-lettered downstream, or answered 500, each get a clear
# 422 naming the field now, on every event route, single and per item in a batch.
BEYOND_BOUNDS = [
    ("compensation.manual_issued", {"amount": {"amount_minor": 2**63, "currency": "SGD"},
                                    "liability": [{"party": {"type": "seller", "id": "S-310"},
                                                   "amount_minor": 2**63}]}, "amount.amount_minor"),
    ("compensation.manual_issued", {"amount": {"amount_minor": 10**12 + 1, "currency": "SGD"},
                                    "liability": [{"party": {"type": "seller", "id": "S-310"},
                                                   "amount_minor": 10**12 + 1}]}, "amount.amount_minor"),
    ("compensation.manual_issued", {"note": "refund\x00"}, "note"),
    ("compensation.manual_issued", {"evidence": [{"kind": "photo", "uri": "https://x/\x00"}]}, "evidence.0.uri"),
    ("ticket.opened", {"description": "late\x00"}, "description"),
    ("ticket.opened", {"order_amount": {"amount_minor": -(2**63), "currency": "SGD"}}, "order_amount.amount_minor"),
    ("voucher.redeemed", {"discount": {"amount_minor": 2**64, "currency": "SGD"}}, "discount.amount_minor"),
    ("buyer.order_placed", {"correlation_id": "a\x00b"}, "correlation_id"),
    ("buyer.order_placed", {"traceparent": "not a trace"}, "traceparent"),
    *[(event_type, {"occurred_at": when}, "occurred_at") for event_type in sorted(PATHS)
      for when in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:00-01:00", 1763631000, "1763631000",
                   "2026-11-20", "2026-11-20 09:30:00Z", "1969-12-31T23:59:59Z")],
    ("ticket.opened", {"promised_delivery_at": "9999-12-31T23:59:00-01:00"}, "promised_delivery_at"),
    ("compensation.manual_issued", {"valid_until": "2199-12-31T23:59:59-00:01"}, "valid_until"),
]


@pytest.mark.parametrize("event_type, change, field", BEYOND_BOUNDS)
async def test_what_no_consumer_could_store_is_refused_at_the_edge(service, key, event_type, change, field):
    bad = item(event_type, **change)
    r = await service.client.post(PATHS[event_type], json=bad, headers={"X-API-Key": key})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert f"body.{field}" in [e["field"] for e in r.json()["errors"]], r.text
    good = item(event_type)
    r = await service.client.post(PATHS[event_type] + "/batch", json={"items": [bad, good]},
                                  headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["status"] == "rejected" and field in [e["field"] for e in first["errors"]]
    assert second["status"] == "accepted"  # one bad item never fails the batch
    assert await received_ids(service.engine, [bad["event_id"], good["event_id"]]) == {good["event_id"]}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/xml"])
async def test_a_body_not_sent_as_json_gets_415_and_nothing_is_stored(service, key, content_type):
    it = item("buyer.order_placed")
    headers = {"X-API-Key": key, **({"Content-Type": content_type} if content_type else {})}
    for path, body in (("/v1/buyer-orders", it), ("/v1/buyer-orders/batch", {"items": [it]})):
        r = await service.client.post(path, content=orjson.dumps(body), headers=headers)
        assert r.status_code == 415, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["errors"][0]["field"] == "header.Content-Type"
    assert await received_ids(service.engine, [it["event_id"]]) == set()
    r = await service.client.post("/v1/buyer-orders", content=orjson.dumps(it),
                                  headers={"X-API-Key": key, "Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 202


async def test_a_malformed_correlation_header_is_refused(service, key):
    it = item("buyer.order_placed")
    for value in ("x" * 129, "two words", "caf\u00e9"):
        r = await service.client.post("/v1/buyer-orders", json=it,
                                      headers={"X-API-Key": key, "X-Correlation-Id": value.encode()})
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "header.X-Correlation-Id"
    assert await received_ids(service.engine, [it["event_id"]]) == set()


async def test_malformed_and_oversized_bodies(service, key):
    r = await service.client.post("/v1/tickets", content=b"{not json",
                                  headers={"X-API-Key": key, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body"
    big = b'{"items": [' + b",".join([b'"' + b"x" * 1000 + b'"'] * 5000) + b"]}"  # 5 MB
    r = await service.client.post("/v1/tickets/batch", content=big, headers={"X-API-Key": key})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    for body, field in [({"items": []}, "body.items"), ({"things": []}, "body.items"),
                        ({"items": {}}, "body.items"), ([1], "body.items"),
                        ({"items": [item("ticket.opened")], "more": 1}, "body.more"),
                        ({"items": [item("ticket.opened")] * 1001}, "body.items")]:
        r = await service.client.post("/v1/tickets/batch", json=body, headers={"X-API-Key": key})
        assert r.status_code == 422, (body, r.text)
        assert r.json()["errors"][0]["field"] == field


async def test_same_id_same_content_is_a_duplicate_different_content_a_conflict(service, key, watch):
    it = item("buyer.order_placed")
    first = await service.client.post("/v1/buyer-orders", json=it, headers={"X-API-Key": key})
    again = await service.client.post("/v1/buyer-orders", json=it, headers={"X-API-Key": key})
    assert (first.status_code, first.json()["status"]) == (202, "accepted")
    assert (again.status_code, again.json()["status"]) == (202, "duplicate")
    changed = {**it, "amount": {"amount_minor": 1, "currency": "SGD"}}
    conflict = await service.client.post("/v1/buyer-orders", json=changed, headers={"X-API-Key": key})
    assert conflict.status_code == 409 and conflict.json()["errors"][0]["field"] == "body.event_id"
    # the same id under another event type is different content too
    other = sample("voucher.expired", event_id=it["event_id"])
    r = await service.client.post("/v1/vouchers/expired", json=other, headers={"X-API-Key": key})
    assert r.status_code == 409
    arrived = await watch.until([it["event_id"]], timeout=20, settle=1.0)
    assert len(arrived[it["event_id"]]) == 1
    assert arrived[it["event_id"]][0].envelope["payload"]["amount"]["amount_minor"] == 12900


async def test_batch_with_good_bad_duplicate_and_conflicting_items(service, key, watch):
    earlier = item("ticket.opened")
    await service.client.post("/v1/tickets", json=earlier, headers={"X-API-Key": key})
    good = [item("ticket.opened") for _ in range(3)]
    bad_currency = item("ticket.opened", region="GB")
    unknown_field = item("ticket.opened", color="red")
    conflict = {**earlier, "seller_id": "S-other"}
    items = [good[0], bad_currency, earlier, good[1], unknown_field, conflict, good[0], good[2]]
    r = await service.client.post("/v1/tickets/batch", json={"items": items}, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["status"] for x in body["results"]] == [
        "accepted", "rejected", "duplicate", "accepted", "rejected", "conflict", "duplicate", "accepted"]
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (3, 2, 3)
    assert body["results"][1]["errors"][0]["field"] == "order_amount.currency"
    assert body["results"][4]["errors"][0]["field"] == "color"
    assert body["results"][5]["errors"][0]["field"] == "event_id"
    ids = [g["event_id"] for g in good]
    assert await received_ids(service.engine, [*ids, bad_currency["event_id"], unknown_field["event_id"]]) \
        == set(ids)
    arrived = await watch.until(ids, timeout=10, settle=0.5)
    assert [len(arrived[i]) for i in ids] == [1, 1, 1]
    assert bad_currency["event_id"] not in {a.envelope["event_id"] for a in watch.arrivals}


async def test_without_a_valid_key_401_and_outside_its_scope_403(service):
    async def post(headers, event_type="ticket.opened", **overrides):
        return await service.client.post(PATHS[event_type], json=item(event_type, **overrides), headers=headers)

    assert (await post({})).status_code == 401
    assert (await post({"X-API-Key": "nonsense"})).status_code == 401
    key_id, sg_key = await create_key(service.engine, system="sg-logistics", regions=["SG"],
                                      event_types=["ticket.opened"])
    assert (await post({"X-API-Key": sg_key + "x"})).status_code == 401  # right id, wrong secret
    assert (await post({"X-API-Key": sg_key})).status_code == 202
    gb = await post({"X-API-Key": sg_key}, region="GB", order_amount={"amount_minor": 100, "currency": "GBP"})
    assert gb.status_code == 403 and gb.json()["errors"][0]["field"] == "body.region"
    other_type = await post({"X-API-Key": sg_key}, "buyer.order_placed")
    assert other_type.status_code == 403 and other_type.json()["errors"][0]["field"] == "event_type"
    r = await service.client.post("/v1/tickets/batch", headers={"X-API-Key": sg_key}, json={"items": [
        item("ticket.opened"), item("ticket.opened", region="GB",
                                    order_amount={"amount_minor": 100, "currency": "GBP"})]})
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected"]
    assert r.json()["results"][1]["errors"][0]["field"] == "region"

    async with service.engine.begin() as conn:
        await conn.execute(text("UPDATE api_keys SET revoked_at = now() WHERE key_id = :k"), {"k": key_id})
    # The key lookup cache lives 0.5 s in these tests: the revocation shows once it expires.
    deadline = time.monotonic() + 10
    while (revoked := await post({"X-API-Key": sg_key})).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key was still accepted"
        await asyncio.sleep(0.1)
    assert revoked.headers["content-type"] == "application/problem+json"


async def test_bearer_tokens_need_the_service_or_ops_admin_role(service):
    tokens = TokenService(service.app.state.ctx.settings.auth_token_secret.get_secret_value())
    ok = tokens.issue("auto-comp", ["service"], ["SG"])
    r = await service.client.post("/v1/tickets", json=item("ticket.opened"),
                                  headers={"Authorization": f"Bearer {ok}"})
    assert r.status_code == 202
    auditor = tokens.issue("alice", ["auditor"], ["*"])
    r = await service.client.post("/v1/tickets", json=item("ticket.opened"),
                                  headers={"Authorization": f"Bearer {auditor}"})
    assert r.status_code == 403
    wrong_region = tokens.issue("auto-comp", ["service"], ["US"])
    r = await service.client.post("/v1/tickets", json=item("ticket.opened"),
                                  headers={"Authorization": f"Bearer {wrong_region}"})
    assert r.status_code == 403


async def test_rate_limit_per_key_answers_429_with_retry_after(service):
    _, slow = await create_key(service.engine, system="chatty", rate=2)
    statuses = []
    for _ in range(4):
        r = await service.client.post("/v1/vouchers/expired", json=item("voucher.expired"),
                                      headers={"X-API-Key": slow})
        statuses.append(r.status_code)
    assert statuses[:2] == [202, 202] and 429 in statuses[2:]
    limited = r if r.status_code == 429 else None
    if limited is not None:
        assert int(limited.headers["retry-after"]) >= 1


async def test_openapi_has_an_example_per_event_type(service):
    doc = (await service.client.get("/openapi.json")).json()
    for event_type, path in PATHS.items():
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert schema["examples"][0]["event_id"], event_type
        assert schema["additionalProperties"] is False
        assert f"{path}/batch" in doc["paths"]


async def test_metrics_count_outcomes_by_type_region_and_reason(service, key):
    await service.client.post("/v1/tickets", json=item("ticket.opened", region="ZZ"), headers={"X-API-Key": key})
    text_ = (await service.client.get("/metrics")).text
    assert 'intake_events_accepted_total{event_type="ticket.opened",region="SG"}' in text_
    assert 'intake_events_rejected_total{event_type="ticket.opened",reason="unknown_region",region="unknown"}' \
        in text_
    assert "intake_request_duration_seconds_bucket" in text_
    assert "intake_outbox_backlog" in text_


async def test_concurrent_submissions_of_one_event_accept_it_exactly_once(service, key, watch):
    it = item("voucher.revoked")
    shared_batch = [item("voucher.revoked") for _ in range(50)]
    singles = [service.client.post("/v1/vouchers/revoked", json=it, headers={"X-API-Key": key})
               for _ in range(10)]
    orders = [shared_batch, shared_batch[::-1], shared_batch[25:] + shared_batch[:25], shared_batch]
    batches = [service.client.post("/v1/vouchers/revoked/batch", json={"items": order},
                                   headers={"X-API-Key": key}) for order in orders]
    responses = await asyncio.gather(*singles, *batches)
    assert sorted(r.json()["status"] for r in responses[:10]) == ["accepted"] + ["duplicate"] * 9
    assert all(r.status_code == 200 for r in responses[10:])  # no deadlock although the orders differ
    statuses: dict[str, list[str]] = {}
    for r in responses[10:]:
        for x in r.json()["results"]:
            statuses.setdefault(x["event_id"], []).append(x["status"])
    assert all(sorted(s) == ["accepted", "duplicate", "duplicate", "duplicate"] for s in statuses.values())
    ids = [it["event_id"], *(x["event_id"] for x in shared_batch)]
    arrived = await watch.until(ids, timeout=20, settle=0.5)
    assert all(len(arrived[i]) == 1 for i in ids)


async def test_event_ids_past_the_retention_are_forgotten(service, key):
    old, recent = item("buyer.order_placed"), item("buyer.order_placed")
    for it in (old, recent):
        assert (await service.client.post("/v1/buyer-orders", json=it, headers={"X-API-Key": key})).status_code == 202
    async with service.engine.begin() as conn:
        await conn.execute(text("UPDATE received_events SET received_at = now() - interval '31 days' "
                                "WHERE event_id = :e"), {"e": old["event_id"]})
    assert await service.app.state.purger.purge() == 1
    assert await received_ids(service.engine, [old["event_id"], recent["event_id"]]) == {recent["event_id"]}


async def test_a_compensation_request_answers_its_request_id_and_is_idempotent(service, key, watch):
    it = item("compensation.requested", request_id=new_id("RQ"))
    headers = {"X-API-Key": key}
    first = await service.client.post("/v1/compensation-requests", json=it, headers=headers)
    again = await service.client.post("/v1/compensation-requests", json=it, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == {"event_id": it["event_id"], "status": "accepted", "request_id": it["request_id"]}
    assert again.json()["status"] == "duplicate" and again.json()["request_id"] == it["request_id"]
    batch = await service.client.post("/v1/compensation-requests/batch", headers=headers, json={"items": [
        item("compensation.requested", request_id="RQ-b1"),
        item("compensation.requested", request_id="RQ-b2", amount={"amount_minor": 1, "currency": "USD"})]})
    results = batch.json()["results"]
    assert results[0]["request_id"] == "RQ-b1" and results[1]["status"] == "rejected"
    assert "request_id" not in results[1]
    arrived = await watch.until([it["event_id"]], timeout=20, settle=1.0)
    (record,) = arrived[it["event_id"]]
    assert record.envelope["payload"]["case"]["carrier_id"] == "C-ninja"


@pytest.mark.parametrize(("change", "field"), [
    ({"proposed_liability": [{"party": {"type": "platform"}, "amount_minor": 1}]}, "body"),
    ({"case": {"delivered_at": "2199-01-01T00:00:00Z"}}, "body.case.delivered_at"),
    ({"case": {"ticket_reason": "bored"}}, "body.case.ticket_reason"),
    ({"order_amount": {"amount_minor": 100, "currency": "USD"}}, "body"),  # not the amount's currency
    ({"amount": {"amount_minor": 1500, "currency": "USD"}, "order_amount": None}, "body.amount.currency"),
])
async def test_a_bad_compensation_request_is_refused_naming_the_field(service, key, change, field):
    it = {**item("compensation.requested"), **change}
    r = await service.client.post("/v1/compensation-requests", json=it, headers={"X-API-Key": key})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"] == field for e in r.json()["errors"]), r.json()["errors"]
