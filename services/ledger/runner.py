"""The ledger's consumer runner: the shared runner, decoding records with ``services.ledger.decoding``.

Everything else (dedup, offsets in the batch transaction, retries, dead letters) is the shared runner's.
Only a record that decodes cleanly takes the ledger's path; one that does not is handed to the shared
``_decode``, so poison records are dead-lettered with the shared runner's exact reason. A unit test holds
the two decoders equal record for record, and fails if the shared runner's decode hook changes shape.
"""

from __future__ import annotations

from aiokafka import ConsumerRecord

from services.ledger.decoding import decode
from shared.contracts.registry import ContractError
from shared.kafka import Delivered
from shared.kafka.consumer import ConsumerRunner, _Rec


class LedgerRunner(ConsumerRunner):
    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> _Rec:
        if record.value is None:
            return super()._decode(record)
        try:
            envelope, payload = decode(record.value)
        except ContractError:
            return super()._decode(record)  # the shared runner words the dead letter
        return _Rec(record, Delivered(envelope, payload, record.topic, record.partition, record.offset,
                                      record.key, record.timestamp))
