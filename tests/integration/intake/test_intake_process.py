"""intake as a real process: the key CLI and `serve`. Runs on a private broker. Schemathesis against the
OpenAPI documents of every service: tests/integration/test_openapi_schemathesis.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.intake.contracts import PRODUCES
from shared.embedded import create_topics, free_port, start_broker, stop_process, wait_for_kafka
from tests.integration.intake.intake_support import migrated, new_id
from tests.unit.intake.intake_samples import sample

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
async def environment(fresh_database, tmp_path_factory):
    url = await migrated(fresh_database)
    port = free_port()
    proc = start_broker(port, tmp_path_factory.mktemp("broker") / "broker.log", die_with_parent=True)
    bootstrap = f"127.0.0.1:{port}"
    await wait_for_kafka(bootstrap)
    await create_topics(bootstrap, sorted(set(PRODUCES.values())), 2)
    env = {**os.environ, "DATABASE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LOG_JSON": "false",
           "LOG_LEVEL": "WARNING"}
    yield env
    stop_process(proc.pid, 5)


def cli(env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.intake", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
async def server(environment, tmp_path_factory):
    port = free_port()
    env = {**environment, "INTAKE_PORT": str(port), "INTAKE_API_KEY_CACHE_SECONDS": "1"}
    log = open(tmp_path_factory.mktemp("intake") / "intake.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "services.intake", "serve"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "intake did not become ready"
            await asyncio.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


async def test_keys_cli_creates_lists_revokes_and_never_shows_a_key_twice(environment, server):
    created = await asyncio.to_thread(cli, environment, "keys", "create", "--system", "promo-system",
                                      "--regions", "SG,MY", "--event-types", "voucher.redeemed,voucher.expired",
                                      "--rate", "50")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    listed = await asyncio.to_thread(cli, environment, "keys", "list")
    assert key_id in listed.stdout and "promo-system" in listed.stdout and key not in listed.stdout
    async with httpx.AsyncClient(base_url=server) as client:
        item = sample("voucher.expired", event_id=new_id("cli"))
        assert (await client.post("/v1/vouchers/expired", json=item, headers={"X-API-Key": key})).status_code == 202
        revoked = await asyncio.to_thread(cli, environment, "keys", "revoke", key_id)
        assert revoked.returncode == 0
        # The revocation shows once the key lookup cache (1 s here) expires.
        deadline = time.monotonic() + 15
        while (await client.post("/v1/vouchers/expired", json=sample("voucher.expired", event_id=new_id("cli")),
                                 headers={"X-API-Key": key})).status_code != 401:
            assert time.monotonic() < deadline, "the revoked key was still accepted"
            await asyncio.sleep(0.2)
    assert (await asyncio.to_thread(cli, environment, "keys", "revoke", key_id)).returncode == 1
    bad = await asyncio.to_thread(cli, environment, "keys", "create", "--system", "x", "--regions", "SG,XX",
                                  "--event-types", "*")
    assert bad.returncode == 2 and "XX" in bad.stderr


async def test_ensure_dev_creates_a_key_once(environment, server, tmp_path):
    path = tmp_path / "dev-api-key"
    first = await asyncio.to_thread(cli, environment, "keys", "ensure-dev", "--file", str(path))
    assert first.returncode == 0, first.stderr
    key = path.read_text().strip()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    second = await asyncio.to_thread(cli, environment, "keys", "ensure-dev", "--file", str(path))
    assert second.returncode == 0 and path.read_text().strip() == key
    async with httpx.AsyncClient(base_url=server) as client:
        item = sample("ticket.opened", event_id=new_id("dev"))
        assert (await client.post("/v1/tickets", json=item, headers={"X-API-Key": key})).status_code == 202
