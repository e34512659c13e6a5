"""Corrections reach the ledger topic exactly once, also when the process dies between the verdict and
the publish; disputes overturned emit the reversing correction."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from sqlalchemy import text

from services.audit_sampler.config import Settings
from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.domain.verdicts import ATTRIBUTES, VerdictInput
from services.audit_sampler.handlers import ManualCompensationHandler
from services.audit_sampler.operations import claims, disputes, verdicts
from services.audit_sampler.operations import gold as gold_items
from services.audit_sampler.operations.errors import AuditError
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.problems import problem_for
from shared.auth import Principal
from shared.contracts import events as ev
from shared.contracts.registry import decode_envelope, make_envelope, validate_payload
from shared.db import make_engine
from shared.kafka import Delivered, EventProducer
from shared.outbox import OutboxRelay

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
WRONG_AMOUNT = {**dict.fromkeys(ATTRIBUTES, True), "amount_correct": False}


def person(name: str, role: str) -> Principal:
    return Principal(subject=name, kind="token", roles=frozenset({role}), regions=frozenset({"US"}))


@pytest.fixture(scope="module")
async def env(audit_database, tmp_path_factory):
    engine = make_engine(audit_database, "audit_sampler")
    folder = tmp_path_factory.mktemp("policies")
    base = {"seed": "corrections-seed-1", "baseline_rate": 1.0, "agent_weekly_minimum": 0}
    (folder / "default.yaml").write_text(yaml.safe_dump({**base, "region": "default"}))
    yield audit_database, engine, folder
    await engine.dispose()


async def enqueue(engine, folder: Path, cid: str) -> None:
    policies = PolicySet.load(folder)
    payload = ev.ManualCompensationIssued(
        compensation_id=cid, ticket_id="T1", order_id="O1", buyer_id=f"buyer-{cid}", seller_id="S1",
        agent_id="agent-1", team="team-1", kind=ev.CompensationKind.STORE_CREDIT,
        amount=ev.PositiveMoney(amount_minor=1000, currency="USD"), reason_code="damaged",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S1"), amount_minor=600),
                   ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.CARRIER, id="K1"), amount_minor=400)])
    envelope = make_envelope("compensation.manual_issued", payload, source="test", region="US", occurred_at=NOW)
    async with engine.begin() as conn:
        await ManualCompensationHandler(lambda: policies, lambda: NOW)(
            conn, [Delivered(envelope, validate_payload(envelope), "manual", 0, 0, None, 0)])


async def publish_outbox(url: str, engine, kafka_bootstrap: str) -> int:
    """A restarted service's relay: publish whatever the outbox holds."""
    producer = EventProducer(Settings(database_url=url, kafka_bootstrap_servers=kafka_bootstrap), "audit-test")
    await producer.start()
    try:
        relay = OutboxRelay(engine, producer, "audit_sampler")
        total = 0
        while (n := await relay.publish_once()) > 0:
            total += n
        return total
    finally:
        await producer.stop()


async def read_topic(kafka_bootstrap: str, topic: str) -> list[ev.AuditCorrectionIssued]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[ev.AuditCorrectionIssued] = []
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for record in records:
                    envelope, payload = decode_envelope(record.value)
                    assert record.key == payload.buyer_id.encode()
                    assert envelope.event_id == payload.correction_id
                    found.append(payload)
    finally:
        await consumer.stop()
    return found


CRASHING_AUDITOR = textwrap.dedent("""
    import asyncio, os, signal, sys
    from services.audit_sampler.operations import claims, verdicts
    from services.audit_sampler.operations.runtime import Runtime
    from services.audit_sampler.domain.policy import PolicySet
    from services.audit_sampler.domain.verdicts import ATTRIBUTES, VerdictInput
    from shared.auth import Principal
    from shared.db import make_engine

    async def main():
        url, folder, topic = sys.argv[1:4]
        engine = make_engine(url, "audit_sampler")
        runtime = Runtime(PolicySet.load(folder), topic)
        me = Principal("crash-auditor", "token", frozenset({"auditor"}), frozenset({"US"}))
        item = await claims.claim_next(engine, me, "US", runtime=runtime)
        attributes = {**dict.fromkeys(ATTRIBUTES, True), "amount_correct": False}
        await verdicts.submit_verdict(engine, me, item["id"], VerdictInput(
            attributes, False, "wrong_amount", note="paid too much", corrected_amount_minor=250),
            runtime=runtime)
        print(item["compensation_id"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # dies after the commit, before any relay published

    asyncio.run(main())
""")


async def test_correction_published_exactly_once_after_a_crash_before_publish(env, kafka_bootstrap, make_topics):
    url, engine, folder = env
    (topic,) = await make_topics("corrections")
    await enqueue(engine, folder, "crash-1")
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", CRASHING_AUDITOR, url, str(folder), topic],
                                   capture_output=True, text=True, cwd=ROOT, timeout=60,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "crash-1"
    assert await read_topic(kafka_bootstrap, topic) == []  # nothing published yet
    # restart: the relay finds the correction in the outbox (beside the read side's announcements of the
    # sample draw and the verdict); a second restart finds nothing more
    assert await publish_outbox(url, engine, kafka_bootstrap) == 3
    assert await publish_outbox(url, engine, kafka_bootstrap) == 0
    corrections = await read_topic(kafka_bootstrap, topic)
    assert len(corrections) == 1
    c = corrections[0]
    assert c.compensation_id == "crash-1" and c.corrected_amount.amount_minor == 250
    assert [(s.party.account_key, s.amount_minor) for s in c.corrected_liability] == [
        ("seller:S1", 150), ("carrier:K1", 100)]
    assert c.error_category == "wrong_amount" and c.corrects_correction_id is None
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT correction_id, status FROM verdicts "
                                          "WHERE compensation_id = 'crash-1'"))).one()
    assert stored.correction_id == c.correction_id and stored.status == "final"


async def test_overturned_dispute_reverses_the_correction_once(env, kafka_bootstrap, make_topics):
    url, engine, folder = env
    (topic,) = await make_topics("corrections")
    runtime = Runtime(PolicySet.load(folder), topic)
    await enqueue(engine, folder, "dispute-1")
    auditor, lead, senior = person("aud-7", "auditor"), person("lead-7", "lead"), person("senior-7", "senior_auditor")
    item = await claims.claim_next(engine, auditor, "US", runtime=runtime, now=NOW)
    assert item is not None and item["compensation_id"] == "dispute-1"
    verdict = await verdicts.submit_verdict(engine, auditor, item["id"], VerdictInput(
        {**dict.fromkeys(ATTRIBUTES, True), "warranted": False}, False, "not_warranted"), runtime=runtime)
    assert verdict["correction_id"] and verdict["corrected_amount_minor"] == 0
    # a second verdict on the same item is refused
    with pytest.raises(AuditError) as info:
        await verdicts.submit_verdict(engine, auditor, item["id"], VerdictInput(
            dict.fromkeys(ATTRIBUTES, True), True), runtime=runtime)
    assert problem_for(info.value).status == 409
    # only a lead disputes; only a senior auditor resolves
    with pytest.raises(AuditError) as info:
        await disputes.dispute_verdict(engine, auditor, verdict["id"], "I disagree")
    assert problem_for(info.value).status == 403
    dispute = await disputes.dispute_verdict(engine, lead, verdict["id"], "buyer sent photos later")
    with pytest.raises(AuditError) as info:
        await disputes.dispute_verdict(engine, lead, verdict["id"], "again")
    assert problem_for(info.value).status == 409
    with pytest.raises(AuditError) as info:
        await disputes.resolve_dispute(engine, lead, dispute["id"], "overturn", runtime=runtime)
    assert problem_for(info.value).status == 403
    # separation of duties: neither the one who raised it nor the auditor of the verdict resolves it, even
    # holding the senior auditor's role (and whatever the case of their name in a token)
    both = Principal(subject="LEAD-7", kind="token", roles=frozenset({"lead", "senior_auditor"}),
                     regions=frozenset({"US"}))
    own = Principal(subject="aud-7", kind="token", roles=frozenset({"auditor", "senior_auditor"}),
                    regions=frozenset({"US"}))
    for who, says in ((both, "you raised this dispute"), (own, "the disputed verdict is yours")):
        with pytest.raises(AuditError) as info:
            await disputes.resolve_dispute(engine, who, dispute["id"], "overturn", runtime=runtime)
        assert problem_for(info.value).status == 403 and info.value.errors[0]["field"] == "dispute_id"
        assert says in info.value.errors[0]["message"]
    async with engine.connect() as conn:
        still = (await conn.execute(text("SELECT status FROM disputes WHERE id = :d"), {"d": dispute["id"]})).scalar()
    assert still == "open"  # refused attempts change nothing
    resolved = await disputes.resolve_dispute(engine, senior, dispute["id"], "overturn", "evidence was fine",
                                              runtime=runtime)
    assert resolved["status"] == "overturned" and resolved["reverse_correction_id"]
    assert (resolved["raised_by"], resolved["auditor_id"], resolved["resolved_by"]) == ("lead-7", "aud-7",
                                                                                      "senior-7")
    with pytest.raises(AuditError) as info:
        await disputes.resolve_dispute(engine, senior, dispute["id"], "uphold", runtime=runtime)
    assert problem_for(info.value).status == 409
    async with engine.connect() as conn:
        results = (await conn.execute(text(
            "SELECT recent_results FROM agents WHERE agent_id = 'agent-1' AND region = 'US'"))).scalar()
    assert results[-1] is True  # the overturned failure no longer counts against the agent
    # the read side (insights) was told of the draw, the verdict and its overturn, in those transactions
    async with engine.connect() as conn:
        values = (await conn.execute(text(
            "SELECT value FROM outbox WHERE topic = 'audit.activity.v1' ORDER BY id"))).scalars().all()
    told = [decode_envelope(v) for v in values]
    told = [(e.event_type, p) for e, p in told if p.compensation_id == "dispute-1"]
    assert [t for t, _ in told] == ["audit.item_sampled", "audit.verdict_recorded", "audit.verdict_recorded"]
    sampled, failed, overturned = (p for _, p in told)
    assert sampled.item_id == item["id"] and 0 < sampled.inclusion_probability <= 1 and sampled.agent_id == "agent-1"
    assert (failed.passed, failed.error_category, failed.money_misstated.amount_minor) == (False, "not_warranted", 1000)
    assert failed.attributes["warranted"] is False and failed.dispute_id is None
    assert failed.within_sla is (failed.audited_at <= sampled.sla_due_at)  # queued at NOW, audited at the clock
    assert (overturned.passed, overturned.dispute_id, overturned.money_misstated.amount_minor) == (
        True, dispute["id"], 0)
    assert (overturned.verdict_id, overturned.auditor_id, overturned.audited_at) == (
        failed.verdict_id, "aud-7", failed.audited_at)
    await publish_outbox(url, engine, kafka_bootstrap)
    events = await read_topic(kafka_bootstrap, topic)
    assert [e.correction_id for e in events] == [verdict["correction_id"], resolved["reverse_correction_id"]]
    original, reversal = events
    assert original.corrected_amount.amount_minor == 0 and original.corrected_liability == []
    assert reversal.corrects_correction_id == original.correction_id
    # the reversal of money names everyone behind it; the original names its auditor only
    assert (reversal.auditor_id, reversal.dispute_raised_by, reversal.disputed_auditor_id) == (
        "senior-7", "lead-7", "aud-7")
    assert (original.auditor_id, original.dispute_raised_by, original.disputed_auditor_id) == ("aud-7", None, None)
    assert reversal.corrected_amount.amount_minor == 1000
    assert sum(s.amount_minor for s in reversal.corrected_liability) == 1000
    assert orjson.loads(orjson.dumps(reversal.model_dump(mode="json")))["compensation_id"] == "dispute-1"
    detail = await claims.get_item(engine, lead, item["id"])
    assert detail["verdict"]["status"] == "overturned"
    assert (detail["dispute"]["raised_by"], detail["dispute"]["resolved_by"]) == ("lead-7", "senior-7")


async def test_gold_and_pass_verdicts_emit_nothing(env, kafka_bootstrap, make_topics):
    url, engine, folder = env
    (topic,) = await make_topics("corrections")
    runtime = Runtime(PolicySet.load(folder), topic)
    lead, auditor = person("lead-8", "lead"), person("aud-8", "auditor")
    gold = await gold_items.seed_gold_item(engine, lead, gold_items.GoldItemInput(
        region="US", expected=WRONG_AMOUNT, compensation={
            "compensation_id": "gold-1", "ticket_id": "T9", "order_id": "O9", "buyer_id": "B9",
            "agent_id": "agent-gold", "team": "team-1", "kind": "voucher",
            "amount": {"amount_minor": 5000, "currency": "USD"}, "reason_code": "late_delivery",
            "liability": [{"party": {"type": "platform"}, "amount_minor": 5000}]}), runtime=runtime, now=NOW)
    assert gold["item_kind"] == "gold" and gold["gold_expected"]["amount_correct"] is False
    await enqueue(engine, folder, "pass-1")
    seen = set()
    while (item := await claims.claim_next(engine, auditor, "US", runtime=runtime)) is not None:
        seen.add(item["compensation_id"])
        assert item["item_kind"] == "audit" and "gold_expected" not in item
        if item["compensation_id"] == "gold-1":
            v = await verdicts.submit_verdict(engine, auditor, item["id"], VerdictInput(
                WRONG_AMOUNT, False, "wrong_amount", corrected_amount_minor=2000), runtime=runtime)
            assert v["gold_correct"] is True and v["correction_id"] is None
        else:
            await verdicts.submit_verdict(engine, auditor, item["id"], VerdictInput(
                dict.fromkeys(ATTRIBUTES, True), True), runtime=runtime)
    assert {"gold-1", "pass-1"} <= seen
    await publish_outbox(url, engine, kafka_bootstrap)
    assert await read_topic(kafka_bootstrap, topic) == []
