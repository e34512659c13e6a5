"""The bounds every contract shares (issue 11; ADR 0006, "Bounds"): money, text, timestamps, headers.

Two kinds of test: the shared types refuse what no consumer could store or process, with a clear message;
and every registered contract's published JSON Schema states a bound for every integer, every string and
every timestamp, so a contract added later cannot reopen the gap (it must use the shared types).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from shared.contracts import events as ev
from shared.contracts.envelope import (
    DATE_PATTERN,
    EARLIEST,
    END,
    NO_NUL,
    ONE_LINE,
    TIMESTAMP_PATTERN,
    AwareDatetime,
    Envelope,
    check_date,
)
from shared.contracts.export import DEAD_LETTER_HEADERS, asyncapi, event_schema
from shared.contracts.registry import REGISTRY, ContractError, decode_envelope, encode_envelope, make_envelope
from shared.kafka import envelope_headers
from shared.money import MAX_AMOUNT_MINOR, MAX_BUDGET_MINOR, MAX_TOTAL_MINOR

TIMESTAMP = TypeAdapter(AwareDatetime)
NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def _errors(fn: Any) -> list[str]:
    try:
        fn()
    except ValidationError as exc:
        return [e["msg"] for e in exc.errors()]
    return []


# ------------------------------------------------------------------ money


def test_the_bounds_leave_every_sum_room_in_a_bigint():
    assert MAX_TOTAL_MINOR == 2**63 - 1
    assert MAX_TOTAL_MINOR // MAX_AMOUNT_MINOR > 9_000_000  # maximal amounts one sum holds
    assert MAX_TOTAL_MINOR // MAX_BUDGET_MINOR > 9_000  # periods of maximal budgets one sum holds
    assert MAX_BUDGET_MINOR * 100 < MAX_TOTAL_MINOR  # percent of a limit, computed anywhere


@pytest.mark.parametrize("model, low, high", [
    (ev.PositiveMoney, 1, MAX_AMOUNT_MINOR), (ev.NonNegativeMoney, 0, MAX_AMOUNT_MINOR),
    (ev.MoneyTotal, 0, MAX_TOTAL_MINOR)])
def test_money_types_take_exactly_their_range(model, low, high):
    for ok in (low, high):
        assert model(amount_minor=ok, currency="IDR").amount_minor == ok
    for bad in (low - 1, high + 1, 2**63, 2**64, -(2**63) - 1, 10**30):
        assert _errors(lambda b=bad: model(amount_minor=b, currency="IDR")), bad
    assert _errors(lambda: model.model_validate({"amount_minor": 5.0, "currency": "IDR"}))
    assert _errors(lambda: model.model_validate({"amount_minor": True, "currency": "IDR"}))


def test_a_liability_share_is_an_amount():
    party = {"type": "platform"}
    assert _errors(lambda: ev.LiabilityShare(party=party, amount_minor=MAX_AMOUNT_MINOR + 1))
    assert ev.LiabilityShare(party=party, amount_minor=MAX_AMOUNT_MINOR).amount_minor == MAX_AMOUNT_MINOR


def test_budget_alerts_carry_totals_beyond_one_amount():
    alert = ev.BudgetThresholdCrossed(budget_period="2026-11", threshold_percent=80,
                                      limit=ev.MoneyTotal(amount_minor=MAX_BUDGET_MINOR, currency="VND"),
                                      used=ev.MoneyTotal(amount_minor=MAX_TOTAL_MINOR, currency="VND"))
    env = make_envelope("budget.threshold_crossed", alert, source="ledger", region="VN", occurred_at=NOW)
    assert decode_envelope(encode_envelope(env))[1] == alert


# ------------------------------------------------------------------ text and ids


def test_free_text_refuses_nul_and_keeps_everything_else():
    base = dict(compensation_id="C1", ticket_id="T1", order_id="O1", buyer_id="B1", agent_id="A1", team="t",
                kind="voucher", amount={"amount_minor": 10, "currency": "USD"}, reason_code="late_delivery",
                liability=[{"party": {"type": "platform"}, "amount_minor": 10}])
    kept = "line one\nline two\ttabbed, \u00e9t\u00e9, \u4e2d\u6587, emoji \U0001f600"
    assert ev.ManualCompensationIssued(**base, note=kept).note == kept
    assert _errors(lambda: ev.ManualCompensationIssued(**base, note="refund\x00")) == [
        "Value error, must not contain a NUL character (U+0000)"]
    assert _errors(lambda: ev.EvidenceRef(kind="photo", uri="https://x/\n"))


@pytest.mark.parametrize("field, value", [
    ("correlation_id", "a\x00b"), ("correlation_id", "line\nbreak"), ("correlation_id", ""),
    ("causation_id", "x\x7f"), ("source", "intake\r"), ("traceparent", "00-\x00"), ("schema_version", 10**6)])
def test_envelope_fields_copied_into_headers_and_logs_are_one_line(field, value):
    data = orjson.loads(encode_envelope(make_envelope(
        "voucher.expired", ev.VoucherExpired(compensation_id="C1", buyer_id="B1"), source="x", region="SG",
        occurred_at=NOW)))
    data[field] = value
    with pytest.raises(ContractError) as exc:
        decode_envelope(orjson.dumps(data))
    assert exc.value.errors[0][0] == field


# ------------------------------------------------------------------ timestamps


@pytest.mark.parametrize("value", [
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:00-01:00", "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z",
    "1970-01-01T00:00:00+00:01", "2199-12-31T23:59:59-00:01"])
def test_instants_outside_the_span_are_refused_with_a_value_error(value):
    assert _errors(lambda: TIMESTAMP.validate_python(value))[0].startswith("Value error, must lie between")
    assert _errors(lambda: TIMESTAMP.validate_json(orjson.dumps(value)))


@pytest.mark.parametrize("value", [
    1763631000, 1763631000.5, "1763631000", "2026-11-20", "2026-11-20T09:30:00", "2026-11-20 09:30:00Z",
    "2026-11-20T09:30Z", "2026-11-20T09:30:00+0100", "2026-11-20T09:30:60Z", "2026-11-20T24:00:00Z",
    "20261120T093000Z", "", None, True, [], {}])
def test_timestamps_are_rfc3339_strings_only(value):
    messages = _errors(lambda: TIMESTAMP.validate_python(value))
    assert messages and "RFC 3339" in messages[0], messages


@pytest.mark.parametrize("value, utc", [
    ("2026-11-20t09:30:00z", "2026-11-20T09:30:00+00:00"),
    ("2026-11-20T17:30:00+08:00", "2026-11-20T09:30:00+00:00"),
    ("2026-11-20T09:30:00.123456789-00:00", "2026-11-20T09:30:00.123456+00:00"),
    ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00+00:00"),
    ("1970-01-01T00:00:00-14:00", "1970-01-01T14:00:00+00:00"),
    ("2199-12-31T23:59:59.999999+13:00", "2199-12-31T10:59:59.999999+00:00"),
])
def test_accepted_timestamps_are_normalised_to_utc(value, utc):
    assert TIMESTAMP.validate_python(value).isoformat() == utc


def test_python_producers_pass_datetimes_checked_the_same_way():
    assert TIMESTAMP.validate_python(NOW) == NOW
    assert _errors(lambda: TIMESTAMP.validate_python(datetime(2026, 11, 22)))  # naive
    assert _errors(lambda: TIMESTAMP.validate_python(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))))
    assert _errors(lambda: TIMESTAMP.validate_python(datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=1)))))


_OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59)


def _written(local: datetime, offset: int) -> str:
    sign = "+" if offset >= 0 else "-"
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"


@given(st.datetimes(min_value=datetime(1969, 12, 25), max_value=datetime(2200, 1, 5)), _OFFSETS)
def test_the_published_pattern_is_the_rule_and_keeps_every_instant_inside_the_span(local, offset):
    written = _written(local, offset)
    instant = local.replace(tzinfo=timezone(timedelta(minutes=offset))).astimezone(UTC)
    accepted = not _errors(lambda: TIMESTAMP.validate_python(written))
    assert accepted == bool(re.match(TIMESTAMP_PATTERN, written))  # what the schema says is what is checked
    if accepted:
        assert EARLIEST <= instant < END
        # its UTC form, as consumers read it, is accepted too
        assert not _errors(lambda: TIMESTAMP.validate_python(instant.isoformat().replace("+00:00", "Z")))
    elif local.strftime("%m-%d") not in ("12-31", "01-01"):
        # refused although inside the span only when written on a day next to either end of it
        assert not EARLIEST <= instant < END


def test_dates_of_query_parameters_and_periods_share_the_span():
    assert check_date(datetime(1970, 1, 1).date()) and check_date(datetime(2199, 12, 31).date())
    for year in (1, 1969, 2200, 9999):
        with pytest.raises(ValueError, match="1970 to 2199"):
            check_date(datetime(year, 1, 1).date())
    assert re.match(DATE_PATTERN, "2199-12-31") and not re.match(DATE_PATTERN, "2200-01-01")


# ------------------------------------------------------------------ every contract states its bounds


def _walk(node: Any, defs: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every leaf schema (integer, number, string) with its path; references resolved."""
    if "$ref" in node:
        return _walk(defs[node["$ref"].rsplit("/", 1)[-1]], defs, path)
    found: list[tuple[str, dict[str, Any]]] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(node.get(key, [])):
            found += _walk(sub, defs, f"{path}|{i}")
    for name, sub in node.get("properties", {}).items():
        found += _walk(sub, defs, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _walk(node["items"], defs, f"{path}[]")
    if node.get("type") in ("integer", "number", "string"):
        found.append((path, node))
    return found


def _unbounded(path: str, leaf: dict[str, Any]) -> str | None:
    if "const" in leaf or "enum" in leaf:
        return None
    if leaf["type"] == "number":  # a probability, say; never money or a count
        top = leaf.get("maximum", leaf.get("exclusiveMaximum"))
        bottom = leaf.get("minimum", leaf.get("exclusiveMinimum"))
        if path.endswith("_minor") or top is None or bottom is None:
            return f"{path}: a number (money and counts are integers)"
        return None
    if leaf["type"] == "integer":
        top = leaf.get("maximum", leaf.get("exclusiveMaximum"))
        bottom = leaf.get("minimum", leaf.get("exclusiveMinimum"))
        if top is None or bottom is None or top > MAX_TOTAL_MINOR or bottom < -MAX_TOTAL_MINOR:
            return f"{path}: an integer without bounds a bigint holds"
        return None
    if leaf.get("format") == "date-time":
        return None if leaf.get("pattern") == TIMESTAMP_PATTERN else f"{path}: a timestamp without the span"
    pattern = leaf.get("pattern")
    if pattern is None or (pattern not in (NO_NUL, ONE_LINE) and re.search(pattern, "a\x00b")):
        return f"{path}: a string that may hold NUL"
    if "maxLength" not in leaf and re.search(r"[*+]|\{\d+,\}", pattern):
        return f"{path}: a string without a length bound"
    return None


@pytest.mark.parametrize("spec", list(REGISTRY.values()), ids=lambda s: f"{s.event_type}.v{s.version}")
def test_every_field_of_every_contract_is_bounded_in_its_published_schema(spec):
    schema = event_schema(spec)
    leaves = _walk(schema, schema.get("$defs", {}), "$")
    leaves = [(p, leaf) for p, leaf in leaves if not p.endswith(".payload")]
    problems = [why for path, leaf in leaves if (why := _unbounded(path, leaf))]
    assert problems == [], "use the shared types of shared.contracts.events (ADR 0006, Bounds):\n" + \
        "\n".join(problems)
    money = [leaf for path, leaf in leaves if path.endswith(".amount_minor")]
    assert all(leaf["maximum"] <= MAX_TOTAL_MINOR for leaf in money)


BUDGET_TOTALS = {"budget.threshold_crossed", "budget.exceeded", "budget.limit_set", "budget.allowance_requested",
                 "budget.allowance_decided", "budget.allowance_returned"}


def test_one_amount_has_one_bound_in_every_contract():
    for spec in REGISTRY.values():
        schema = event_schema(spec)
        for path, leaf in _walk(schema, schema.get("$defs", {}), "$"):
            if not path.endswith("amount_minor"):
                continue
            # Budget totals (limits, usage, allowances granted from a budget up to MAX_BUDGET_MINOR) are
            # sums the ledger keeps; every other amount is one amount.
            if spec.event_type in BUDGET_TOTALS:
                assert leaf["maximum"] == MAX_TOTAL_MINOR, (spec.event_type, path)
            else:
                assert leaf["maximum"] == MAX_AMOUNT_MINOR, (spec.event_type, path)


# ------------------------------------------------------------------ AsyncAPI headers


def test_asyncapi_declares_every_header_producers_send():
    doc = asyncapi()
    for spec in REGISTRY.values():
        message = doc["components"]["messages"][f"{spec.event_type.replace('.', '_')}_v{spec.version}"]
        declared = message["headers"]["properties"]
        payload = spec.model.model_construct()  # headers depend on the envelope only
        env = Envelope(event_id="e-1", event_type=spec.event_type, schema_version=spec.version, occurred_at=NOW,
                       source="x", region="SG", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                       payload=payload.__dict__)
        sent = dict(envelope_headers(env))
        assert set(sent) <= set(declared), set(sent) - set(declared)
        assert set(message["headers"]["required"]) <= set(sent)
        assert declared["event_type"]["const"] == sent["event_type"].decode()
        assert declared["schema_version"]["const"] == sent["schema_version"].decode()
    dead = doc["components"]["messages"]["dead_letter"]["headers"]
    assert set(DEAD_LETTER_HEADERS) == set(dead["required"])


async def test_dead_letters_carry_the_declared_headers(monkeypatch):
    from shared import outbox
    from shared.kafka.consumer import DeadLetter, write_dead_letters

    published: list[Any] = []

    async def enqueue_records(_conn: Any, rows: Any) -> int:
        published.extend(rows)
        return len(rows)

    class Inserted:
        def scalar(self) -> int:
            return 1

    class Conn:
        async def execute(self, *_: Any, **__: Any) -> Inserted:
            return Inserted()

    monkeypatch.setattr(outbox, "enqueue_records", enqueue_records)
    await write_dead_letters(Conn(), [DeadLetter("g", "tickets.v1", 0, 7, b"k", b"v", [("event_id", b"e")], "bad")])
    (_, _, _, headers), = published
    assert {k for k, _ in headers} - {"event_id"} == set(DEAD_LETTER_HEADERS)


def test_the_committed_contracts_are_the_models_export(tmp_path):
    """``contracts/`` is what the models generate (``python -m shared.contracts export``), so the bounds a
    producer reads there are the ones enforced."""
    from shared.contracts.export import REPO_CONTRACTS, export

    for path in export(tmp_path):
        assert (REPO_CONTRACTS / path.name).read_bytes() == path.read_bytes(), \
            f"{path.name} is stale: run python -m shared.contracts export"
