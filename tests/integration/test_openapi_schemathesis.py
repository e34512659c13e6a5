"""The OpenAPI documents tell the truth (issue 11, part 8): schemathesis with all its checks against each of
the four services running as real processes (``python -m services.<name> serve``) on a private database and
a private broker, so the fuzzer's events stay here.

Every check of ``schemathesis run --checks all`` must pass: no 5xx; every status, media type, header and
body as documented (problem+json on every error); requests that break the schema refused; schema-valid
requests accepted (401/403/404/409/422 allowed there: see ``schemathesis.toml``); authentication not
ignored; undocumented methods answered 405 with Allow. Each service is fuzzed with bearer tokens from
``shared.auth`` per role set and region grant that its routes serve.

``SCHEMATHESIS_MAX_EXAMPLES`` (default 6: seconds per service) sets the examples per operation and
``SCHEMATHESIS_ALL_TOKENS=1`` adds the other tokens; the README gives the longer run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.auth import TokenService
from shared.contracts.topics import ALL_TOPICS
from shared.db import migrate
from shared.embedded import create_topics, free_port, start_broker, stop_process, wait_for_kafka

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "6"))
SERVICES = {"intake": "INTAKE_PORT", "auto_comp": "AUTO_COMP_PORT", "audit_sampler": "AUDIT_SAMPLER_PORT",
            "ledger": "LEDGER_PORT"}
# The role sets each service's routes serve: the first opens every route; the others mostly meet 403.
ROLES = {
    "intake": [("service",)],
    "auto_comp": [("strategy_manager", "ops_admin"), ("auditor",)],
    "audit_sampler": [("lead", "senior_auditor", "auditor"), ("finance",)],
    "ledger": [("finance", "ops_admin"), ("strategy_manager",)],
}


@dataclass
class Stack:
    urls: dict[str, str]
    env: dict[str, str]
    logs: dict[str, Path]
    tokens: TokenService


async def _ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{url} not ready:\n{log.read_text()[-3000:]}"
            await asyncio.sleep(0.3)


@pytest.fixture(scope="module")
async def stack(fresh_database: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    for name in SERVICES:
        await migrate(fresh_database, name, ROOT / "services" / name / "migrations")
    logs_dir = tmp_path_factory.mktemp("services")
    port = free_port()
    broker = start_broker(port, logs_dir / "broker.log", die_with_parent=True)
    bootstrap = f"127.0.0.1:{port}"
    await wait_for_kafka(bootstrap)
    await create_topics(bootstrap, ALL_TOPICS, 1)
    env = {**os.environ, "DATABASE_URL": fresh_database, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "LOG_JSON": "false", "LOG_LEVEL": "WARNING", "DB_POOL_SIZE": "3"}
    procs, urls, logs = {}, {}, {}
    try:
        for name, port_variable in SERVICES.items():
            service_port = free_port()
            logs[name] = logs_dir / f"{name}.log"
            with open(logs[name], "wb") as out:
                procs[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}", "serve"], cwd=ROOT,
                                               env={**env, port_variable: str(service_port)},
                                               stdout=out, stderr=subprocess.STDOUT)
            urls[name] = f"http://127.0.0.1:{service_port}"
        for name in SERVICES:
            await _ready(urls[name], procs[name], logs[name])
        tokens = TokenService(os.environ["AUTH_TOKEN_SECRET"], os.environ.get("AUTH_TOKEN_ISSUER",
                                                                                "compensation-platform"))
        yield Stack(urls, env, logs, tokens)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop_process(broker.pid, 5)


def schemathesis_command(url: str, token: str, max_examples: int) -> list[str]:
    """The command the README gives for a longer run (with a higher ``--max-examples``)."""
    return [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
            "--config-file", str(CONFIG), "--no-color", "run", f"{url}/openapi.json", "--checks", "all",
            "--max-examples", str(max_examples), "--header", f"Authorization: Bearer {token}",
            "--generation-database", "none", "--workers", "1", "--request-timeout", "30"]


def _run(stack: Stack, service: str, roles: tuple[str, ...], regions: tuple[str, ...]) -> None:
    token = stack.tokens.issue(f"fuzzer-{'-'.join(roles)}", roles, regions, ttl_seconds=3600)
    done = subprocess.run(schemathesis_command(stack.urls[service], token, MAX_EXAMPLES), cwd=ROOT,
                          env=stack.env, capture_output=True, text=True, timeout=600, check=False)
    report = done.stdout[-12000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"{service} {roles} {regions}:\n{report}\n--- service log ---\n" + \
        stack.logs[service].read_text()[-4000:]
    assert "No issues found" in done.stdout or "passed" in done.stdout, report


@pytest.mark.parametrize("service", list(SERVICES))
async def test_schemathesis_all_checks_pass(stack, service):
    """Each service with the token of the roles it serves, all regions; the longer run (``SCHEMATHESIS_ALL_
    TOKENS=1``) adds a one-region grant and the other role sets, which answer 403 where the first is let in."""
    runs = [(ROLES[service][0], ("*",))]
    if os.environ.get("SCHEMATHESIS_ALL_TOKENS") == "1":
        runs += [(ROLES[service][0], ("SG",)), *((roles, ("*",)) for roles in ROLES[service][1:])]
    for roles, regions in runs:
        await asyncio.to_thread(_run, stack, service, roles, regions)
