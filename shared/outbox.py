"""Transactional outbox: events are rows written in the business transaction; a relay publishes them.

Order: the relay publishes rows in id order and aiokafka keeps one request in flight per partition, so
events with the same key reach their partition in the order they were committed. One relay per service
publishes at a time (a PostgreSQL advisory lock held on a dedicated connection elects it), so several
replicas never interleave. A row is deleted only after the broker acknowledged it: a crash in between
republishes it (at-least-once; consumers deduplicate by event id).

Leadership is only as good as the lock's session: if the lock connection dies (network, failover,
``pg_terminate_backend``) PostgreSQL releases the lock and another relay may take it. So the leader reads
each batch and deletes the published rows on the lock connection itself: a batch starts only while the
lock is provably held, and rows are marked sent only by the current holder. On loss the relay stops
publishing and contends again; the batch in flight at that moment may be published twice (at-least-once).

Latency: a commit in this process wakes the relay directly (``wake()``); a commit in a replica whose relay
does not lead reaches the leader as a PostgreSQL NOTIFY on the relay's channel, which the leader LISTENs to
on its lock connection. Polling every ``poll_interval`` remains the safety net for a lost notification or a
writer that wakes nobody. The leader talks to its lock connection through the driver (autocommit, one round
trip per statement) and deletes the rows acknowledged last time in the same statement that reads the next
batch, so a busy relay spends one round trip per batch on PostgreSQL instead of six.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.contracts.envelope import Envelope
from shared.kafka.producer import EventProducer, Headers, record_for
from shared.metrics import (
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PUBLISH_ERRORS,
    OUTBOX_PUBLISH_SECONDS,
    OUTBOX_PUBLISHED,
)

log = logging.getLogger(__name__)

Record = tuple[str, bytes | None, bytes, Headers]

_CONTEND_INTERVAL = 1.0  # seconds between a follower's attempts to take the relay lock

# The leader's statement per batch: delete what the broker acknowledged last time, read the next batch. The
# read sees the snapshot from before the delete, hence the exclusion. Autocommit: the delete is durable
# when the statement returns, and there is no BEGIN/COMMIT round trip. Headers come as text for orjson:
# the engine's jsonb codec decodes with the standard library's json, several times slower.
_DELETE_AND_READ = (
    "WITH gone AS (DELETE FROM outbox WHERE id = ANY($1::bigint[])) "
    "SELECT id, topic, key, value, headers::text, extract(epoch FROM created_at)::float8 FROM outbox "
    "WHERE NOT (id = ANY($1::bigint[])) ORDER BY id LIMIT $2")
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"

_INSERT = text(
    "INSERT INTO outbox (topic, key, value, headers) "
    "SELECT * FROM unnest(CAST(:topics AS text[]), CAST(:keys AS bytea[]), CAST(:vals AS bytea[]), "
    "CAST(:headers AS jsonb[]))")


# Header storage in jsonb (outbox and dead_letters). A plain entry ``[key, text]`` holds the value's bytes
# as latin-1 text, which maps every byte 1:1 (so invalid UTF-8 is safe) and is the format rows already
# written use. PostgreSQL text and jsonb cannot hold U+0000, so a value with a NUL byte is stored as
# ``[key, base64, "b64"]`` (and a key with a NUL as ``[base64(key), base64, "b64k"]``); a null value is
# ``[key, null]``. The marker is a third element, never a value prefix, so no real value can be mistaken
# for an encoded one.
_B64 = "b64"
_B64_KEY = "b64k"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_headers(headers: Iterable[tuple[str, bytes | None]]) -> list[list[str | None]]:
    """Kafka headers as jsonb-safe entries; ``decode_headers`` gives the original bytes back."""
    out: list[list[str | None]] = []
    for k, v in headers:
        if "\x00" in k:
            out.append([_b64(k.encode()), None if v is None else _b64(v), _B64_KEY])
        elif v is None:
            out.append([k, None])
        elif b"\x00" in v:
            out.append([k, _b64(v), _B64])
        else:
            out.append([k, v.decode("latin-1")])
    return out


def decode_headers(entries: Sequence[Sequence[str | None]] | None) -> list[tuple[str, bytes | None]]:
    """Inverse of ``encode_headers`` (also reads rows written before the markers existed)."""
    try:  # the relay reads every record's headers: plain ``[key, text]`` entries in one pass
        return [(str(k), v.encode("latin-1")) for k, v in entries or ()]  # type: ignore[union-attr]
    except (ValueError, AttributeError):  # a marked entry (three elements) or a null value
        pass
    out: list[tuple[str, bytes | None]] = []
    for entry in entries or ():
        key, value = str(entry[0]), entry[1]
        marker = entry[2] if len(entry) > 2 else None
        if marker == _B64_KEY:
            key = base64.b64decode(key).decode()
        if value is None:
            out.append((key, None))
        elif marker in (_B64, _B64_KEY):
            out.append((key, base64.b64decode(value)))
        else:
            out.append((key, value.encode("latin-1")))
    return out


def headers_json(headers: Iterable[tuple[str, bytes | None]]) -> str:
    """``encode_headers`` as a JSON string, for a ``CAST(:h AS jsonb)`` bind.

    Nearly every record's headers are plain (no NUL, no null value): one scan of all of them proves it,
    and they are written without the per-entry checks (the same entries ``encode_headers`` gives)."""
    headers = headers if isinstance(headers, list) else list(headers)
    try:
        values = b"".join([v for _, v in headers])  # type: ignore[misc]
    except TypeError:  # a null value: the general path marks it
        values = b"\x00"
    if b"\x00" in values or "\x00" in "".join(k for k, _ in headers):
        return orjson.dumps(encode_headers(headers)).decode()
    return orjson.dumps([[k, v.decode("latin-1")] for k, v in headers]).decode()  # type: ignore[union-attr]



async def enqueue_records(conn: AsyncConnection, records: Iterable[Record]) -> int:
    """Insert raw records into the outbox in one statement (one round trip for the whole batch)."""
    rows = list(records)
    if not rows:
        return 0
    await conn.execute(_INSERT, {
        "topics": [r[0] for r in rows],
        "keys": [r[1] for r in rows],
        "vals": [r[2] for r in rows],
        "headers": [headers_json(r[3]) for r in rows],
    })
    return len(rows)


async def enqueue(conn: AsyncConnection, envelopes: Iterable[Envelope]) -> int:
    """Validate envelopes against their contracts and insert them into the outbox."""
    return await enqueue_records(conn, (record_for(e) for e in envelopes))


async def backlog(conn: AsyncConnection) -> tuple[int, float]:
    """(unpublished rows, age in seconds of the oldest)."""
    row = (await conn.execute(text(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox"))).one()
    return int(row[0]), float(row[1])


class CoalescedWake:
    """Calls ``wake`` at once when it has not been called for ``interval`` seconds, else once at the end
    of that interval (however many commits happened meanwhile).

    Each relay cycle (read the batch, produce it, wait for the broker's acks, delete the rows) costs about
    as much CPU as half a single-event request, in intake and in PostgreSQL alike; waking the relay on
    every commit made it run a cycle every few milliseconds under load (120 cycles/s at 300 req/s, against
    50 with no wake-up at all; about a fifth of intake's CPU per request). With ``interval`` set to the
    relay's own poll interval, a busy intake publishes at the relay's poll rhythm, and a quiet one still
    at once: a wake-up adds no delay, its absence at most ``interval``.
    """

    def __init__(self, wake: Callable[[], None], interval: float) -> None:
        self._wake = wake
        self._interval = interval
        self._last = float("-inf")
        self._pending: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._pending is not None:
            return  # a wake is already due: it publishes this commit too
        if now - self._last >= self._interval:
            self._fire()
        else:
            self._pending = loop.call_at(self._last + self._interval, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = asyncio.get_running_loop().time()
        self._wake()


class OutboxRelay:
    def __init__(self, engine: AsyncEngine, producer: EventProducer, service: str, *,
                 batch_size: int = 500, poll_interval: float = 0.02, lock_key: str | None = None) -> None:
        self._engine = engine
        self._producer = producer
        self._service = service
        self._batch = batch_size
        self._poll = poll_interval
        self._lock_key = lock_key or f"outbox:{service}"
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # LISTEN/NOTIFY channel of this relay group (one per lock key; PostgreSQL caps names at 63 bytes).
        self.channel = self._lock_key[:63]
        self._notifier: asyncio.Task[None] | None = None
        self._notify_again = False
        self.is_leader = False
        self.last_error: str | None = None
        # For callers that commit many small transactions (intake's requests): one wake per poll interval.
        self.wake_soon = CoalescedWake(self.wake, poll_interval)

    def wake(self) -> None:
        """Called after a commit that enqueued rows, to publish without waiting for the next poll.

        When this relay leads, it is woken directly. When another replica leads, that leader is told with a
        NOTIFY (at most one in flight per process; wakes meanwhile are folded into one more)."""
        if self.is_leader or self._task is None or self._stopping.is_set():
            self._wake.set()
            return
        if self._notifier is not None and not self._notifier.done():
            self._notify_again = True
            return
        self._notifier = asyncio.create_task(self._notify_leader(), name=f"outbox-notify-{self._service}")

    async def _notify_leader(self) -> None:
        while True:
            self._notify_again = False
            try:
                async with self._engine.connect() as conn:
                    await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": self.channel})
                    await conn.commit()
            except Exception as exc:  # the leader's poll still finds the rows
                log.info("outbox notify failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                return
            if not self._notify_again:
                return

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except TimeoutError:
                self._task.cancel()
            self._task = None
        if self._notifier is not None:
            await asyncio.wait({self._notifier}, timeout=5)
            self._notifier = None

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            led = False
            try:
                async with self._engine.connect() as lock_conn:
                    got = (await lock_conn.execute(
                        text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": self._lock_key})).scalar()
                    await lock_conn.commit()
                    if not got:
                        # Not woken by commits: a follower contends on its own clock, not once per commit.
                        await self._idle(_CONTEND_INTERVAL)
                        continue
                    self.is_leader = led = True
                    log.info("outbox relay leads", extra={"lock": self._lock_key})
                    try:
                        await self._publish_loop(lock_conn)
                    finally:
                        self.is_leader = False
                        await self._unlock(lock_conn)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = str(exc)
                OUTBOX_PUBLISH_ERRORS.labels(self._service).inc()
                # A leader that just lost its lock connection sits out one contention round, so a healthy
                # replica (which retries every _CONTEND_INTERVAL) can take over instead of the suspect one.
                delay = max(backoff, _CONTEND_INTERVAL) if led else backoff
                log.warning("outbox relay lost leadership, contending again" if led else
                            "outbox relay error, retrying",
                            extra={"error": f"{type(exc).__name__}: {exc}", "backoff_s": delay})
                await self._idle(delay)
                backoff = min(backoff * 2, 10.0)

    async def _unlock(self, lock_conn: AsyncConnection) -> None:
        # After a lost connection the server already released the lock: nothing to undo, and the original
        # error (not this one) is the one worth reporting.
        try:
            await lock_conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": self._lock_key})
            await lock_conn.commit()
        except Exception as exc:
            log.info("outbox lock not released explicitly", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _idle(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _publish_loop(self, lock_conn: AsyncConnection) -> None:
        # The driver connection under the lock session: same session (so the lock proof holds), without
        # SQLAlchemy's BEGIN/COMMIT around every statement.
        raw = await lock_conn.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            await driver.add_listener(self.channel, self._on_notify)
            await self._lead(driver)
        except BaseException:
            # The session's state is unknown to SQLAlchemy now: close it (which also frees the lock) rather
            # than hand it back to the pool.
            with contextlib.suppress(Exception):
                await lock_conn.invalidate()
            raise
        with contextlib.suppress(Exception):
            await driver.remove_listener(self.channel, self._on_notify)

    async def _lead(self, driver: Any) -> None:
        last_gauge = 0.0
        acked: list[int] = []  # published and acknowledged, deleted by the next statement
        while not self._stopping.is_set():
            now = time.monotonic()
            if now - last_gauge > 1.0:
                last_gauge = now
                try:
                    async with self._engine.connect() as conn:
                        count, age = await backlog(conn)
                    OUTBOX_BACKLOG.labels(self._service).set(count)
                    OUTBOX_OLDEST_AGE.labels(self._service).set(age)
                except Exception as exc:  # a gauge must never cost the lead (and republish acked rows)
                    log.info("outbox backlog gauge skipped", extra={"service": self._service, "error": str(exc)})
            # Raises once the lock connection is gone: leave the loop and contend again.
            rows = await driver.fetch(_DELETE_AND_READ, acked, self._batch)
            acked = []
            if not rows:
                await self._sleep(self._poll)
                continue
            await self._publish(rows)
            acked = [r[0] for r in rows]
            # No sleep: the next statement deletes these at once and picks up whatever came meanwhile.
        if acked:
            await driver.execute(_DELETE, acked)

    async def _publish(self, rows: Sequence[Any]) -> None:
        """Send rows in id order and wait until the broker acknowledged every one (raises otherwise)."""
        futures: list[Any] = []
        for row in rows:
            # Null header values are legal Kafka (aiokafka writes them); EventProducer's alias omits them.
            entries = row[4]
            if isinstance(entries, str):  # the leader reads headers as text (see _DELETE_AND_READ)
                entries = orjson.loads(entries)
            headers = cast(Headers, decode_headers(entries))
            futures.append(await self._producer.send(row[1], row[3], row[2], headers))
        await asyncio.gather(*futures)
        now = time.time()
        # One labelled child per batch, not per record (the lookup costs more than the update).
        published: dict[str, int] = {}
        delay = OUTBOX_PUBLISH_SECONDS.labels(self._service)
        for row in rows:
            published[row[1]] = published.get(row[1], 0) + 1
            delay.observe(max(0.0, now - float(row[5])))
        for topic, n in published.items():
            OUTBOX_PUBLISHED.labels(self._service, topic).inc(n)
        self.last_error = None

    async def publish_once(self, lock_conn: AsyncConnection | None = None) -> int:
        """Publish one batch in id order; delete rows only once every record is acknowledged.

        With ``lock_conn`` the batch is read and deleted on it, so a relay whose lock session died fails
        here instead of publishing alongside another one. Without it (tests, bench, one-off tools) pooled
        connections are used and the caller guarantees it is alone. The running leader uses ``_lead``.
        """
        if lock_conn is not None:
            rows = await self._read_batch(lock_conn)
        else:
            async with self._engine.connect() as conn:
                rows = await self._read_batch(conn)
        if not rows:
            return 0
        await self._publish(rows)
        if lock_conn is not None:
            await self._delete(lock_conn, rows)
        else:
            async with self._engine.connect() as conn:
                await self._delete(conn, rows)
        return len(rows)

    async def _read_batch(self, conn: AsyncConnection) -> Sequence[Any]:
        rows = (await conn.execute(text(
            "SELECT id, topic, key, value, headers, extract(epoch FROM created_at) FROM outbox "
            "ORDER BY id LIMIT :n"), {"n": self._batch})).all()
        await conn.rollback()
        return rows

    async def _delete(self, conn: AsyncConnection, rows: Sequence[Any]) -> None:
        await conn.execute(text("DELETE FROM outbox WHERE id = ANY(:ids)"), {"ids": [r[0] for r in rows]})
        await conn.commit()
