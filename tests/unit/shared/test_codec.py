"""The contracts' codec (shared/contracts/codec.py): every contract round-trips; its decoder gives exactly what
the registry's validating decoder gives (the same envelope fields and payload, or the same ContractError,
message and field errors) for valid and broken documents of every contract; its money plan finds every money
amount the generic walk finds; the consumer runner decodes with it; the ledger's own hand decoder is gone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.app import books_group, build_app
from services.ledger.config import Settings
from shared.contracts import codec
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import (
    REGISTRY,
    ContractError,
    decode_envelope,
    encode_envelope,
    make_envelope,
    money_fields,
)
from shared.db import make_engine
from shared.kafka.consumer import ConsumerRunner
from tests.unit.ledger.ledger_factories import (
    CURRENCY,
    NOW,
    allowance_request,
    allowance_return,
    carrier,
    correction,
    expired,
    issued,
    issued_from,
    manual,
    redeemed,
    request,
    revoked,
    seller,
)

SG = "SGD"


def _ticket() -> Envelope:
    p = ev.TicketOpened(
        ticket_id="T1", order_id="O1", buyer_id="B1", seller_id="S1", carrier_id="C1",
        reason=ev.TicketReason.LATE_DELIVERY, order_amount=ev.PositiveMoney(amount_minor=5_000, currency=SG),
        affected_amount=ev.NonNegativeMoney(amount_minor=1_200, currency=SG), order_placed_at=NOW - timedelta(days=5),
        promised_delivery_at=NOW - timedelta(days=1), delivered_at=NOW, buyer_segment="gold",
        evidence=[ev.EvidenceRef(kind="photo", uri="s3://bucket/p.jpg")], description="late, ünïcode ✓")
    return make_envelope("ticket.opened", p, source="intake", region="SG", occurred_at=NOW, produced_at=NOW,
                         traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")


def _pace() -> ev.AllowancePace:
    return ev.AllowancePace(limit=ev.MoneyTotal(amount_minor=10**6, currency=SG),
                            used=ev.MoneyTotal(amount_minor=10**5, currency=SG), pacing_allowance_percent=10,
                            pace_cap=ev.MoneyTotal(amount_minor=3 * 10**5, currency=SG),
                            period_start=datetime(2026, 11, 1, tzinfo=UTC),
                            period_end=datetime(2026, 12, 1, tzinfo=UTC))


def _others() -> list[Envelope]:
    limit = ev.MoneyTotal(amount_minor=1000, currency=SG)
    used = ev.MoneyTotal(amount_minor=800, currency=SG)
    payloads: list[tuple[str, ev.Payload]] = [
        ("buyer.order_placed", ev.BuyerOrderPlaced(order_id="O2", buyer_id="B1",
                                                   amount=ev.PositiveMoney(amount_minor=700, currency=SG))),
        ("budget.reservation_decided", ev.BudgetReservationDecided(
            reservation_id="R1", compensation_id="C1", ticket_id="T1", buyer_id="B1",
            outcome=ev.ReservationOutcome.RESERVED, reserved_amount=ev.PositiveMoney(amount_minor=5, currency=SG),
            budget_period="2026-11")),
        ("budget.threshold_crossed", ev.BudgetThresholdCrossed(budget_period="2026-11", threshold_percent=80,
                                                               limit=limit, used=used)),
        ("budget.exceeded", ev.BudgetExceeded(budget_period="2026-11", limit=limit, used=used, compensation_id="C9")),
        ("budget.allowance_decided", ev.BudgetAllowanceDecided(
            allowance_id="A1", request_seq=2, budget_period="2026-11", outcome=ev.AllowanceOutcome.GRANTED,
            granted=ev.MoneyTotal(amount_minor=500, currency=SG),
            granted_total=ev.MoneyTotal(amount_minor=900, currency=SG), expires_at=NOW + timedelta(minutes=5),
            pace=_pace(), detail="granted")),
        ("decision.recorded", ev.DecisionRecorded(
            ticket_id="T1", order_id="O1", buyer_id="B1", seller_id="S1", reason=ev.TicketReason.DAMAGED,
            ticket_occurred_at=NOW, shadow=False, outcome=ev.DecisionOutcome.ISSUED, detail="issued",
            strategy_id="s", strategy_version=1, tier="t1", kind=ev.CompensationKind.VOUCHER,
            amount=ev.PositiveMoney(amount_minor=300, currency=SG),
            liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S1"), amount_minor=200),
                       ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=100)],
            compensation_id="C1")),
        ("buyer.feedback_given", ev.BuyerFeedbackGiven(feedback_id="F", ticket_id="T1", order_id="O1", buyer_id="B1",
                                                       kind=ev.FeedbackKind.CSAT, score=4, channel="survey")),
        ("order.volume_reported", ev.OrderVolumeReported(day=NOW.date(), orders=1_200,
                                                         gmv=ev.NonNegativeMoney(amount_minor=10**7, currency=SG))),
        ("audit.item_sampled", ev.AuditItemSampled(
            item_id=7, compensation_id="M1", buyer_id="B1", compensation_occurred_at=NOW, stratum="cs_voucher",
            inclusion_probability=0.25, mandatory=False, agent_id="A1", team="cs", reason_code="late",
            amount=ev.PositiveMoney(amount_minor=500, currency=SG), sla_due_at=NOW + timedelta(days=2))),
        ("audit.item_evicted", ev.AuditItemEvicted(item_id=7, compensation_id="M1", buyer_id="B1")),
        ("audit.verdict_recorded", ev.AuditVerdictRecorded(
            verdict_id=3, item_id=7, compensation_id="M1", buyer_id="B1", auditor_id="au1", passed=False,
            attributes={"evidence_ok": True, "amount_ok": False}, error_category="amount_too_high",
            amount=ev.PositiveMoney(amount_minor=500, currency=SG),
            money_misstated=ev.NonNegativeMoney(amount_minor=200, currency=SG), audited_at=NOW, within_sla=True)),
        ("budget.limit_set", ev.BudgetLimitSet(budget_period="2026-11",
                                               limit=ev.MoneyTotal(amount_minor=10**15, currency=SG), actor="a")),
        ("compensation.requested", ev.CompensationRequested(
            request_id="Q1", ticket_id="T1", order_id="O1", buyer_id="B1", agent_id="A1", team="cs",
            kind=ev.CompensationKind.VOUCHER, amount=ev.PositiveMoney(amount_minor=400, currency=SG),
            reason_code="late", note="buyer waited ✓",
            case=ev.CaseSnapshot(ticket_reason=ev.TicketReason.LATE_DELIVERY, delivered_at=NOW, carrier_id="C1"))),
        ("compensation.request_decided", ev.CompensationRequestDecided(
            request_id="Q1", ticket_id="T1", order_id="O1", buyer_id="B1", agent_id="A1", team="cs",
            reason_code="late", kind=ev.CompensationKind.VOUCHER,
            requested_amount=ev.PositiveMoney(amount_minor=400, currency=SG),
            approved_amount=ev.PositiveMoney(amount_minor=300, currency=SG), outcome=ev.RequestOutcome.APPROVED,
            automatic=False, decided_by="lead1", reason="within policy after review", rule="sg-default",
            requested_at=NOW, decided_at=NOW)),
        ("compensation.issue_flagged", ev.CompensationIssueFlagged(
            compensation_id="M1", request_id="Q1", ticket_id="T1", buyer_id="B1", agent_id="A1", team="cs",
            reason_code="late", issued_amount=ev.PositiveMoney(amount_minor=500, currency=SG),
            approved_amount=ev.PositiveMoney(amount_minor=300, currency=SG),
            mismatches=[ev.IssueMismatch.ABOVE_APPROVED], finding="issued 5.00 above the approved 3.00", item_id=9,
            issued_at=NOW)),
        ("audit.corrective_action_recorded", ev.CorrectiveActionRecorded(
            action_id=4, source=ev.ActionSource.FINDING, source_ref="item 9", target_type=ev.ActionTargetType.AGENT,
            target_id="A1", kind="coaching", owner="lead1", due_on=NOW.date(), status=ev.ActionStatus.OPEN,
            opened_by="lead1", opened_at=NOW, updated_at=NOW)),
        ("insight.spike_detected", ev.SpikeDetected(
            alert_id="SG-reason-late-2026", dimension=ev.SpikeDimension.REASON, key="late_delivery",
            kind=ev.SpikeKind.SPIKE, day=NOW.date(), bucket_start=NOW, bucket_end=NOW + timedelta(days=1),
            observed=70, expected=20.5, lower=10.25, upper=33.0, z=5.5, episode_start=NOW,
            contributors=[ev.SpikeContributor(dimension=ev.SpikeDimension.CARRIER, key="C1", observed=50,
                                              expected=12.0, share=0.77)])),
    ]
    return [make_envelope(t, p, source="ledger", region="SG", occurred_at=NOW, produced_at=NOW) for t, p in payloads]


SAMPLES = [
    _ticket(),
    manual("M1", 600, region="US", shares=[(seller(), 400), (carrier(), 200)]),
    manual("M2", 90_000, region="ID"),
    issued("R1", 500),
    issued_from("A1", "C7", 800),
    request("R2", 500, fallbacks=(300, 100)),
    redeemed("C1", 250),
    expired("C1"),
    revoked("C1"),
    correction("K1", "C1", 100),
    allowance_request("A1", 3, at_least=100, wanted=5_000),
    allowance_return("A1", 800, 1),
    *_others(),
]
CURRENCIES = ["SGD", "USD", "IDR", "GBP", "EUR"]
REGIONS = ["SG", "US", "ID", "GB", "XX"]


def test_samples_cover_every_contract():
    assert {(e.event_type, e.schema_version) for e in SAMPLES} == set(REGISTRY) == set(codec.CODECS)


def outcome(decoder: Any, raw: bytes) -> tuple[str, Any]:
    try:
        envelope, payload = decoder(raw)
    except ContractError as exc:
        return "error", (type(exc), str(exc), exc.errors)
    # The envelope's fields (the codec's envelope carries the payload as its model: re-encoded, it writes
    # the payload's defaults out), the payload by model equality, and the same field set and types all the
    # way down.
    fields = {name: getattr(envelope, name) for name in Envelope.model_fields if name != "payload"}
    return "ok", (fields, payload, type(payload), payload.model_fields_set, payload.model_dump(mode="python"))


def same(raw: bytes) -> None:
    assert outcome(codec.decode, raw) == outcome(decode_envelope, raw)


@pytest.mark.parametrize("envelope", SAMPLES, ids=lambda e: e.event_type)
def test_every_contract_round_trips(envelope):
    raw = encode_envelope(envelope)
    assert codec.encode(envelope) == raw
    decoded, payload = codec.decode(raw)
    codec_of = codec.CODECS[(envelope.event_type, envelope.schema_version)]
    assert codec_of.decode(orjson.loads(raw)) == (decoded, payload)  # the contract's own path took it
    assert codec.encode(decoded) == raw  # bytes back, unchanged
    assert payload == REGISTRY[(envelope.event_type, envelope.schema_version)].model.model_validate(envelope.payload)
    same(raw)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"{}", b'{"event_id": 1}', b"\xff\xfe", b"null",
                                 b'{"event_type": "ticket.opened", "schema_version": 1}',
                                 b'{"event_type": "ticket.opened", "schema_version": 7}'])
def test_rejects_broken_records_as_the_registry(raw):
    assert outcome(codec.decode, raw)[0] == "error"
    same(raw)


def _money_paths(doc: Any) -> list[list[Any]]:
    """Paths (inside the payload) of every money object of a document."""
    found: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        if isinstance(node, dict):
            if set(node) == {"amount_minor", "currency"}:
                found.append(path)
            for k, v in node.items():
                walk(v, [*path, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, [*path, i])

    walk(doc, [])
    return found


def _leaf_paths(doc: Any, path: list[Any] | None = None) -> list[list[Any]]:
    path = path or []
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _leaf_paths(v, [*path, k])] or [path]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _leaf_paths(v, [*path, i])] or [path]
    return [path]


def _set(doc: Any, path: list[Any], value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def _document(sample: Envelope, region: str, data: Any) -> dict[str, Any]:
    doc = orjson.loads(encode_envelope(sample))
    doc["region"] = region
    # Every money amount gets a currency of its own, mostly the region's, so that often exactly one of them
    # is off: the case a money field the plan missed would let through.
    currencies = st.sampled_from([CURRENCY.get(region, "EUR")] * 3 + CURRENCIES)
    for path in _money_paths(doc["payload"]):
        _set(doc["payload"], [*path, "currency"], data.draw(currencies))
    return doc


@settings(max_examples=400, deadline=None)
@given(sample=st.sampled_from(SAMPLES), region=st.sampled_from(REGIONS), data=st.data())
def test_any_currencies_and_region_decode_as_the_registry(sample, region, data):
    same(orjson.dumps(_document(sample, region, data)))


# Values a leaf may be replaced with: of every JSON type, at and beyond the usual bounds, and text that
# the two JSON parsers could read differently (integers beyond 64 bits, exponents, escapes).
_ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 10**12, 10**12 + 1, 2**63]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", "\x00", "a\nb", "2026-11-15T08:00:00", "2026-11-15T08:00:00Z", "1e400", "USD", "SG",
                     "late_delivery", "x" * 2001]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=600, deadline=None)
@given(sample=st.sampled_from(SAMPLES), data=st.data(), value=_ODD, drop=st.booleans(), extra=st.booleans())
def test_broken_documents_decode_as_the_registry(sample, data, value, drop, extra):
    doc = orjson.loads(encode_envelope(sample))
    path = data.draw(st.sampled_from(_leaf_paths(doc)))
    # Dropped fields with a default factory (produced_at, correlation_id) differ by their defaults' nature.
    if drop and isinstance(path[-1], str) and path not in (["produced_at"], ["correlation_id"]):
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent.pop(path[-1])
    else:
        _set(doc, path, value)
    if extra:
        doc["payload"]["unexpected"] = 1
    # The standard library writes integers of any size (orjson refuses those beyond 64 bits).
    same(json.dumps(doc, ensure_ascii=data.draw(st.booleans()), separators=(",", ":")).encode())


@pytest.mark.parametrize("text", [
    b'"amount_minor":123456789012345678901', b'"amount_minor":-9999999999999999999',
    b'"amount_minor":18446744073709551615', b'"amount_minor":-9223372036854775809', b'"amount_minor":1e3',
    b'"amount_minor":500.0',
    b'"amount_minor":NaN', b'"amount_minor":-0', b'"amount_minor":"500"', b'"amount_minor":true'])
def test_numbers_the_parsers_read_differently_decode_as_the_registry(text):
    raw = encode_envelope(redeemed("C1", 250))
    assert b'"amount_minor":250' in raw
    same(raw.replace(b'"amount_minor":250', text))


def test_duplicate_keys_and_escapes_decode_as_the_registry():
    raw = encode_envelope(redeemed("C1", 250))
    same(raw.replace(b'"buyer_id":"B1"', b'"buyer_id":"B0","buyer_id":"B1"'))
    same(raw.replace(b'"buyer_id":"B1"', b'"buyer_id":"B\\u0031"'))
    same(raw.replace(b'"buyer_id":"B1"', b'"buyer_id":"B\\ud800"'))


@settings(max_examples=300, deadline=None)
@given(sample=st.sampled_from(SAMPLES), region=st.sampled_from(REGIONS), data=st.data())
def test_money_plan_finds_what_the_generic_walk_finds(sample, region, data):
    doc = _document(sample, region, data)
    model = REGISTRY[(sample.event_type, sample.schema_version)].model
    try:
        payload = model.model_validate(doc["payload"])
    except ValueError:
        return  # a currency pair a cross-field rule refuses
    currency = CURRENCY.get(region, "EUR")
    found = money_fields(payload)
    assert codec.currency_matches(codec.money_plan(model), payload, currency) == all(
        m.currency == currency for _, m in found)
    assert bool(codec.money_plan(model)) == bool(_money_paths(orjson.loads(encode_envelope(sample))["payload"]))


def _record(value: bytes | None, offset: int = 7) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic="t", partition=3, offset=offset, timestamp=123, timestamp_type=0, key=b"k",
                          value=value, checksum=None, serialized_key_size=1,
                          serialized_value_size=len(value or b""), headers=[])


def _runner(settings_: Settings, **options: Any) -> ConsumerRunner:
    return ConsumerRunner(settings=settings_, engine=make_engine(settings_.database_url, "ledger"), group_id="g",
                          topics=["t"], handler=None, **options)  # type: ignore[arg-type]


def test_the_runner_decodes_with_the_codec_and_words_errors_as_the_registry():
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x")
    runner = _runner(s)
    bad_currency = orjson.loads(encode_envelope(SAMPLES[1]))
    bad_currency["payload"]["amount"]["currency"] = "SGD"
    for envelope in SAMPLES:
        rec = runner._decode(_record(encode_envelope(envelope)))  # type: ignore[attr-defined]
        assert rec.delivered is not None and rec.delivered.envelope == envelope
    for value in [None, b"nope", orjson.dumps(bad_currency)]:
        rec = runner._decode(_record(value))  # type: ignore[attr-defined]
        assert rec.delivered is None and rec.error
        if value:
            with pytest.raises(ContractError) as exc:
                decode_envelope(value)
            assert str(exc.value) in rec.error


def test_books_group_runs_large_batches_with_the_shared_codec():
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x", consumer_max_batch=300)
    ctx = build_app(s, housekeeping=False).state.ctx
    batches = {r.group_id: (r.decoder, r.max_batch) for r in ctx.runners}
    assert batches == {books_group(s): (None, 2000), "ledger-budget": (None, 300)}
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x", books_max_batch=50)
    assert {r.group_id: r.max_batch for r in build_app(s).state.ctx.runners}[books_group(s)] == 50


def test_no_service_keeps_a_hand_encoder_or_decoder():
    root = Path(__file__).resolve().parents[3]
    assert not (root / "services" / "ledger" / "decoding.py").exists()
    for path in (root / "services").rglob("*.py"):
        text = path.read_text()
        assert "orjson.loads(raw" not in text and '"payload": payload' not in text, path
    assert codec.CODECS[("voucher.expired", 1)].money == ()
    assert NOW.tzinfo is not None


@settings(max_examples=300, deadline=None)
@given(at=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30),
                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))])),
       naive=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30)))
def test_json_time_writes_every_instant_as_pydantic_whatever_it_wrote_before(at, naive):
    """json_time remembers the instants it wrote: the same instant in another zone, or a naive datetime with
    the same wall time, must still come out as pydantic writes each."""
    from pydantic import TypeAdapter

    aware = TypeAdapter(datetime)
    for value in (at, at.astimezone(UTC), at.astimezone(timezone(timedelta(hours=3))), at.replace(tzinfo=None),
                  naive, at):
        expected = aware.dump_python(value.astimezone(UTC), mode="json")
        assert codec.json_time(value) == expected
