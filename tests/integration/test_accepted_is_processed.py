"""Accepted means processed (issue 11; ADR 0006, "Bounds").

Events are generated from every published contract an upstream system sends (``contracts/*.schema.json``,
through schemathesis's JSON Schema generator), posted to intake (the real HTTP app on the real database,
single and in batches), and whatever intake accepts is carried on from the outboxes to every consumer of
its topic: the services' own consumer runners (decoder, deduplication, handler, dead letters) on the real
database, and on again for what those consumers publish (budget requests, answers, issued compensations)
until nothing is left to deliver. Only the broker is left out: the records go from outbox to runner as the
relay and the broker would carry them.

What must hold: intake answers 2xx or 4xx, never 5xx; an event that meets the contract and the rules a JSON
Schema cannot state (region in the catalogue, money in its currency, liability shares summing to the
amount, no fact in the future) is accepted; and nothing accepted is dead-lettered or fails in any consumer
or any consumer of what follows from it.

``ACCEPTED_PROCESSED_EXAMPLES`` (default 10 per event type, about 10 s) sets the length; a longer run, e.g.
``ACCEPTED_PROCESSED_EXAMPLES=300 .venv/bin/python -m pytest -p no:cacheprovider
tests/integration/test_accepted_is_processed.py`` (about 70 s), is documented in the README.
"""

from __future__ import annotations

import importlib
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.intake.api import ROUTES
from shared.contracts.export import event_schema
from shared.contracts.registry import LATEST
from shared.contracts.topics import Topic
from shared.db import migrate
from shared.kafka import ConsumerRunner
from shared.money import MAX_AMOUNT_MINOR, MAX_BUDGET_MINOR
from shared.outbox import decode_headers
from shared.regions import catalogue

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "ledger", "auto_comp", "audit_sampler")
EXAMPLES = int(os.environ.get("ACCEPTED_PROCESSED_EXAMPLES", "10"))
PATHS = {r.event_type: r.path for r in ROUTES}
ENVELOPE_TO_ITEM = ("event_id", "occurred_at", "region", "correlation_id", "traceparent")
PAST_ONLY = {"ticket.opened": ("order_placed_at", "shipped_at", "delivered_at")}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with its local references spelled out (what a client's generator sees)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in ("$defs", "$id", "$schema", "x-topic")}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _contract_strategies() -> dict[str, Any]:
    """One strategy of envelopes per upstream event type, drawn from its published JSON Schema: schemathesis
    generates request bodies from JSON Schema, so each contract is offered to it as one operation's body."""
    paths = {}
    for event_type in PATHS:
        schema = event_schema(LATEST[event_type])
        paths[f"/{event_type}"] = {"post": {
            "operationId": event_type.replace(".", "_"),
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _inline(schema, schema.get("$defs", {}))}}},
            "responses": {"200": {"description": "ok"}}}}
    api = schemathesis.openapi.from_dict({"openapi": "3.1.0", "info": {"title": "contracts", "version": "1"},
                                          "paths": paths})
    return {event_type: api[f"/{event_type}"]["POST"].as_strategy(
        generation_mode=schemathesis.GenerationMode.POSITIVE).map(lambda case: case.body)
        for event_type in PATHS}


STRATEGIES = _contract_strategies()


def as_item(envelope: dict[str, Any]) -> dict[str, Any]:
    """What an upstream system posts for an envelope: the producer's envelope fields and the payload, flat."""
    item = {k: envelope[k] for k in ENVELOPE_TO_ITEM if k in envelope}
    item.update(envelope["payload"])
    return item


def _rfc3339(instant: datetime, offset_minutes: int) -> str:
    local = instant.astimezone(UTC) + timedelta(minutes=offset_minutes)
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f"{sign}{hours:02d}:{minutes:02d}"


def _money(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if {"amount_minor", "currency"} <= set(node) else []
        return found + [m for v in node.values() for m in _money(v)]
    if isinstance(node, list):
        return [m for v in node for m in _money(v)]
    return []


def _integers(node: Any) -> Any:
    """JSON Schema's ``integer`` admits 2.0; the contracts take integers written as integers only (ADR 0006:
    no floats in money paths, whatever their value)."""
    if isinstance(node, dict):
        return {k: _integers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_integers(v) for v in node]
    return int(node) if isinstance(node, float) and node.is_integer() else node


def repair(event_type: str, item: dict[str, Any], data: st.DataObject, now: datetime) -> dict[str, Any]:
    """Make a generated item meet the rules a JSON Schema cannot state, keeping everything else (amounts,
    texts, ids, timestamps the rules leave free) as generated."""
    item = _integers(item)
    region = data.draw(st.sampled_from(catalogue().codes()), label="region")
    item["region"] = region
    currency = catalogue().get(region).currency
    for money in _money(item):
        money["currency"] = currency
    item["event_id"] = f"{item['event_id'][:90]}-{uuid.uuid4().hex[:12]}"
    instants = st.integers(0, 3 * 365 * 86_400).map(lambda s: now - timedelta(seconds=s))
    offsets = st.integers(-12 * 60, 14 * 60)
    item["occurred_at"] = _rfc3339(data.draw(instants), data.draw(offsets))
    for name in PAST_ONLY.get(event_type, ()):
        if item.get(name) is not None:
            item[name] = _rfc3339(data.draw(instants), data.draw(offsets))
    if "traceparent" in item:
        item["traceparent"] = data.draw(st.none() | st.just(f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"))
    if event_type == "ticket.opened" and data.draw(st.booleans(), label="late delivery"):
        # Half the tickets are late deliveries of recent orders, in regions with strategies for them, so
        # the budget saga runs (reservation, answer, issue, charge) with generated amounts and ids.
        item["region"] = data.draw(st.sampled_from(["GB", "ID", "SG", "US"]), label="strategy region")
        for money in _money(item):
            money["currency"] = catalogue().get(item["region"]).currency
        promised = now - timedelta(days=data.draw(st.integers(1, 40), label="days ago"))
        delivered = promised + timedelta(days=data.draw(st.integers(0, 20), label="days late"), minutes=1)
        item.update(reason="late_delivery", occurred_at=_rfc3339(min(delivered, now), 0),
                    promised_delivery_at=_rfc3339(promised, data.draw(offsets)),
                    delivered_at=_rfc3339(min(delivered, now), data.draw(offsets)))
    elif event_type == "ticket.opened" and item["reason"] == "late_delivery":
        for name in ("promised_delivery_at", "delivered_at"):
            if item.get(name) is None:
                item[name] = _rfc3339(data.draw(instants), data.draw(offsets))
    if event_type == "compensation.manual_issued":
        item["liability"] = _liability(item["liability"], item["amount"]["amount_minor"], data)
    if event_type == "order.volume_reported":
        # Intake refuses a day that has not begun in the region: a day before yesterday (UTC) has begun
        # everywhere.
        item["day"] = (now - timedelta(days=data.draw(st.integers(2, 900), label="days ago"))).date().isoformat()
    if event_type == "compensation.requested":
        if item.get("proposed_liability"):
            item["proposed_liability"] = _liability(item["proposed_liability"], item["amount"]["amount_minor"], data)
        for name in ("ticket_opened_at", "order_placed_at", "delivered_at"):
            if item["case"].get(name) is not None:
                item["case"][name] = _rfc3339(data.draw(instants), data.draw(offsets))
    return item


def _liability(shares: list[dict[str, Any]], amount: int, data: st.DataObject) -> list[dict[str, Any]]:
    """The generated parties (each once, ids as their type wants), with the amount split exactly."""
    parties: dict[str, dict[str, Any]] = {}
    for share in shares:
        party = dict(share["party"])
        if party["type"] == "platform":
            party.pop("id", None)
        elif not party.get("id"):
            party["id"] = "P0"
        parties.setdefault(f"{party['type']}:{party.get('id')}", party)
    if not parties:
        parties["platform"] = {"type": "platform"}
    out, left = [], amount
    for i, party in enumerate(parties.values()):
        last = i == len(parties) - 1
        part = left if last else data.draw(st.integers(0, left), label="share")
        out.append({"party": party, "amount_minor": part})
        left -= part
    return out


@dataclass
class Platform:
    apps: dict[str, FastAPI]
    client: httpx.AsyncClient
    headers: dict[str, str]
    runners: dict[str, list[ConsumerRunner]] = field(default_factory=dict)
    offsets: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]
    delivered: int = 0

    async def pump(self) -> list[str]:
        """Deliver every outbox row of every service to every consumer of its topic, and on again, until
        nothing is left. Returns the event ids delivered; a dead letter anywhere fails the test."""
        ids: list[str] = []
        for _ in range(20):
            rows = []
            for app in self.apps.values():
                async with app.state.ctx.engine.begin() as conn:
                    rows += (await conn.execute(text(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 1000) "
                        "RETURNING id, topic, key, value, headers"))).all()
            if not rows:
                return ids
            for row in rows:
                headers = decode_headers(row.headers)
                assert row.topic != Topic.DEAD_LETTERS.value, dict(headers)
                ids.append(dict(headers)["event_id"].decode())
                record = ConsumerRecord(row.topic, 0, next(self.offsets), int(time.time() * 1000), 0, row.key,
                                        row.value, None, len(row.key or b""), len(row.value), headers)
                for runner in self.runners.get(row.topic, []):
                    await runner._process_batch([runner._decode(record)])  # the runner path: decode, dedup, handler
                    assert runner.stats.dead_lettered == 0, await _dead_letters(self)
                    self.delivered += 1
        raise AssertionError("the flow did not settle within 20 rounds")


@pytest.fixture(scope="module")
async def platform(fresh_database: str) -> AsyncIterator[Platform]:
    apps: dict[str, FastAPI] = {}
    for name in SERVICES:
        await migrate(fresh_database, name, ROOT / "services" / name / "migrations")
        config = importlib.import_module(f"services.{name}.config")
        build = importlib.import_module(f"services.{name}.app").build_app
        # Nothing is started: no relay takes the outbox rows, no consumer polls a broker; the test delivers.
        apps[name] = build(config.Settings(database_url=fresh_database, log_json=False))
    runners: dict[str, list[ConsumerRunner]] = {}
    for app in apps.values():
        for runner in app.state.ctx.runners:
            for topic in runner.topics:
                runners.setdefault(topic, []).append(runner)
    # Budgets at the bound for every region and the months the repaired events fall in, so the saga runs
    # through reservations and issues, not only denials.
    today = datetime.now(UTC)
    months = sorted({f"{d.year:04d}-{d.month:02d}" for d in (today - timedelta(days=31 * i) for i in range(40))})
    async with apps["ledger"].state.ctx.engine.begin() as conn:
        for code in catalogue().codes():
            currency = catalogue().get(code).currency
            await conn.execute(text(
                "INSERT INTO budgets (region, period, currency, limit_minor) SELECT :r, p, :c, :l "
                "FROM unnest(CAST(:ps AS text[])) AS p ON CONFLICT DO NOTHING"),
                {"r": code, "c": currency, "l": MAX_BUDGET_MINOR, "ps": months})
    token = apps["intake"].state.ctx.tokens.issue("upstream-fuzzer", ["service"], ["*"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps["intake"]), base_url="http://intake",
                                 timeout=60) as client:
        yield Platform(apps, client, {"Authorization": f"Bearer {token}"}, runners)
    for app in apps.values():
        await app.state.ctx.engine.dispose()


async def _processed(platform: Platform, event_ids: list[str], topic: str) -> None:
    """Every consumer of ``topic`` recorded each event as processed (none was skipped or left half-done)."""
    for runner in platform.runners.get(topic, []):
        async with runner.engine.connect() as conn:
            found = set((await conn.execute(text(
                "SELECT event_id FROM processed_events WHERE consumer_group = :g AND event_id = ANY(:ids)"),
                {"g": runner.group_id, "ids": event_ids})).scalars())
        assert found == set(event_ids), (runner.group_id, set(event_ids) - found)


async def _dead_letters(platform: Platform) -> list[tuple[str, str]]:
    found = []
    for app in platform.apps.values():
        async with app.state.ctx.engine.connect() as conn:
            found += [(r.consumer_group, r.error) for r in await conn.execute(text(
                "SELECT consumer_group, error FROM dead_letters"))]
    return found


async def _post_and_deliver(platform: Platform, event_type: str, items: list[tuple[dict[str, Any], bool]],
                            batch: bool) -> None:
    path, topic = PATHS[event_type], LATEST[event_type].topic.value
    accepted: list[str] = []
    if batch:
        r = await platform.client.post(f"{path}/batch", json={"items": [i for i, _ in items]},
                                       headers=platform.headers)
        assert r.status_code == 200, r.text
        for (sent, must_accept), result in zip(items, r.json()["results"], strict=True):
            assert result["status"] in ("accepted", "duplicate", "rejected", "conflict"), result
            assert result["status"] == "accepted" or not must_accept, (sent, result)
            if result["status"] == "accepted":
                accepted.append(sent["event_id"])
    else:
        for sent, must_accept in items:
            r = await platform.client.post(path, json=sent, headers=platform.headers)
            assert r.status_code in (202, 409, 422), (r.status_code, r.text)
            assert r.status_code == 202 or not must_accept, (sent, r.text)
            if r.status_code != 202:
                assert r.headers["content-type"] == "application/problem+json"
            elif r.json()["status"] == "accepted":
                accepted.append(sent["event_id"])
    delivered = await platform.pump()
    assert set(accepted) <= set(delivered)
    await _processed(platform, accepted, topic)


@pytest.mark.parametrize("event_type", sorted(PATHS))
async def test_what_intake_accepts_every_consumer_processes(platform, event_type):
    now = datetime.now(UTC)
    examples: list[tuple[list[tuple[dict[str, Any], bool]], bool]] = []

    @given(data=st.data())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def generate(data: st.DataObject) -> None:
        items = []
        for _ in range(data.draw(st.integers(1, 3), label="items")):
            raw = as_item(data.draw(STRATEGIES[event_type], label="envelope"))
            # Mostly repaired (so most events travel the whole flow), sometimes as generated.
            if data.draw(st.integers(0, 3), label="raw") == 0:
                items.append((raw, False))
            else:
                items.append((repair(event_type, raw, data, now), True))
        examples.append((items, data.draw(st.booleans(), label="batch")))

    # Hypothesis drives generation only; the examples then run against the database in this event loop.
    generate()
    for items, batch in examples:
        await _post_and_deliver(platform, event_type, items, batch)
    assert await _dead_letters(platform) == []


def _extreme(event_type: str) -> dict[str, Any]:
    """An item at the edges of every bound: largest amounts, longest texts and ids, the first and last days
    of the span for timestamps, offsets far from UTC."""
    from tests.unit.intake.intake_samples import sample

    item = sample(event_type, event_id=f"edge-{uuid.uuid4().hex}", occurred_at=_rfc3339(datetime.now(UTC), -720),
                  correlation_id="c" * 128)
    for money in _money(item):
        money["amount_minor"] = MAX_AMOUNT_MINOR
    if event_type == "compensation.manual_issued":
        item.update(note="n" * 2000, valid_until="2199-12-31T23:59:59.999999+12:00",
                    liability=[{"party": {"type": "seller", "id": "S" * 128}, "amount_minor": MAX_AMOUNT_MINOR}],
                    evidence=[{"kind": "photo", "uri": "https://cs.example/" + "u" * 980}] * 50)
    if event_type == "compensation.requested":
        item.update(note="n" * 2000, request_id="R" * 128,
                    proposed_liability=[{"party": {"type": "carrier", "id": "C" * 128},
                                         "amount_minor": MAX_AMOUNT_MINOR}],
                    evidence=[{"kind": "photo", "uri": "https://cs.example/" + "u" * 980}] * 50)
        item["case"].update(buyer_claim="b" * 2000, order_placed_at="1970-01-01T00:00:00-14:00",
                            promised_delivery_at="2199-12-31T23:59:59+14:00")
    if event_type == "ticket.opened":
        item.update(description="d" * 2000, dispatch_due_at="2199-12-31T23:59:59+14:00",
                    order_placed_at="1970-01-01T00:00:00-14:00")
    return item


@pytest.mark.parametrize("event_type", sorted(PATHS))
async def test_an_event_at_every_bound_is_accepted_and_processed_in_full(platform, event_type):
    item = _extreme(event_type)
    await _post_and_deliver(platform, event_type, [(item, True)], batch=False)
    await _post_and_deliver(platform, event_type, [({**_extreme(event_type)}, True)], batch=True)
    assert await _dead_letters(platform) == []
