"""End offsets and group lag that a broker under-reporting its end cannot hide (issue 13).

Tansu, the embedded broker (ADR 0007), answers ListOffsets(latest) with the *base* offset of the
partition's last record batch + 1: after one produce request carrying five records (offsets 0-4) it says 1,
not 5, so a drain check "stored offset >= end offset" passes with four records unread. Its fetch responses
carry the right high watermark. :func:`end_offsets` therefore asks ListOffsets, then fetches from just below
that answer and takes the largest of the answer, the fetch's high watermark and the last record seen + 1.
Against a broker that answers correctly this costs one small fetch per partition and changes nothing.

:func:`group_lag` compares those ends with a consumer group's offsets of record (the ``consumer_offsets``
table the runner stores them in, ADR 0002): the lag that drain checks and operators should trust.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["end_offsets", "group_lag"]


async def end_offsets(bootstrap: str, partitions: Iterable[TopicPartition] = (), *, topics: Iterable[str] = (),
                      timeout: float = 5.0) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition (of ``partitions``, and of every partition of
    ``topics``), exact even where ListOffsets under-reports."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="latest",
                                fetch_max_wait_ms=100, max_poll_records=10_000)
    await consumer.start()
    try:
        tps = list(dict.fromkeys([*partitions, *(TopicPartition(t, p) for t in topics
                                                 for p in sorted(consumer.partitions_for_topic(t) or ()))]))
        if not tps:
            return {}
        # Assigned at once: a consumer stopped without any assignment trips over aiokafka's own shutdown.
        consumer.assign(tps)
        listed = await consumer.end_offsets(tps)
        ends = {tp: int(listed.get(tp) or 0) for tp in tps}
        probe = [tp for tp in tps if ends[tp] > 0]
        for tp in probe:
            consumer.seek(tp, ends[tp] - 1)  # inside the last batch, whatever its size
        pending = set(probe)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*probe, timeout_ms=200)
            for tp, records in batches.items():
                if records:
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp] = max(ends[tp], high)
                    # Read on until the position reaches the high watermark: then the end is known.
                    if (await consumer.position(tp)) >= ends[tp]:
                        pending.discard(tp)
        if pending:
            raise TimeoutError("end offsets not confirmed by a fetch within "
                               f"{timeout:.0f} s: {sorted(f'{tp.topic}[{tp.partition}]' for tp in pending)}")
        return ends
    finally:
        await consumer.stop()


def group_lag(ends: Mapping[TopicPartition, int],
              stored: Mapping[tuple[str, int], int]) -> dict[TopicPartition, int]:
    """Records of each partition a group has not processed: end minus its stored next offset (0 stored
    means it has processed nothing: the whole partition is its lag)."""
    return {tp: max(0, end - stored.get((tp.topic, tp.partition), 0)) for tp, end in ends.items()}

