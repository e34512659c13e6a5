"""A private world per benchmark scenario: a fresh database on the bench PostgreSQL, a fresh broker, and
the real services started as subprocesses (``python -m services.<name> migrate`` then ``serve``).

A fresh broker per scenario keeps runs independent: the services' consumer groups start at the beginning
of empty topics, and nothing a previous run left on a topic is read again. With an external broker
(BENCH_KAFKA_BOOTSTRAP_SERVERS) the platform's topics are deleted and created again instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from shared import embedded
from shared.contracts.topics import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SECRET = "bench-only-token-secret-" + uuid.uuid4().hex
DEFAULT_PROCESSES = {"ledger": "2"}  # CONSUMER_PROCESSES per service in the benchmarks
PORT_VARS = {"intake": "INTAKE_PORT", "auto_comp": "AUTO_COMP_PORT", "ledger": "LEDGER_PORT",
             "audit_sampler": "AUDIT_SAMPLER_PORT", "insights": "INSIGHTS_PORT"}


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    spy: subprocess.Popen[bytes] | None = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """``async with Stack(base_url, external_bootstrap, tag) as s:`` then ``await s.start("ledger")``."""

    base_url: str
    external_bootstrap: str | None
    tag: str
    partitions: int = 4
    env_extra: dict[str, str] = field(default_factory=dict)
    url: str = ""
    bootstrap: str = ""
    services: dict[str, Service] = field(default_factory=dict)
    _broker: subprocess.Popen[bytes] | None = None
    _db: str = ""
    _dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-stack-")))

    @property
    def dsn(self) -> str:
        return plain_dsn(self.url)

    async def __aenter__(self) -> Stack:
        try:
            await self._create_database()
            await self._create_broker()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _create_database(self) -> None:
        self._db = f"bench_{self.tag}_{uuid.uuid4().hex[:6]}".lower()
        conn = await asyncpg.connect(plain_dsn(self.base_url))
        try:
            await conn.execute(f'CREATE DATABASE "{self._db}"')
        finally:
            await conn.close()
        self.url = with_database(self.base_url, self._db)

    async def _create_broker(self) -> None:
        if self.external_bootstrap:
            self.bootstrap = self.external_bootstrap
            await _recreate_topics(self.bootstrap, list(ALL_TOPICS), self.partitions)
            return
        port = embedded.free_port()
        self._broker = embedded.start_broker(port, self._dir / "broker.log")
        self.bootstrap = f"{HOST}:{port}"
        await embedded.wait_for_kafka(self.bootstrap, 30)
        await embedded.create_topics(self.bootstrap, ALL_TOPICS, self.partitions)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("PORT", "DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
            env.pop(var, None)
        env.update({
            "DATABASE_URL": self.url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "AUTH_TOKEN_SECRET": SECRET,
            "LOG_LEVEL": os.environ.get("BENCH_SERVICE_LOG_LEVEL", "INFO"),
            # Results stay comparable with runs from before the event lines existed (issue 13).
            "LOG_EVENTS_PERCENT": os.environ.get("BENCH_LOG_EVENTS_PERCENT", "0"),
            "KAFKA_TOPIC_PARTITIONS": str(self.partitions),
            "CONSUMER_SESSION_TIMEOUT_MS": "6000",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.env_extra)
        env.update(extra)
        return env

    def cli(self, name: str, *args: str, timeout: float = 120) -> str:
        """Run ``python -m <name> args`` (a service or ``shared``) against this stack; return stdout."""
        module = name if name == "shared" else f"services.{name}"
        result = subprocess.run(
            [sys.executable, "-m", module, *args], cwd=ROOT, env=self.env(), capture_output=True, text=True,
            timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{module} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-2000:]}{result.stderr[-4000:]}")
        return result.stdout

    async def start(self, name: str, *, migrate: bool = True, wait: float = 90.0, instance: str | None = None,
                    port: int | None = None, **extra: str) -> Service:
        """Start ``services.<name> serve``. ``instance`` names a replica (``services`` keeps one process per
        instance, the service's name by default); ``port`` reuses a replica's port on a restart."""
        if migrate:
            await asyncio.to_thread(self.cli, name, "migrate")
        instance = instance or name
        port = port or embedded.free_port()
        log = self._dir / f"{instance}.log"
        # One process per core for the CPU-bound ledger consumers (ADR 0014); BENCH_<NAME>_PROCESSES overrides.
        processes = os.environ.get(f"BENCH_{name.upper()}_PROCESSES", DEFAULT_PROCESSES.get(name, "1"))
        env = self.env(**{PORT_VARS[name]: str(port), "CONSUMER_PROCESSES": processes, **extra})
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}", "serve"], cwd=ROOT, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, close_fds=True)
        service = Service(name, port, proc, log)
        self.services[instance] = service
        service.spy = _pyspy(instance, proc.pid)
        deadline = time.monotonic() + wait
        while not await asyncio.to_thread(_healthy, service):
            if proc.poll() is not None:
                raise RuntimeError(f"{instance} exited with {proc.returncode} while starting:\n{service.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{instance} not healthy within {wait:.0f} s:\n{service.tail()}")
            await asyncio.sleep(0.2)
        return service

    async def stop(self, name: str) -> None:
        service = self.services.pop(name, None)
        if service is not None and service.spy is not None:
            service.spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            with contextlib.suppress(Exception):
                await asyncio.to_thread(service.spy.wait, 30)
        if service is not None:
            await asyncio.to_thread(embedded.stop_process, service.pid, 30.0)
            with contextlib.suppress(Exception):
                service.proc.wait(5)

    async def close(self) -> None:
        for name in list(self.services):
            try:
                await self.stop(name)
            except Exception as exc:
                print(f"bench: stopping {name} failed: {exc}", file=sys.stderr)
        if self._broker is not None:
            await asyncio.to_thread(embedded.stop_process, self._broker.pid, 10.0)
            with contextlib.suppress(Exception):
                self._broker.wait(5)
            self._broker = None
        if self._db:
            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(plain_dsn(self.base_url))
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{self._db}" WITH (FORCE)')
                finally:
                    await conn.close()
            self._db = ""
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(self._dir, ignore_errors=True)

    def token(self, roles: str = "service") -> str:
        """A bearer token from the operators' CLI (``python -m shared token``)."""
        return self.cli("shared", "token", "--subject", "bench", "--roles", roles, "--regions", "*",
                        "--ttl", "7200").strip()

    async def set_budget(self, region: str, limit_minor: int) -> str:
        """Set the region's budget for the current period (and the next, around a period boundary)."""
        from datetime import UTC, datetime, timedelta

        from shared.periods import period_of
        from shared.regions import region as region_of

        now = datetime.now(UTC)
        periods = {period_of(now + timedelta(minutes=m), region_of(region), "month") for m in (0, 60)}
        for period in sorted(periods):
            await asyncio.to_thread(self.cli, "ledger", "budgets", "set", "--region", region, "--period", period,
                                    "--limit-minor", str(limit_minor), "--actor", "bench")
        return sorted(periods)[0]


_SPIES: dict[str, int] = {}


def _pyspy(name: str, pid: int) -> subprocess.Popen[bytes] | None:
    """With ``BENCH_PYSPY=<dir>``: a py-spy profile (raw, collapsed stacks, subprocesses included) of the
    service from its start until it is stopped, as ``<dir>/<service>-<n>.txt``: where a service's CPU goes
    in the real processes of a run. py-spy samples from outside but takes CPU of its own: runs meant for
    the numbers are made without it."""
    folder = os.environ.get("BENCH_PYSPY")
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not folder or not Path(exe).exists():
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    n = _SPIES[name] = _SPIES.get(name, 0) + 1
    return subprocess.Popen([exe, "record", "-p", str(pid), "--subprocesses", "-r", "100", "-f", "raw", "-o",
                             str(Path(folder) / f"{name}-{n}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _healthy(service: Service) -> bool:
    import httpx

    try:
        return httpx.get(service.base + "/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


async def _recreate_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            await embedded.create_topics(bootstrap, topics, partitions)
            return
        except embedded.EmbeddedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


class Counter:
    """A pooled asyncpg connection for measurement queries (a benchmark may read tables to measure)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Counter:
        self.conn = await asyncpg.connect(self.dsn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def value(self, sql: str, *args: Any) -> Any:
        assert self.conn is not None
        return await self.conn.fetchval(sql, *args)

    async def row(self, sql: str, *args: Any) -> Any:
        assert self.conn is not None
        return await self.conn.fetchrow(sql, *args)

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        assert self.conn is not None
        return list(await self.conn.fetch(sql, *args))

    async def wait_for(self, sql: str, target: int, timeout: float, interval: float = 0.05,
                       what: str = "rows") -> float:
        """Poll ``sql`` (a count) until it reaches ``target``; return the database clock (epoch s) then."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            row = await self.row(f"SELECT ({sql}) AS n, extract(epoch FROM clock_timestamp())::float8 AS t")
            if row["n"] >= target:
                return float(row["t"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {row['n']} of {target} after {timeout:.0f} s")
            if row["n"] != last:
                last = row["n"]
            await asyncio.sleep(interval)
