"""The broker goes away: intake keeps accepting into its outbox up to the backlog limit, then answers 503
with Retry-After; when the broker is back every accepted event arrives, once by event id, in order per
buyer. Runs on a private broker so cutting it off disturbs no other test.

The broker is reached through a TCP forwarder, and "going away" is the forwarder closing every connection
and refusing new ones. Restarting the embedded broker instead would not model an outage: it keeps topics
in memory only, and a producer that reconnects before the topics are created again gets its records
acknowledged and dropped (measured with Tansu 0.6), which made this test fail whenever the relay won
that race.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time

import pytest

from services.intake.contracts import PRODUCES
from shared.embedded import broker_binary, create_topics, free_port, stop_process, wait_for_kafka, wait_for_port
from tests.integration.intake.intake_support import (
    Watch,
    create_key,
    intake_settings,
    migrated,
    new_id,
    running,
)
from tests.unit.intake.intake_samples import sample

pytestmark = pytest.mark.integration

TOPICS = tuple(sorted(set(PRODUCES.values())))
BUYERS = ("buyer-a", "buyer-b", "buyer-c")


class Forwarder:
    """127.0.0.1:``port`` -> 127.0.0.1:``target``; ``stop()`` cuts every connection and refuses new ones."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def _broker(port: int, advertised: int, log) -> subprocess.Popen[bytes]:
    """The embedded broker on ``port``, telling clients to connect through the forwarder's ``advertised``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}", "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 30, proc=proc, what="the Tansu broker", log_file=log)
    return proc


def _batch(n: int) -> list[dict]:
    return [sample("ticket.opened", event_id=new_id("down"), buyer_id=BUYERS[i % len(BUYERS)],
                   ticket_id=f"T-{i}") for i in range(n)]


async def test_broker_down_accepts_up_to_the_backlog_then_503_and_drains_every_event_once(
        fresh_database, tmp_path):
    port, broker_port = free_port(), free_port()
    proc = _broker(broker_port, port, tmp_path / "broker.log")
    forwarder = Forwarder(port, broker_port)
    await forwarder.start()
    bootstrap = f"127.0.0.1:{port}"
    await wait_for_kafka(bootstrap)
    await create_topics(bootstrap, TOPICS, 4)
    settings = intake_settings(await migrated(fresh_database), bootstrap, max_outbox_backlog=60,
                               backlog_check_seconds=0.2, retry_after_seconds=2)
    accepted: list[dict] = []
    try:
        async with running(settings) as svc:
            _, key = await create_key(svc.engine)
            headers = {"X-API-Key": key}

            async def submit(items):
                r = await svc.client.post("/v1/tickets/batch", json={"items": items}, headers=headers)
                if r.status_code == 200:
                    results = r.json()["results"]
                    assert all(x["status"] == "accepted" for x in results), results
                    accepted.extend(items)
                return r

            before = Watch(bootstrap, TOPICS)
            await before.start()
            assert (await submit(_batch(10))).status_code == 200  # broker up
            try:
                up = await before.until([a["event_id"] for a in accepted], timeout=20)
            finally:
                await before.stop()
            assert all(len(v) == 1 for v in up.values())
            accepted.clear()
            await forwarder.stop()  # the broker is gone for intake: connections cut, new ones refused

            refused = None
            for _ in range(10):
                r = await submit(_batch(20))
                if r.status_code == 503:
                    refused = r
                    break
                assert r.status_code == 200, r.text
            assert refused is not None, "never refused although the backlog limit was passed"
            assert refused.headers["retry-after"] == "2"
            assert refused.headers["content-type"] == "application/problem+json"
            assert len(accepted) >= 60

            await forwarder.start()  # and back, with the topics it had
            watch = await Watch(bootstrap, TOPICS, from_start=True).start()
            started = time.monotonic()
            try:
                arrived = await watch.until([a["event_id"] for a in accepted], timeout=90, settle=0.5)
            finally:
                await watch.stop()
            drained_in = time.monotonic() - started
            missing = [eid for eid, records in arrived.items() if not records]
            assert not missing, f"{len(missing)} accepted events never arrived (waited {drained_in:.1f} s)"
            for buyer in BUYERS:
                sent = [a["event_id"] for a in accepted if a["buyer_id"] == buyer]
                seen: list[str] = []
                for a in sorted((a for a in watch.arrivals if a.key == buyer.encode()),
                                key=lambda a: (a.partition, a.offset)):
                    if a.envelope["event_id"] not in seen:
                        seen.append(a.envelope["event_id"])
                assert len({x.partition for x in watch.arrivals if x.key == buyer.encode()}) == 1
                assert [e for e in seen if e in sent] == [e for e in sent if e in seen]
            r = await svc.client.post("/v1/tickets/batch", json={"items": _batch(5)}, headers=headers)
            assert r.status_code == 200  # the backlog is counted again: accepting once more
            print(f"drained {len(accepted)} accepted events in {drained_in:.1f} s after the broker came back; "
                  f"{sum(map(len, arrived.values())) - len(arrived)} redeliveries")
    finally:
        await forwarder.stop()
        with contextlib.suppress(Exception):
            stop_process(proc.pid, 5)
