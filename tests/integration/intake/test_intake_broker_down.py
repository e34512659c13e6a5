"""The broker goes away: intake keeps accepting into its outbox up to the backlog limit, then answers 503
with Retry-After; when the broker is back every accepted event arrives, once by event id, in order per
buyer. Runs on a private broker so stopping it disturbs no other test."""

from __future__ import annotations

import time

import pytest

from services.intake.contracts import PRODUCES
from shared.embedded import create_topics, free_port, start_broker, stop_process, wait_for_kafka
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


async def _broker(port: int, log) -> object:
    proc = start_broker(port, log, die_with_parent=True)
    bootstrap = f"127.0.0.1:{port}"
    await wait_for_kafka(bootstrap)
    # The embedded broker keeps topics in memory only: a restarted one starts empty.
    await create_topics(bootstrap, TOPICS, 4)
    return proc


def _batch(n: int) -> list[dict]:
    return [sample("ticket.opened", event_id=new_id("down"), buyer_id=BUYERS[i % len(BUYERS)],
                   ticket_id=f"T-{i}") for i in range(n)]


async def test_broker_down_accepts_up_to_the_backlog_then_503_and_drains_every_event_once(
        fresh_database, tmp_path):
    port = free_port()
    log = tmp_path / "broker.log"
    proc = await _broker(port, log)
    bootstrap = f"127.0.0.1:{port}"
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
            # The memory-only broker loses what it held: from here on, only what intake keeps counts.
            accepted.clear()
            stop_process(proc.pid, 5)  # type: ignore[attr-defined]

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

            proc = await _broker(port, log)
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
                  f"{len(watch.arrivals) - len(arrived)} redeliveries")
    finally:
        stop_process(proc.pid, 5)  # type: ignore[attr-defined]
