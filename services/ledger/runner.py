"""The ledger's consumer runner: the shared runner, decoding records with ``services.ledger.decoding`` and
with the cyclic garbage collector paused while a batch is in hand.

Garbage collection: a books batch keeps tens of thousands of objects alive (decoded envelopes and payloads,
the book's transactions and entries) until it commits. The collector's young collections kept examining
them and promoting them, and after the start-up ``gc.freeze()`` (which leaves the old generation nearly
empty, so a full collection is due every few young ones) full collections traversed them again: measured
about a third of the consumer's CPU (ADR 0005). The batch's objects are freed by reference counting once it
is done (``Book`` holds no reference cycle), so collecting during the batch finds nothing to free; the
collector is switched off while any batch of this process is in hand and back on when none is. The cyclic
garbage a batch makes (a few SQLAlchemy compilation objects) waits for the next collection after it.

Everything else (dedup, offsets in the batch transaction, retries, dead letters) is the shared runner's.
Only a record that decodes cleanly takes the ledger's path; one that does not is handed to the shared
``_decode``, so poison records are dead-lettered with the shared runner's exact reason. A unit test holds
the two decoders equal record for record, and fails if the shared runner's decode hook changes shape.
"""

from __future__ import annotations

import gc
import time

from aiokafka import ConsumerRecord

from services.ledger.decoding import decode
from shared.contracts.registry import ContractError
from shared.kafka import Delivered
from shared.kafka.consumer import ConsumerRunner, _Rec

# Batches of any LedgerRunner of this process in hand (both consumer groups share one event loop), and since
# when we paused the collector (None: we did not; never switch on a collector someone else switched off).
_batches_in_hand = 0
_paused_since: float | None = None
# Two groups busy at once may never be idle together: then collect once in a while anyway, so the cyclic
# garbage of their batches cannot pile up.
MAX_PAUSE_SECONDS = 2.0


class LedgerRunner(ConsumerRunner):
    async def _process(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        global _batches_in_hand, _paused_since
        if _batches_in_hand == 0 and gc.isenabled():
            gc.disable()
            _paused_since = time.monotonic()
        _batches_in_hand += 1
        try:
            await super()._process(records)
        finally:
            _batches_in_hand -= 1
            if _paused_since is not None:
                if _batches_in_hand == 0:
                    _paused_since = None
                    gc.enable()
                elif time.monotonic() - _paused_since > MAX_PAUSE_SECONDS:
                    gc.collect()
                    _paused_since = time.monotonic()

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> _Rec:
        if record.value is None:
            return super()._decode(record)
        try:
            envelope, payload = decode(record.value)
        except ContractError:
            return super()._decode(record)  # the shared runner words the dead letter
        return _Rec(record, Delivered(envelope, payload, record.topic, record.partition, record.offset,
                                      record.key, record.timestamp))
