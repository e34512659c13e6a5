"""The outbox records auto_comp writes by hand must be exactly what the validated contract models give:
same topic, key, headers and bytes as ``record_for(make_envelope(...))``, and they pass their contracts."""

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from services.auto_comp import outgoing
from shared.contracts import events as ev
from shared.contracts.registry import decode_envelope, make_envelope
from shared.kafka.producer import record_for

TRACE = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
ids = st.text("AZaz09._:@-", min_size=1, max_size=40)
comp_ids = st.text("AZaz09._:-", min_size=1, max_size=40)  # they go into event ids, which forbid '@'
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1),
                        timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))]))
traces = st.sampled_from([None, TRACE])
regions = st.sampled_from([("SG", "SGD"), ("US", "USD"), ("ID", "IDR")])


parties = st.lists(st.tuples(st.sampled_from(list(ev.PartyType)), st.integers(0, 10**6)), min_size=1, max_size=3,
                   unique_by=lambda x: x[0])


@given(comp_ids, ids, ids, ids, ids, st.integers(1, 10**6), st.sampled_from(list(ev.TicketReason)),
       st.sampled_from(list(ev.CompensationKind)), regions, parties, ids, st.one_of(st.none(), st.integers(0, 10**6)),
       instants, instants, ids, ids, traces, st.one_of(st.none(), ids))
def test_compensation_issued_record_equals_the_contract_encoding(
        comp_id, ticket_id, order_id, buyer_id, strategy_id, version, reason, kind, region_currency, shares, party_id,
        min_spend, valid_until, now, correlation_id, causation_id, traceparent, allowance_id):
    region, currency = region_currency
    liability = [(p.value, None if p is ev.PartyType.PLATFORM else f"{p.value}-{party_id}", m + 1) for p, m in shares]
    amount = sum(m for _, _, m in liability)
    voucher = kind is ev.CompensationKind.VOUCHER
    code = "V" + comp_id if voucher else None
    payload = outgoing.compensation_issued(
        compensation_id=comp_id, reservation_id=f"res-{comp_id}", ticket_id=ticket_id, order_id=order_id,
        buyer_id=buyer_id, strategy_id=strategy_id, strategy_version=version, reason=reason.value, kind=kind.value,
        amount_minor=amount, currency=currency, liability=liability, voucher_code=code,
        min_spend_minor=min_spend if voucher else None, valid_until=valid_until if voucher else None,
        allowance_id=allowance_id)
    record = outgoing.compensation_issued_record(
        payload, region=region, event_id=f"{comp_id}.issued", occurred_at=now, produced_at=now,
        correlation_id=correlation_id, causation_id=causation_id, traceparent=traceparent)
    model = ev.CompensationIssued(
        compensation_id=comp_id, reservation_id=f"res-{comp_id}", ticket_id=ticket_id, order_id=order_id,
        buyer_id=buyer_id, strategy_id=strategy_id, strategy_version=version, reason=reason, kind=kind,
        amount=ev.PositiveMoney(amount_minor=amount, currency=currency),
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType(t), id=i), amount_minor=m)
                   for t, i, m in liability],
        voucher_code=code,
        min_spend=ev.NonNegativeMoney(amount_minor=min_spend, currency=currency)
        if voucher and min_spend is not None else None,
        valid_until=valid_until if voucher else None, allowance_id=allowance_id)
    envelope = make_envelope("compensation.issued", model, source="auto_comp", region=region, occurred_at=now,
                             produced_at=now, event_id=f"{comp_id}.issued", correlation_id=correlation_id,
                             causation_id=causation_id, traceparent=traceparent)
    assert record == record_for(envelope)
    decoded, decoded_payload = decode_envelope(record[2])
    assert decoded == envelope and decoded_payload == model


@given(ids, ids)
def test_compensation_ids_are_uuid5(ticket_id, strategy_id):
    import uuid

    from services.auto_comp.handlers import _NAMESPACE, compensation_id_for

    assert compensation_id_for(ticket_id, strategy_id) == "ac-" + str(uuid.uuid5(_NAMESPACE,
                                                                               f"{ticket_id}\x1f{strategy_id}"))


@given(comp_ids, st.integers(1, 10**4), st.integers(1, 50), regions, st.integers(0, 100), st.integers(0, 10**9),
       st.integers(1, 10**9), instants)
def test_allowance_records_are_keyed_by_allowance_and_pass_their_contracts(
        allowance_id, seq, attempt, region_currency, pacing, at_least, extra, now):
    region, currency = region_currency
    request = outgoing.allowance_requested_record(
        allowance_id=allowance_id, seq=seq, attempt=attempt, region=region, period="2026-11", pacing_percent=pacing,
        at_least_minor=at_least, wanted_minor=at_least + extra, currency=currency, owner="auto_comp.tickets:3",
        occurred_at=now)
    returned = outgoing.allowance_returned_record(
        allowance_id=allowance_id, region=region, period="2026-11", currency=currency, spent_minor=at_least,
        spent_count=1 if at_least else 0, reason="revoked", closed_at=now)
    for record, event_type in ((request, "budget.allowance_requested"), (returned, "budget.allowance_returned")):
        topic, key, value, _ = record
        # one partition per allowance: the ledger sees its requests and its return in the order written
        assert topic == "budget.allowances.v1" and key == allowance_id.encode()
        envelope, payload = decode_envelope(value)
        assert envelope.event_type == event_type and payload.allowance_id == allowance_id
    assert decode_envelope(request[2])[0].event_id == f"{allowance_id}.{seq}.{attempt}"
    assert decode_envelope(returned[2])[0].event_id == f"{allowance_id}.returned"


def test_voucher_codes_are_unique_random_identifiers_across_blocks():
    """Codes are drawn a block at a time: each is 120 random bits in base32, none is handed out twice, and
    a forked process draws its own."""
    import base64
    import os
    import re

    from services.auto_comp import handlers

    codes = [handlers.new_voucher_code() for _ in range(3 * handlers._CODE_BLOCK + 7)]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"V[A-Z2-7]{24}", c) for c in codes)
    assert all(len(base64.b32decode(c[1:])) == 15 for c in codes)
    handlers.new_voucher_code()  # the pool now holds codes a child must not reuse
    held = set(handlers._CODES)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first code and leave at once
        os.write(write, handlers.new_voucher_code().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child not in held and child not in codes
