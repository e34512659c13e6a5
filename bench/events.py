"""Contract-valid events for the benchmarks, made fast: one envelope (or HTTP item) is built and validated
through the real contracts, then its ids are substituted in the encoded bytes for each copy.

Tickets are US late deliveries 4 days late on a 50.00 USD order, each with its own buyer and order, so the
seed strategy ``us-late-delivery`` proposes a 5.00 USD voucher for every one (bar the 5% holdout) and the
abuse guard never caps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson

from bench.common import compression
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from shared.kafka.producer import record_for

TICKET_STRATEGY = "us-late-delivery"
_TID, _OID, _BID, _EID = "XXTIDXX", "XXOIDXX", "XXBIDXX", "XXEIDXX"


def _ticket(now: datetime) -> ev.TicketOpened:
    delivered = now - timedelta(hours=1)
    return ev.TicketOpened(
        ticket_id=_TID, order_id=_OID, buyer_id=_BID, seller_id="S-bench-1", carrier_id="C-bench",
        reason=ev.TicketReason.LATE_DELIVERY, order_amount=ev.PositiveMoney(amount_minor=5000, currency="USD"),
        order_placed_at=delivered - timedelta(days=9), promised_delivery_at=delivered - timedelta(days=4),
        delivered_at=delivered)


def _manual(now: datetime) -> ev.ManualCompensationIssued:
    return ev.ManualCompensationIssued(
        compensation_id=_TID, ticket_id=_TID, order_id=_OID, buyer_id=_BID, seller_id="S-bench-1",
        carrier_id="C-bench", agent_id="A-bench", team="us-tier1", kind=ev.CompensationKind.VOUCHER,
        amount=ev.PositiveMoney(amount_minor=600, currency="USD"), reason_code="damaged_item",
        liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.SELLER, id="S-bench-1"),
                                     amount_minor=400),
                   ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.CARRIER, id="C-bench"),
                                     amount_minor=200)],
        voucher_code=_BID, valid_until=now + timedelta(days=30))


class Records:
    """Kafka records (topic, key, value, headers) of one event type, ids substituted per copy."""

    def __init__(self, kind: str, run: str) -> None:
        now = datetime.now(UTC)
        if kind == "ticket":
            event_type, payload = "ticket.opened", _ticket(now)
        elif kind == "manual":
            event_type, payload = "compensation.manual_issued", _manual(now)
        else:
            raise ValueError(kind)
        env = make_envelope(event_type, payload, source="bench", region="US", occurred_at=now, event_id=_EID,
                            correlation_id=_EID)
        self.topic, self.key, self.value, self.headers = record_for(env)
        self.run = run

    def ids(self, i: int) -> tuple[str, str, str, str]:
        r = self.run
        return f"T-{r}-{i}", f"O-{r}-{i}", f"B-{r}-{i}", f"E-{r}-{i}"

    def record(self, i: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        tid, oid, bid, eid = (s.encode() for s in self.ids(i))
        value = (self.value.replace(_TID.encode(), tid).replace(_OID.encode(), oid)
                 .replace(_BID.encode(), bid).replace(_EID.encode(), eid))
        key = self.key.replace(_BID.encode(), bid)
        headers = [(k, v.replace(_EID.encode(), eid)) for k, v in self.headers]
        return key, value, headers


class TicketItems:
    """HTTP items for ``POST /v1/tickets`` (flat: producer envelope fields + payload)."""

    def __init__(self, run: str) -> None:
        now = datetime.now(UTC)
        item = {"event_id": _EID, "occurred_at": now.isoformat(), "region": "US",
                **_ticket(now).model_dump(mode="json", exclude_none=True)}
        from services.intake.domain.items import TicketItem

        TicketItem.model_validate(item)  # the template itself passes intake's schema
        self.template = orjson.dumps(item)
        self.run = run

    def ticket_id(self, i: int) -> str:
        return f"T-{self.run}-{i}"

    def item(self, i: int) -> bytes:
        r = self.run
        return (self.template.replace(_TID.encode(), f"T-{r}-{i}".encode())
                .replace(_OID.encode(), f"O-{r}-{i}".encode()).replace(_BID.encode(), f"B-{r}-{i}".encode())
                .replace(_EID.encode(), f"E-{r}-{i}".encode()))

    def batch(self, start: int, n: int) -> bytes:
        return b'{"items":[' + b",".join(self.item(i) for i in range(start, start + n)) + b"]}"


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


async def produce(bootstrap: str, records: Records, start: int, count: int) -> float:
    """Send ``count`` records (ids ``start..``) and wait for every ack; return records/s."""
    import asyncio
    import time

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type=compression(),
                                max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        for s, n in chunks(count, 5000):
            futures = []
            for i in range(start + s, start + s + n):
                key, value, headers = records.record(i)
                futures.append(await producer.send(records.topic, value, key=key, headers=headers))
            await asyncio.gather(*futures)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()
