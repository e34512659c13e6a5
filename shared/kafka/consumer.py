"""The consumer runner every service uses.

Guarantees (see docs/adr/0002-consumer-runner.md):
- at-least-once delivery with exactly-once *effects*: auto-commit is off; the next offset of every
  partition is stored in the service's database in the same transaction as the handler's writes and the
  processed-event records, and the consumer seeks to it on assignment. Kafka commits happen afterwards
  and are advisory (for lag tooling); a ``CommitFailedError`` during a rebalance loses nothing.
- idempotence: an event id already in ``processed_events`` for this consumer group is skipped.
- poison messages (undecodable, contract-violating, or failing the handler ``max_attempts`` times) go
  to the dead-letter topic through the outbox, in the same transaction that moves the offset past them.
- transient errors (database or broker unreachable, deadlocks, serialization failures: classified by
  SQLSTATE, see ``is_transient``) retry the batch with capped exponential backoff and never dead-letter,
  so an outage loses nothing and doubles nothing.
- a loop that hits an unexpected error does not die silently: it is logged, counted, reported not ready,
  and restarted after a backoff from the offsets stored in the database.
- graceful shutdown: ``stop()`` lets the batch in hand finish and commit before the consumer leaves, and
  always closes the Kafka consumer, whatever happened before.
- overlap (``CONSUMER_PREFETCH``): the next batch is fetched and decoded while the current one is written,
  at most one batch ahead; nothing of it counts until it is processed the usual way (offsets and dedup in
  its own transaction), and records of partitions revoked meanwhile are dropped, never processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError
from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import shared.outbox as outbox  # module import: shared.outbox imports shared.kafka too
from shared.config import CommonSettings
from shared.contracts.codec import decode as decode_envelope
from shared.contracts.envelope import Envelope
from shared.contracts.events import Payload
from shared.contracts.registry import ContractError
from shared.contracts.topics import Topic
from shared.logging import correlation_id
from shared.metrics import (
    CONSUMER_BATCH_SECONDS,
    CONSUMER_BATCH_SIZE,
    CONSUMER_COMMIT_FAILURES,
    CONSUMER_DEAD_LETTERED,
    CONSUMER_DUPLICATES,
    CONSUMER_FAILED,
    CONSUMER_LAG,
    CONSUMER_RECORDS,
    CONSUMER_TRANSIENT_RETRIES,
)

log = logging.getLogger(__name__)

# Kept next to the runner rather than in shared.metrics so this module owns its whole failure story.
CONSUMER_LOOP_RESTARTS = Counter(
    "comp_consumer_loop_restarts_total",
    "Consumer loops restarted after an unexpected error (each also makes the runner not ready).", ["group"])


_RECOVERY_IDLE_SECONDS = 1.0  # after a restart, idle this long with nothing to redo counts as recovered
_POSITION_RETRY_MIN_SECONDS = 0.2  # first retry of a failed seek on assignment; doubles up to the max
_POSITION_RETRY_MAX_SECONDS = 5.0
_LAG_REFRESH_SECONDS = 1.0  # the lag gauge of every assigned partition is refreshed at most this often


class PermanentError(Exception):
    """Raised by a handler for an event that can never succeed: dead-letter it at once, with this reason."""


@dataclass(frozen=True, slots=True)
class Delivered:
    envelope: Envelope
    payload: Payload
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int


class BatchHandler(Protocol):
    """A consumer's business logic. It declares the event types it consumes (``consumes``): the runner
    dead-letters any other type before the handler sees it, with the reason, the same way in every service
    (a known event on the wrong topic, or a type this consumer was never written for)."""

    consumes: frozenset[str]

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        """Apply new (never seen) events inside the batch transaction ``conn``.

        Raise ``PermanentError`` for an event that can never be applied; any other exception makes the
        runner retry events one by one to isolate the culprit.
        """


# SQLSTATEs after which the same transaction may succeed when simply run again. SQLAlchemy's asyncpg dialect
# wraps most server errors in a plain DBAPIError, so the class of the exception says nothing; the code does.
_TRANSIENT_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout, NOWAIT)
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovery)
    "53300",  # too_many_connections
})
_TRANSIENT_SQLSTATE_CLASSES = ("08",)  # connection exceptions
# asyncpg client-side errors without a SQLSTATE (the connection died under us).
_TRANSIENT_NAMES = frozenset({"ConnectionDoesNotExistError", "ConnectionFailureError", "InterfaceError"})


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: SQLAlchemy's ``.orig``, then ``__cause__`` and ``__context__``
    (unless suppressed)."""
    seen: set[int] = set()
    queue: list[BaseException | None] = [exc]
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        # ``raise X from None`` says the earlier error is not the cause: do not look behind it.
        context = None if current.__suppress_context__ else current.__context__
        queue.extend([orig if isinstance(orig, BaseException) else None, current.__cause__, context])


def sqlstate_of(exc: BaseException) -> str | None:
    """The first PostgreSQL SQLSTATE found on ``exc`` or anything it wraps."""
    for e in _exception_chain(exc):
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and state:
            return state
    return None


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same batch later can succeed: never dead-letter for these."""
    if isinstance(exc, PermanentError):
        return False  # the handler's verdict wins, whatever it was raised while handling
    for e in _exception_chain(exc):
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and (state in _TRANSIENT_SQLSTATES
                                       or state.startswith(_TRANSIENT_SQLSTATE_CLASSES)):
            return True
        if isinstance(e, OperationalError | InterfaceError):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, OSError | TimeoutError | KafkaError):
            return True
        if type(e).__name__ in _TRANSIENT_NAMES:
            return True
    return False


@dataclass(frozen=True)
class DeadLetter:
    """A record to set aside: its coordinates, original bytes and headers, and why."""

    group: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    error: str


async def write_dead_letters(conn: AsyncConnection, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """Record dead letters in ``dead_letters`` and publish them to the dead-letter topic through the outbox,
    in the caller's transaction; returns those written now. A record already dead-lettered (unique on
    group/topic/partition/offset) is neither stored nor published again."""
    written: list[DeadLetter] = []
    rows = []
    for letter in letters:
        # PostgreSQL text cannot hold NUL; an error message may quote the payload.
        error = letter.error.replace("\x00", "\\x00")
        headers: list[tuple[str, bytes | None]] = [
            *letter.headers,
            ("dlq.error", error[:4000].encode()),
            ("dlq.source_topic", letter.topic.encode()),
            ("dlq.source_partition", str(letter.partition).encode()),
            ("dlq.source_offset", str(letter.offset).encode()),
            ("dlq.consumer_group", letter.group.encode()),
        ]
        inserted = (await conn.execute(text(
            'INSERT INTO dead_letters (consumer_group, topic, partition, "offset", key, value, headers, '
            "error) VALUES (:g, :t, :p, :o, :k, :v, CAST(:h AS jsonb), :e) ON CONFLICT DO NOTHING "
            "RETURNING id"),
            {"g": letter.group, "t": letter.topic, "p": letter.partition, "o": letter.offset, "k": letter.key,
             "v": letter.value, "h": outbox.headers_json(headers), "e": error})).scalar()
        if inserted is None:
            continue
        written.append(replace(letter, error=error))
        rows.append((Topic.DEAD_LETTERS.value, letter.topic.encode(), letter.value or b"", headers))
    # Null header values are legal Kafka (aiokafka writes them); the outbox's Headers alias omits them.
    await outbox.enqueue_records(conn, cast(list[outbox.Record], rows))
    return written


_UPSERT_OFFSETS = (
    "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
    "SELECT :g, t, p, o FROM unnest(CAST(:t AS text[]), CAST(:p AS int[]), CAST(:o AS bigint[])) "
    "AS x(t, p, o) ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
    "next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()")


def _next_offsets(recs: Sequence[_Rec]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset after the last of ``recs`` in it."""
    nxt: dict[tuple[str, int], int] = {}
    for r in recs:
        k = (r.record.topic, r.record.partition)
        nxt[k] = max(nxt.get(k, 0), r.record.offset + 1)
    return nxt


@dataclass
class _Rec:
    record: ConsumerRecord[bytes, bytes]
    delivered: Delivered | None = None
    error: str | None = None  # set when the record is poison
    attempts: int = 0
    undecodable: str | None = None  # why it failed to decode: poison whatever happens to its batch


@dataclass
class _Fetched:
    """One fetch, decoded: the batch in hand, or the next one fetched ahead while it is written."""

    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    recs: list[_Rec]
    dropped: set[TopicPartition] = field(default_factory=set)  # revoked since it was fetched
    paused: bool = False  # holds the cyclic collector's pause from its decoding to the end of its batch
    # Its poll has returned. Only such a batch can hold records from before a seek: aiokafka discards what a
    # fetch still in flight brings from an old position, so marking those would drop good records.
    done: bool = False


@dataclass
class _Stats:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Wait for the batch in hand: its offsets are committed with its writes, so the next owner
        # starts exactly after it.
        async with self.runner._processing:
            pass
        self.runner._unpositioned.difference_update(revoked)
        for tp in revoked:  # its lag is the next owner's to report now
            self.runner._forget_lag(tp)
        # A batch fetched ahead holds records of these partitions: they are the next owner's now. (A fetch
        # still in flight returns nothing of them unless they come back, and then from the new seek.)
        for fetched in self.runner._ahead:
            if fetched.done:
                fetched.dropped.update(revoked)
        # Advisory only (the next owner seeks to the database's offsets), but lag tooling stays exact.
        await self.runner._flush_kafka_commit()
        await self.runner._handed_over(revoked, "revoked")

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.runner._seek_to_stored(assigned)
        extra = self.runner.stats.extra
        extra["assignments"] = extra.get("assignments", 0) + 1
        if assigned:
            log.info("partitions assigned", extra={"group": self.runner.group_id, "pid": os.getpid(),
                                                   "partitions": sorted(f"{tp.topic}[{tp.partition}]"
                                                                        for tp in assigned)})


# A decoder of a service's own (``decoder=``): returns what the contracts' codec (``shared.contracts.codec``,
# the default) would, or raises ContractError for anything it does not handle (the codec then words the
# dead letter). Every service decodes with the codec itself today; the option stays for tests and tools.
Decoder = Callable[[bytes], tuple[Envelope, Payload]]

# Called when partitions leave this consumer, after the batch in hand has committed: ("revoked") in a
# rebalance, before the next owner can get them; ("shutdown") when the runner stops, before it leaves the
# group. For state a service keeps per partition (auto_comp's budget allowances, ADR 0012).
OnRevoke = Callable[[list[TopicPartition], str], Awaitable[None]]


class CollectorPause:
    """The cyclic garbage collector switched off while any batch of a pausing runner of this process is in
    hand, and back on when none is.

    A large batch keeps tens of thousands of objects alive (decoded envelopes and payloads, the handler's
    rows) until it commits; young collections keep examining and promoting them, and after a start-up
    ``gc.freeze()`` full collections traverse them again: measured as about a third of the ledger
    consumer's CPU (ADR 0005). A batch's objects are freed by reference counting once it is done (handlers
    must not build reference cycles), so collecting during it finds nothing to free. Runners of several
    groups share one event loop and may never be idle together: then it collects every
    ``max_pause_seconds`` anyway, so cyclic garbage cannot pile up. A collector someone else switched off
    is never switched on here."""

    def __init__(self, max_pause_seconds: float = 2.0) -> None:
        self.max_pause_seconds = max_pause_seconds
        self.in_hand = 0
        self.paused_since: float | None = None

    def enter(self) -> None:
        if self.in_hand == 0 and gc.isenabled():
            gc.disable()
            self.paused_since = time.monotonic()
        self.in_hand += 1

    def exit(self) -> None:
        self.in_hand -= 1
        if self.paused_since is None:
            return
        if self.in_hand == 0:
            self.paused_since = None
            gc.enable()
        elif time.monotonic() - self.paused_since > self.max_pause_seconds:
            gc.collect()
            self.paused_since = time.monotonic()


COLLECTOR_PAUSE = CollectorPause()


class ConsumerRunner:
    def __init__(self, *, settings: CommonSettings, engine: AsyncEngine, group_id: str,
                 topics: Sequence[str], handler: BatchHandler, max_attempts: int = 3,
                 max_batch: int | None = None, on_commit: Any = None, restart_backoff: float = 1.0,
                 stop_timeout: float = 30.0, decoder: Decoder | None = None, pause_gc: bool = False,
                 on_revoke: OnRevoke | None = None) -> None:
        self.settings = settings
        self.on_revoke = on_revoke
        self.decoder = decoder
        self.pause_gc = pause_gc
        self.engine = engine
        self.group_id = group_id
        self.topics = list(topics)
        self.handler = handler
        # Tooling handlers (benchmarks, toolkit tests) may leave it out; every service handler declares it
        # (tests/unit/test_handlers_declare.py).
        self.consumes: frozenset[str] | None = getattr(handler, "consumes", None)
        self.max_attempts = max_attempts
        self.max_batch = max_batch or settings.consumer_max_batch
        self.on_commit = on_commit  # e.g. OutboxRelay.wake
        self.stats = _Stats()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._processing = asyncio.Lock()
        # Next offset of record per partition: a fetch already in flight when we sought on assignment can
        # still hand back older records; they are skipped here rather than left to deduplication.
        self._floor: dict[TopicPartition, int] = {}
        self.healthy = True  # False while a batch keeps failing transiently
        self.last_error: str | None = None
        self.restarts = 0
        self.restart_backoff = restart_backoff
        self.stop_timeout = stop_timeout
        # Set when the loop crashed: not ready until the restarted loop commits a batch or idles a while.
        self._recovering_since: float | None = None
        self._batch_in_hand = ""  # what the loop was doing, for the crash log
        # Advisory Kafka commits are batched in time: offsets waiting for the next one, and when it is due.
        self._kafka_pending: dict[TopicPartition, int] = {}
        self._kafka_commit_due = 0.0
        self.prefetch = settings.consumer_prefetch
        self._ahead: list[_Fetched] = []  # fetched (or being fetched) ahead of the batch in hand: at most one
        # Assigned partitions not yet put at their stored offsets (the database was unreachable when they
        # came): paused, never consumed from Kafka's advisory offset, retried from the loop (issue 13).
        self._unpositioned: set[TopicPartition] = set()
        self._position_due = 0.0
        self._position_backoff = _POSITION_RETRY_MIN_SECONDS
        # Lag (``_update_lag``): per partition, the offset after the last record fetched, the first record
        # fetched (where a group with nothing stored started), and which gauges this member set.
        self._fetched_end: dict[TopicPartition, int] = {}
        self._fetched_first: dict[TopicPartition, int] = {}
        self._lag_reported: set[TopicPartition] = set()
        self._lag_due = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._consumer = self._build_consumer()
        self._consumer.subscribe(self.topics, listener=_Rebalance(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.group_id}")

    def _build_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{self.settings.kafka_client_id_prefix}-{self.group_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_batch,
            fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms,
            session_timeout_ms=self.settings.consumer_session_timeout_ms,
            heartbeat_interval_ms=3_000,
            max_poll_interval_ms=600_000,
        )

    async def stop(self) -> None:
        """Finish the batch in hand (up to ``stop_timeout``), then leave the group, whatever happened."""
        self._stopping.set()
        try:
            await self._wait_for_loop()
            if self._consumer is not None:
                await self._handed_over(list(self._consumer.assignment()), "shutdown")
        finally:
            # Always: a consumer left open keeps heartbeating and holds its partitions from the next owner.
            try:
                if self._consumer is not None:
                    await self._flush_kafka_commit()  # leave lag tooling exact; the database needs nothing
            except BaseException as exc:  # advisory only: never a reason to keep the partitions
                log.info("kafka commit on stop failed", extra={"group": self.group_id, "error": repr(exc)})
                if not isinstance(exc, Exception):
                    raise
            finally:
                consumer, self._consumer = self._consumer, None
                for tp in list(self._lag_reported):  # a member that left reports no lag
                    self._forget_lag(tp)
                if consumer is not None:
                    await consumer.stop()  # auto-commit is off: leaving commits nothing behind our back

    async def _wait_for_loop(self) -> None:
        task = self._task
        if task is None:
            return
        # asyncio.wait, not wait_for: it neither raises the loop's own error into stop() nor cancels it.
        done, _ = await asyncio.wait({task}, timeout=self.stop_timeout)
        if not done:
            log.warning("batch in hand did not finish in time; cancelling it (its transaction rolls back and "
                        "the next owner redoes it)", extra={"group": self.group_id, "batch": self._batch_in_hand})
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("consumer loop had ended with an error", exc_info=task.exception(),
                      extra={"group": self.group_id})

    async def _handed_over(self, partitions: list[TopicPartition], why: str) -> None:
        """Tell the service (``on_revoke``) that these partitions leave it. Never raises: aiokafka would
        swallow an error in a rebalance listener, and a shutdown must go on; the service's own recovery
        (auto_comp's keeper) covers a failed call."""
        if self.on_revoke is None or not partitions:
            return
        try:
            await self.on_revoke(sorted(partitions), why)
        except Exception as exc:
            log.warning("partition hand-over hook failed", exc_info=exc,
                        extra={"group": self.group_id, "why": why, "error": f"{type(exc).__name__}: {exc}"})

    def readiness_problem(self) -> str | None:
        """None when the runner consumes normally; otherwise why it does not (for /readyz)."""
        task = self._task
        if task is None:
            return "not started"
        if task.done():
            reason = "stopped"
            if not task.cancelled() and task.exception() is not None:
                reason = f"loop ended: {type(task.exception()).__name__}: {task.exception()}"
            return reason
        if self._unpositioned:
            waiting = ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in self._unpositioned))
            return f"not consuming {waiting}: their stored offsets could not be read ({self.last_error})"
        if self._recovering_since is not None:
            return f"restarting after: {self.last_error}"
        if not self.healthy:
            return f"failing: {self.last_error}"
        return None

    @property
    def ready(self) -> bool:
        return self.readiness_problem() is None

    async def run_until_idle(self, idle_seconds: float = 1.0, timeout: float = 60.0) -> None:
        """Test helper: wait until no record arrived for ``idle_seconds``."""
        deadline = time.monotonic() + timeout
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_seen = self.stats.processed + self.stats.dead_lettered + self.stats.duplicates
            if now_seen != seen:
                seen, quiet_since = now_seen, time.monotonic()
            elif time.monotonic() - quiet_since >= idle_seconds:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"consumer {self.group_id} still busy after {timeout}s")

    # ------------------------------------------------------------------ offsets

    async def _seek_to_stored(self, partitions: list[TopicPartition]) -> None:
        """Put newly assigned partitions at their offsets of record. When the database cannot say what they
        are (down during a rebalance), the partitions are paused instead: aiokafka would swallow an error
        raised here and consume from Kafka's advisory offset, re-running or skipping records. The loop
        retries (``_position_unpositioned``) and the runner reports not ready meanwhile."""
        consumer = self._consumer
        if not partitions or consumer is None:
            return
        # Held from the start, not only on failure: a fetch while the offsets are read would come from
        # Kafka's committed offset, and a batch taken in hand meanwhile must not commit past the stored one.
        self._hold(consumer, partitions)
        try:
            stored = await self._stored_offsets()
        except Exception as exc:
            self._unreadable(partitions, exc)
            return
        self._place(consumer, partitions, stored)

    async def _stored_offsets(self) -> dict[tuple[str, int], int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer_group = :g"),
                {"g": self.group_id})).all()
        return {(r[0], r[1]): r[2] for r in rows}

    def _seek(self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition],
              stored: dict[tuple[str, int], int]) -> None:
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                consumer.seek(tp, offset)
                self._floor[tp] = offset

    def _hold(self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]) -> None:
        held = [tp for tp in partitions if tp in consumer.assignment()]
        consumer.pause(*held)
        self._unpositioned.update(held)
        # Records of these partitions fetched ahead came from an unknown position: never process them.
        for fetched in self._ahead:
            if fetched.done:
                fetched.dropped.update(held)

    def _unreadable(self, partitions: Sequence[TopicPartition], exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._position_due = time.monotonic() + self._position_backoff
        self._position_backoff = min(self._position_backoff * 2, _POSITION_RETRY_MAX_SECONDS)
        log.warning("stored offsets unreadable on assignment; partitions paused until they can be read",
                    extra={"group": self.group_id, "error": self.last_error,
                           "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)})

    def _place(self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition],
               stored: dict[tuple[str, int], int]) -> list[TopicPartition]:
        """Seek the held partitions still ours to their stored offsets and resume them."""
        placed = [tp for tp in partitions if tp in self._unpositioned and tp in consumer.assignment()]
        self._seek(consumer, placed, stored)
        for fetched in self._ahead:
            if fetched.done:
                fetched.dropped.update(placed)
        self._unpositioned.difference_update(placed)
        consumer.resume(*placed)
        self._position_backoff = _POSITION_RETRY_MIN_SECONDS
        return placed

    async def _position_unpositioned(self, consumer: AIOKafkaConsumer) -> None:
        """Retry the seek of partitions held back on assignment (with backoff); resume those it places."""
        if not self._unpositioned or time.monotonic() < self._position_due:
            return
        self._unpositioned.intersection_update(consumer.assignment())
        pending = sorted(self._unpositioned)
        if not pending:
            return
        try:
            stored = await self._stored_offsets()
        except Exception as exc:
            self._unreadable(pending, exc)
            return
        # A rebalance may have happened while the offsets were read: place only what is still ours.
        placed = self._place(consumer, pending, stored)
        if placed:
            log.info("partitions placed at their stored offsets after a failed seek",
                     extra={"group": self.group_id, "partitions": [f"{tp.topic}[{tp.partition}]" for tp in placed]})

    async def _reseek_after_crash(self, consumer: AIOKafkaConsumer) -> None:
        """Put every assigned partition back at its offset of record: the crashed batch may have moved
        the consumer's position past records whose transaction never committed."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer_group = :g"),
                {"g": self.group_id})).all()
        stored = {(r[0], r[1]): r[2] for r in rows}
        # No lock held across these calls: the loop is not consuming, and a partition revoked meanwhile is
        # simply skipped (its next owner seeks to the same stored offset on assignment).
        for tp in list(consumer.assignment()):
            try:
                offset = stored.get((tp.topic, tp.partition))
                if offset is None:
                    # Nothing stored for it yet: start where assignment would (Kafka's advisory commit,
                    # else the earliest record), never after an uncommitted one.
                    offset = await consumer.committed(tp)
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                    self._floor.pop(tp, None)
                else:
                    consumer.seek(tp, offset)
                    self._floor[tp] = offset
            except IllegalStateError:
                continue
        # Every assigned partition is at its offset of record now, including any held back on assignment.
        held = [tp for tp in self._unpositioned if tp in consumer.assignment()]
        self._unpositioned.clear()
        if held:
            consumer.resume(*held)

    # ------------------------------------------------------------------ main loop

    async def _run(self) -> None:
        """Supervise the consume loop: an unexpected error must never end consumption silently."""
        assert self._consumer is not None
        consumer = self._consumer
        backoff = self.restart_backoff
        while not self._stopping.is_set():
            try:
                if self._recovering_since is not None:
                    await self._reseek_after_crash(consumer)
                    self._recovering_since = time.monotonic()  # the recovery clock starts now
                await self._consume(consumer)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping.is_set():
                    # Shutting down: the batch in hand did not commit, so the next owner redoes it.
                    log.warning("consumer stopped with its batch uncommitted",
                                extra={"group": self.group_id, "batch": self._batch_in_hand,
                                       "error": f"{type(exc).__name__}: {exc}"})
                    return
                if self._recovering_since is None:
                    backoff = self.restart_backoff  # first crash since the last good batch
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._recovering_since = time.monotonic()
                CONSUMER_LOOP_RESTARTS.labels(self.group_id).inc()
                log.error("consumer loop crashed; restarting from the stored offsets",
                          exc_info=exc, extra={"group": self.group_id, "topics": self.topics,
                                               "batch": self._batch_in_hand, "error": self.last_error,
                                               "restarts": self.restarts, "backoff_s": backoff})
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 30.0)

    def _recovered(self, *, idle: bool) -> None:
        # After a crash, ready again once a batch commits, or once the loop has idled for a second (there
        # was nothing left to redo).
        if self._recovering_since is None:
            return
        if idle and time.monotonic() - self._recovering_since < _RECOVERY_IDLE_SECONDS:
            return
        log.info("consumer loop recovered", extra={"group": self.group_id, "restarts": self.restarts})
        self._recovering_since = None
        self.last_error = None

    async def _fetch(self, consumer: AIOKafkaConsumer, fetched: _Fetched) -> _Fetched:
        """Poll once and decode what came (decoding is CPU the batch in hand's database waits can hide)."""
        try:
            fetched.batches = await consumer.getmany(timeout_ms=self.settings.consumer_poll_timeout_ms,
                                                     max_records=self.max_batch)
        except KafkaError as exc:
            fetched.done = True
            self.last_error = str(exc)
            log.warning("poll failed", extra={"group": self.group_id, "error": str(exc)})
            await asyncio.sleep(1)
            return fetched
        fetched.done = True
        if self.pause_gc and any(fetched.batches.values()):
            # Its objects live until its batch is done, like the batch in hand's (CollectorPause).
            COLLECTOR_PAUSE.enter()
            fetched.paused = True
        for tp, recs in fetched.batches.items():
            if recs:
                self._fetched_end[tp] = max(self._fetched_end.get(tp, 0), recs[-1].offset + 1)
                self._fetched_first.setdefault(tp, recs[0].offset)
        fetched.recs = [self._decode(r) for recs in fetched.batches.values() for r in recs]
        return fetched

    def _fetch_ahead(self, consumer: AIOKafkaConsumer) -> asyncio.Task[_Fetched]:
        fetched = _Fetched({}, [])
        self._ahead.append(fetched)  # registered before it polls: a revocation meanwhile marks it
        return asyncio.create_task(self._fetch(consumer, fetched), name=f"prefetch-{self.group_id}")

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        ahead: asyncio.Task[_Fetched] | None = None
        try:
            while not self._stopping.is_set():
                if self._unpositioned:
                    await self._position_unpositioned(consumer)
                if ahead is None:
                    ahead = self._fetch_ahead(consumer)
                fetched = await ahead
                ahead = None
                if not fetched.recs:
                    self._done_with(fetched)
                    self._recovered(idle=True)
                    self._update_lag(consumer)
                    continue
                if self.prefetch:
                    # The next batch is fetched and decoded while this one is written: at most one ahead.
                    ahead = self._fetch_ahead(consumer)
                try:
                    await self._handle(consumer, fetched)
                finally:
                    self._done_with(fetched)
        finally:
            if ahead is not None:  # stopping or restarting: what was fetched ahead is fetched again later
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
            for fetched in list(self._ahead):
                self._done_with(fetched)

    def _done_with(self, fetched: _Fetched) -> None:
        if fetched in self._ahead:
            self._ahead.remove(fetched)
        if fetched.paused:
            fetched.paused = False
            COLLECTOR_PAUSE.exit()

    async def _handle(self, consumer: AIOKafkaConsumer, fetched: _Fetched) -> None:
        self._batch_in_hand = ", ".join(f"{tp.topic}[{tp.partition}]@{recs[0].offset}-{recs[-1].offset}"
                                        for tp, recs in fetched.batches.items() if recs)
        async with self._processing:
            # Records of partitions revoked while it waited (fetched ahead, or waiting for the lock) belong
            # to the new owner now; below the floor they were processed already.
            assigned = consumer.assignment()
            if fetched.dropped:
                gone = sum(1 for r in fetched.recs if TopicPartition(r.record.topic, r.record.partition)
                           in fetched.dropped)
                self.stats.extra["revoked_ahead"] = self.stats.extra.get("revoked_ahead", 0) + gone
            recs = [r for r in fetched.recs if (tp := TopicPartition(r.record.topic, r.record.partition)) in assigned
                    and tp not in fetched.dropped and tp not in self._unpositioned
                    and r.record.offset >= self._floor.get(tp, 0)]
            self._reread_dropped(consumer, fetched)
            if recs:
                await self._process_with_retry(recs)
        records = [r.record for r in recs]
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self._floor[tp] = max(self._floor.get(tp, 0), r.offset + 1)
        self._recovered(idle=not records)  # stale records skipped below the floor prove nothing
        self._batch_in_hand = ""
        await self._commit_kafka(records)
        self._update_lag(consumer, force=bool(records))

    def _reread_dropped(self, consumer: AIOKafkaConsumer, fetched: _Fetched) -> None:
        """Read again, from the offset of record, the partitions still ours whose records were dropped.

        A fetch in flight across a rebalance that hands a partition back (eager rebalances revoke all, then
        assign) returns records after the new seek, and they are dropped as revoked ahead; aiokafka's
        position has moved past them, so without this they would wait for the next rebalance or restart
        (found by ``make chaos``, ADR 0022). Seeking drops whatever aiokafka holds from the old position;
        batches already fetched ahead are dropped too, and re-read the same way in their turn."""
        first: dict[TopicPartition, int] = {}
        for r in fetched.recs:
            tp = TopicPartition(r.record.topic, r.record.partition)
            if tp in fetched.dropped or tp in self._unpositioned:
                first[tp] = min(first.get(tp, r.record.offset), r.record.offset)
        assigned = consumer.assignment()
        for tp, offset in first.items():
            if tp not in assigned or tp in self._unpositioned:
                continue  # the next owner's, or placed at its stored offset when that can be read
            # Nothing stored yet (a new group): the first record dropped is where reading stands.
            consumer.seek(tp, self._floor.get(tp, offset))
            for ahead in self._ahead:
                if ahead is not fetched and ahead.done:
                    ahead.dropped.add(tp)
            self.stats.extra["reread_after_drop"] = self.stats.extra.get("reread_after_drop", 0) + 1

    async def _process_with_retry(self, recs: list[_Rec]) -> None:
        backoff = 0.2
        while True:
            try:
                started = time.perf_counter()
                await self._process(recs)
                CONSUMER_BATCH_SECONDS.labels(self.group_id).observe(time.perf_counter() - started)
                CONSUMER_BATCH_SIZE.labels(self.group_id).observe(len(recs))
                self.healthy, self.last_error = True, None
                if self.on_commit is not None:
                    self.on_commit()
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.healthy, self.last_error = False, f"{type(exc).__name__}: {exc}"
                CONSUMER_TRANSIENT_RETRIES.labels(self.group_id).inc()
                log.warning("transient error, retrying batch",
                            extra={"group": self.group_id, "error": self.last_error, "backoff_s": backoff})
                if self._stopping.is_set():
                    # Leave without committing: the next owner redoes this batch.
                    raise
                # Records of partitions held since (reassigned while the database was away) are not ours
                # to commit: they are read again from the stored offset once it can be read.
                recs[:] = [r for r in recs if TopicPartition(r.record.topic, r.record.partition)
                           not in self._unpositioned]
                if not recs:
                    return
                try:  # a stop() during the backoff should not wait it out
                    await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 30.0)

    async def _process(self, recs: list[_Rec]) -> None:
        if not self.pause_gc:
            return await self._process_batch(recs)
        COLLECTOR_PAUSE.enter()
        try:
            return await self._process_batch(recs)
        finally:
            COLLECTOR_PAUSE.exit()

    async def _process_batch(self, recs: list[_Rec]) -> None:
        for rec in recs:  # a retried batch starts afresh: only an undecodable record is poison from the start
            rec.error, rec.attempts = rec.undecodable, 0
        try:
            async with self.engine.begin() as conn:
                # The batch's offsets ride on the dedup statement (one round trip less per batch): they
                # commit with the handler's writes or not at all, so storing them first changes nothing.
                stored = await self._apply(conn, recs, batch=True, offsets_of=recs)
                await self._finish(conn, recs, offsets_stored=stored)
        except Exception as exc:
            if is_transient(exc):
                raise
            # Isolate the culprit: one transaction per record. A PermanentError or a handler that keeps
            # failing dead-letters only that record.
            log.info("batch failed, retrying record by record",
                     extra={"group": self.group_id, "error": repr(exc)})
            for rec in recs:
                await self._process_single(rec)
        for rec in recs:
            CONSUMER_RECORDS.labels(self.group_id, rec.record.topic).inc()

    async def _process_single(self, rec: _Rec) -> None:
        # Every transaction here also moves the offset past its record: a crash between records neither
        # re-runs a committed one nor writes a dead letter twice.
        while rec.error is None:
            try:
                async with self.engine.begin() as conn:
                    await self._apply(conn, [rec], batch=False)
                    await self._store_offsets(conn, [rec])
                return
            except PermanentError as exc:
                rec.error = f"rejected: {exc}"
            except Exception as exc:
                if is_transient(exc):
                    raise
                rec.attempts += 1
                CONSUMER_FAILED.labels(self.group_id, rec.record.topic).inc()
                if rec.attempts >= self.max_attempts:
                    rec.error = f"handler failed {rec.attempts} times: {type(exc).__name__}: {exc}"
                else:
                    await asyncio.sleep(0.05 * 2 ** rec.attempts)
        async with self.engine.begin() as conn:
            await self._dead_letter(conn, [rec])
            await self._store_offsets(conn, [rec])

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> _Rec:
        if record.value is None:
            return _Rec(record, error="empty message value", undecodable="empty message value")
        if self.decoder is not None:
            try:
                envelope, payload = self.decoder(record.value)
                return self._expected(_Rec(record, Delivered(envelope, payload, record.topic, record.partition,
                                                             record.offset, record.key, record.timestamp)))
            except ContractError:
                pass  # the shared decoder below words the dead letter
        try:
            envelope, payload = decode_envelope(record.value)
        except ContractError as exc:
            detail = "; ".join(f"{f}: {m}" for f, m in exc.errors[:10])
            why = f"contract violation: {exc}" + (f" ({detail})" if detail else "")
            return _Rec(record, error=why, undecodable=why)
        return self._expected(_Rec(record, Delivered(envelope, payload, record.topic, record.partition,
                                                     record.offset, record.key, record.timestamp)))

    def _expected(self, rec: _Rec) -> _Rec:
        """A decoded record of a type the handler does not consume is poison from the start (never retried)."""
        assert rec.delivered is not None
        event_type = rec.delivered.envelope.event_type
        if self.consumes is None or event_type in self.consumes:
            return rec
        why = (f"unexpected event type {event_type} on {rec.record.topic}: "
               f"{self.group_id} consumes {', '.join(sorted(self.consumes))}")
        rec.error = rec.undecodable = why
        return rec

    async def _apply(self, conn: AsyncConnection, recs: list[_Rec], *, batch: bool,
                     offsets_of: list[_Rec] | None = None) -> bool:
        """Deduplicate and run the handler; with ``offsets_of``, also store those records' next offsets in
        the dedup statement. True when they were stored (False with nothing to deduplicate)."""
        good = [r for r in recs if r.delivered is not None and r.error is None]
        if good:
            ids = [r.delivered.envelope.event_id for r in good if r.delivered]
            params: dict[str, Any] = {"g": self.group_id, "ids": ids}
            store = ""
            if offsets_of:
                nxt = _next_offsets(offsets_of)
                store = f"WITH stored AS ({_UPSERT_OFFSETS}) "
                params.update(t=[k[0] for k in nxt], p=[k[1] for k in nxt], o=list(nxt.values()))
            fresh = set((await conn.execute(text(
                store + "INSERT INTO processed_events (consumer_group, event_id) "
                "SELECT :g, unnest(CAST(:ids AS text[])) ON CONFLICT DO NOTHING RETURNING event_id"),
                params)).scalars())
            new: list[Delivered] = []
            for r in good:
                assert r.delivered is not None
                eid = r.delivered.envelope.event_id
                if eid in fresh:
                    fresh.discard(eid)  # a second copy inside the same batch is a duplicate too
                    new.append(r.delivered)
                else:
                    CONSUMER_DUPLICATES.labels(self.group_id, r.record.topic).inc()
                    self.stats.duplicates += 1
            if new:
                token = correlation_id.set(new[0].envelope.correlation_id)
                try:
                    await self.handler(conn, new)
                finally:
                    correlation_id.reset(token)
                self.stats.processed += len(new)
        self.stats.batches += 1
        return bool(good and offsets_of)

    async def _finish(self, conn: AsyncConnection, recs: list[_Rec], *, offsets_stored: bool = False) -> None:
        await self._dead_letter(conn, [r for r in recs if r.error is not None])
        if not offsets_stored:
            await self._store_offsets(conn, recs)

    async def _dead_letter(self, conn: AsyncConnection, recs: list[_Rec]) -> None:
        if not recs:
            return
        letters = [DeadLetter(self.group_id, r.record.topic, r.record.partition, r.record.offset, r.record.key,
                              r.record.value, list(r.record.headers or []), r.error or "unknown") for r in recs]
        written = await write_dead_letters(conn, letters)
        self.stats.duplicates += len(letters) - len(written)
        for letter in written:
            CONSUMER_DEAD_LETTERED.labels(self.group_id, letter.topic).inc()
            self.stats.dead_lettered += 1
            log.warning("dead-lettered record", extra={"group": self.group_id, "topic": letter.topic,
                                                       "partition": letter.partition, "offset": letter.offset,
                                                       "reason": letter.error})

    async def _store_offsets(self, conn: AsyncConnection, recs: list[_Rec]) -> None:
        nxt = _next_offsets(recs)
        if not nxt:
            return
        await conn.execute(text(_UPSERT_OFFSETS), {"g": self.group_id, "t": [k[0] for k in nxt],
                                                    "p": [k[1] for k in nxt], "o": list(nxt.values())})

    async def _commit_kafka(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Note the batch's offsets for Kafka and commit them when the commit interval has passed.

        Kafka's offsets are advisory (lag tooling; the database holds the offsets of record), so one broker
        round trip per batch on the consume loop's path buys nothing: commits go out at most once per
        ``consumer_kafka_commit_interval_ms``, and on revocation and stop."""
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            self._kafka_pending[tp] = max(self._kafka_pending.get(tp, 0), r.offset + 1)
        if self._kafka_pending and time.monotonic() >= self._kafka_commit_due:
            await self._flush_kafka_commit()

    async def _flush_kafka_commit(self) -> None:
        self._kafka_commit_due = time.monotonic() + self.settings.consumer_kafka_commit_interval_ms / 1000
        pending, self._kafka_pending = self._kafka_pending, {}
        if not pending or self._consumer is None:
            return
        assigned = self._consumer.assignment()
        offsets = {tp: o for tp, o in pending.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except Exception as exc:  # advisory: nothing here may stop a revocation or a shutdown
            CONSUMER_COMMIT_FAILURES.labels(self.group_id).inc()
            log.info("kafka commit failed (offsets are safe in the database)",
                     extra={"group": self.group_id, "error": str(exc)})

    def _update_lag(self, consumer: AIOKafkaConsumer, *, force: bool = False) -> None:
        """Records of every assigned partition not processed yet: the partition's end minus the next offset
        of record (``_floor``; for a group with nothing stored, the first record fetched). The end is the
        largest of what the broker said (the fetch's high watermark) and what was seen (the last record
        fetched + 1, the offset of record): a broker under-reporting its end (Tansu's ListOffsets answers the
        last batch's base offset + 1, see ``shared.kafka.lag``) can then never make the gauge read 0 over
        records already fetched.
        Refreshed after every batch and every ``_LAG_REFRESH_SECONDS`` while idle, so it never freezes at a
        stale value; a partition that left this member is removed, so the group's sum stays true."""
        now = time.monotonic()
        if not force and now < self._lag_due:
            return
        self._lag_due = now + _LAG_REFRESH_SECONDS
        assigned = consumer.assignment()
        for tp in list(self._lag_reported - assigned):
            self._forget_lag(tp)
        for tp in assigned:
            # Nothing processed and nothing stored yet (a new group): it starts at the first record fetched.
            done = self._floor.get(tp, self._fetched_first.get(tp))
            if done is None:
                continue  # nothing fetched, nothing stored: nothing to measure from yet
            end = max(consumer.highwater(tp) or 0, self._fetched_end.get(tp, 0), done)
            CONSUMER_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(end - done)
            self._lag_reported.add(tp)

    def _forget_lag(self, tp: TopicPartition) -> None:
        self._lag_reported.discard(tp)
        self._fetched_end.pop(tp, None)
        self._fetched_first.pop(tp, None)
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(self.group_id, tp.topic, str(tp.partition))
