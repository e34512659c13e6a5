"""One process per core (CONSUMER_PROCESSES, ADR 0014): ``serve`` starts consumer-only processes beside
itself; they share the consumer groups (Kafka spreads the partitions), the books stay exactly right, and
they stop with serve or when serve dies. The ledger as a real process on a private broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psutil
import pytest

from services.ledger import invariants
from shared.config import CommonSettings
from shared.contracts.topics import ALL_TOPICS
from shared.db import make_engine, migrate
from shared.embedded import create_topics, free_port, start_broker, stop_process, wait_for_kafka
from shared.kafka import EventProducer
from shared.periods import period_of
from shared.regions import region
from tests.integration.ledger.ledger_support import MIGRATIONS, scalar, set_budget
from tests.unit.ledger.ledger_factories import carrier, manual, seller

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def world(fresh_database, tmp_path):
    port = free_port()
    broker = start_broker(port, tmp_path / "broker.log", die_with_parent=True)
    bootstrap = f"127.0.0.1:{port}"
    await wait_for_kafka(bootstrap)
    await create_topics(bootstrap, ALL_TOPICS, 4)
    await migrate(fresh_database, "ledger", MIGRATIONS)
    yield fresh_database, bootstrap, tmp_path
    stop_process(broker.pid, 5)


def assignments(log: Path) -> dict[int, list[str]]:
    """The latest partitions of the books group each process logged it holds."""
    latest: dict[int, list[str]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"partitions assigned"' in line:
            entry = orjson.loads(line)
            if entry["group"] == "ledger-books":
                latest[entry["pid"]] = entry["partitions"]
    return latest


async def until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_serve_runs_the_consumers_in_several_processes(world):
    url, bootstrap, tmp = world
    engine = make_engine(url, "ledger", pool_size=2)
    now = datetime.now(UTC)
    await set_budget(engine, "SG", period_of(now, region("SG")), 10**9, "SGD")
    log = tmp / "ledger.log"
    env = {**os.environ, "DATABASE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LEDGER_PORT": str(free_port()),
           "CONSUMER_PROCESSES": "2", "CONSUMER_SESSION_TIMEOUT_MS": "6000", "LOG_JSON": "true", "LOG_LEVEL": "INFO"}
    with open(log, "w") as out:
        serve = subprocess.Popen([sys.executable, "-m", "services.ledger", "serve"], env=env, cwd=ROOT, stdout=out,
                                 stderr=subprocess.STDOUT)
    producer = EventProducer(CommonSettings(database_url=url, kafka_bootstrap_servers=bootstrap), "test")
    await producer.start()
    try:
        async def two_consumers() -> bool:
            held = assignments(log)
            return len(held) == 2 and all(held.values())
        await until(two_consumers, 90, "both processes to hold partitions of the books group")
        [child] = psutil.Process(serve.pid).children()
        assert "consume" in child.cmdline() and set(assignments(log)) == {serve.pid, child.pid}
        n = 400
        for i in range(n):  # one buyer each: spread over the four partitions, so both processes charge
            env_ = manual(f"MP{i}", 600, at=now, buyer=f"BP{i}", shares=[(seller(), 400), (carrier(), 200)])
            await producer.send("compensations.manual.v1", orjson.dumps(env_.model_dump(mode="json")),
                                env_.payload["buyer_id"].encode())
        await producer.producer.flush()

        async def booked() -> bool:
            return await scalar(engine, "SELECT count(*) FROM compensations WHERE compensation_id LIKE 'MP%'") == n
        await until(booked, 90, "every compensation on the books")
        assert await scalar(engine, "SELECT posted_manual_minor FROM budgets WHERE region = 'SG'") == 600 * n
        async with engine.connect() as conn:
            found = await invariants.check(conn, datetime.now(UTC), 86_400)
        assert {k: v for k, v in found.items() if v} == {}
        # The consumer-only process goes when serve goes, even when serve cannot tell it (SIGKILL).
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        deadline = time.monotonic() + 45
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the consumer process outlived serve"
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()
        stop_process(serve.pid, 10)
        await engine.dispose()
