"""A whole region stack on one machine, without Docker: ``python deploy/local/stack.py up|down|status|logs``.

up      PostgreSQL (data in .local/pg) unless DATABASE_URL is set; the Tansu broker (memory only) unless
        KAFKA_BOOTSTRAP_SERVERS is set; the platform's topics; every service's migrations; the services
        under honcho in the background; waits for each /healthz and prints the URLs.
down    stops the services, the broker and PostgreSQL started by ``up`` and checks nothing is left
        (``--wipe`` also deletes the database folder).
status  what runs and whether each service answers /healthz and /readyz (exit 0 only if all do).
logs    follows the logs in .local/logs (and PostgreSQL's).

Environment: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS (use these instead of the embedded ones),
AUTH_TOKEN_SECRET (else a random one kept in .local/auth_token_secret), INTAKE_PORT (8001),
AUTO_COMP_PORT (8002), AUDIT_SAMPLER_PORT (8003), LEDGER_PORT (8004), INSIGHTS_PORT (8005),
STACK_KAFKA_PORT (9092),
KAFKA_TOPIC_PARTITIONS (4), STACK_HEALTH_TIMEOUT (60 seconds), LOG_LEVEL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared import embedded  # noqa: E402
from shared.config import redact_url as redact  # noqa: E402

LOCAL = ROOT / ".local"
LOGS = LOCAL / "logs"
PG_DIR = LOCAL / "pg"
STATE_FILE = LOCAL / "stack.json"
BROKER_PID = LOCAL / "broker.pid"
SERVICES_PID = LOCAL / "services.pid"
SECRET_FILE = LOCAL / "auth_token_secret"
PROCFILE = ROOT / "deploy" / "local" / "Procfile"
HOST = "127.0.0.1"

SERVICES: dict[str, tuple[str, int]] = {  # name -> (port variable, default port)
    "intake": ("INTAKE_PORT", 8001),
    "auto_comp": ("AUTO_COMP_PORT", 8002),
    "audit_sampler": ("AUDIT_SAMPLER_PORT", 8003),
    "ledger": ("LEDGER_PORT", 8004),
    "insights": ("INSIGHTS_PORT", 8005),
}


class StackError(Exception):
    pass


def say(msg: str) -> None:
    print(f"stack: {msg}", flush=True)


def port_of(name: str) -> int:
    var, default = SERVICES[name]
    raw = os.environ.get(var, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise StackError(f"{var}={raw!r} is not a port number") from exc


def available_services() -> list[str]:
    return [n for n in SERVICES if (ROOT / "services" / n / "__main__.py").exists()]




def load_state() -> dict[str, Any]:
    try:
        data = json.loads(STATE_FILE.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_state(state: dict[str, Any]) -> None:
    LOCAL.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def is_tansu(pid: int) -> bool:
    try:
        return b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def is_service(pid: int) -> bool:
    try:
        return b"-m\0services." in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def broker_pid() -> int | None:
    pid = embedded.read_pid_file(BROKER_PID)
    return pid if pid is not None and is_tansu(pid) else None


def honcho_pid() -> int | None:
    pid = embedded.read_pid_file(SERVICES_PID)
    if pid is None:
        return None
    try:
        return pid if b"honcho" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except OSError:
        return None


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own http URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"(no {path})"
    return f"--- last {len(text)} lines of {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ---\n" \
        + "\n".join(text)


def auth_secret() -> str:
    if os.environ.get("AUTH_TOKEN_SECRET"):
        return os.environ["AUTH_TOKEN_SECRET"]
    if not SECRET_FILE.exists():
        LOCAL.mkdir(parents=True, exist_ok=True)
        SECRET_FILE.write_text(secrets.token_urlsafe(32))
        SECRET_FILE.chmod(0o600)
    return SECRET_FILE.read_text().strip()


def service_env(state: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PORT", None)
    env.update({
        "DATABASE_URL": state["database_url"],
        "KAFKA_BOOTSTRAP_SERVERS": state["bootstrap"],
        "AUTH_TOKEN_SECRET": auth_secret(),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "KAFKA_TOPIC_PARTITIONS": os.environ.get("KAFKA_TOPIC_PARTITIONS", "4"),
        "PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
    })
    for name, port in state.get("ports", {}).items():
        env[SERVICES[name][0]] = str(port)
    return env


def running(state: dict[str, Any]) -> dict[str, bool]:
    return {
        "postgres": (not state.get("pg_ours")) or embedded.postgres_pid(PG_DIR) is not None,
        "broker": (not state.get("broker_ours")) or broker_pid() is not None,
        "services": (not state.get("services")) or honcho_pid() is not None,
    }


# --------------------------------------------------------------------------------------------------- up


async def reset_consumer_offsets(database_url: str) -> list[str]:
    """A fresh in-memory broker has empty topics: offsets stored in the database would skip records."""
    import asyncpg

    conn = await asyncpg.connect("postgresql://" + database_url.split("://", 1)[1], timeout=30)
    try:
        schemas = [r[0] for r in await conn.fetch(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'consumer_offsets'")]
        for schema in schemas:
            await conn.execute(f'DELETE FROM "{schema}".consumer_offsets')
        return schemas
    finally:
        await conn.close()


def start_infrastructure(state: dict[str, Any]) -> bool:
    """Start (or find) PostgreSQL and the broker; return whether a fresh broker was started."""
    if os.environ.get("DATABASE_URL"):
        state.update(database_url=os.environ["DATABASE_URL"], pg_ours=False)
        say(f"PostgreSQL: using DATABASE_URL {redact(state['database_url'])}")
    else:
        was_running = embedded.postgres_pid(PG_DIR) is not None
        t0 = time.monotonic()
        state.update(database_url=embedded.start_postgres(PG_DIR), pg_ours=True)
        say(f"PostgreSQL: {'already running' if was_running else 'started'} in {PG_DIR.relative_to(ROOT)} "
            f"({time.monotonic() - t0:.1f} s)")
    fresh_broker = False
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        state.update(bootstrap=os.environ["KAFKA_BOOTSTRAP_SERVERS"], broker_ours=False)
        say(f"Kafka: using KAFKA_BOOTSTRAP_SERVERS {state['bootstrap']}")
    elif broker_pid() is not None and state.get("bootstrap") and state.get("broker_ours"):
        say(f"broker: already running at {state['bootstrap']} (pid {broker_pid()})")
    else:
        port = int(os.environ.get("STACK_KAFKA_PORT", "9092"))
        proc = embedded.start_broker(port, LOGS / "broker.log", host=HOST, pid_file=BROKER_PID, detached=True)
        state.update(bootstrap=f"{HOST}:{port}", broker_ours=True)
        fresh_broker = True
        say(f"broker: Tansu started at {HOST}:{port} (pid {proc.pid}, memory storage)")
    save_state(state)
    return fresh_broker


def migrate(names: list[str], env: dict[str, str]) -> None:
    log = LOGS / "migrate.log"
    for name in names:
        t0 = time.monotonic()
        result = subprocess.run(  # noqa: S603 - fixed argv
            [sys.executable, "-m", f"services.{name}", "migrate"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=300, check=False)
        with open(log, "a") as f:
            f.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {name} migrate: exit {result.returncode}\n"
                    f"{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise StackError(f"{name}: migrate failed (exit {result.returncode}):\n"
                             f"{(result.stdout + result.stderr).strip()[-4000:]}")
        say(f"{name}: migrated ({time.monotonic() - t0:.1f} s)")


DEV_API_KEY = LOCAL / "dev-api-key"
DEV_WORKBENCH = LOCAL / "workbench-dev-login"


def dev_credentials(names: list[str], env: dict[str, str]) -> None:
    """A dev API key for intake and a dev workbench lead, created once, so the README's examples work."""
    log = LOGS / "migrate.log"
    if "intake" in names:
        result = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "services.intake", "keys", "ensure-dev", "--file", str(DEV_API_KEY)],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"intake: dev API key not created:\n{result.stderr[-2000:]}")
        say(f"intake: dev API key in {DEV_API_KEY.relative_to(ROOT)}")
    if "audit_sampler" in names:
        # Create-or-replace with the remembered password, so a wiped database gets the same login back.
        stored = DEV_WORKBENCH.read_text().split() if DEV_WORKBENCH.exists() else []
        password = stored[1] if len(stored) == 2 else secrets.token_urlsafe(12)
        result = subprocess.run(
            [sys.executable, "-m", "services.audit_sampler", "users", "create", "--username", "dev-lead",
             "--role", "lead,senior_auditor,auditor", "--regions", "*", "--password-stdin"],
            cwd=ROOT, env=env, input=password + "\n", capture_output=True, text=True, check=False)
        with log.open("a") as f:
            f.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StackError(f"audit_sampler: dev workbench user not created:\n{result.stderr[-2000:]}")
        DEV_WORKBENCH.write_text(f"dev-lead {password}\n")
        DEV_WORKBENCH.chmod(0o600)
        say(f"workbench: dev sign-in (user, password) in {DEV_WORKBENCH.relative_to(ROOT)}")


def start_services(names: list[str], env: dict[str, str]) -> int:
    for name in names:
        port = int(env[SERVICES[name][0]])
        if embedded.port_open(HOST, port):
            raise StackError(f"{name}: port {port} is already in use (set {SERVICES[name][0]} to another port)")
    honcho = [sys.executable, "-m", "honcho", "--no-colour", "-f", str(PROCFILE), "-d", str(ROOT), "start",
              *names]
    with open(LOGS / "services.log", "ab") as log:
        log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {' '.join(names)}\n".encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            honcho, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    SERVICES_PID.write_text(f"{proc.pid}\n")
    return proc.pid


def wait_healthy(names: list[str], ports: dict[str, int], pid: int) -> None:
    timeout = float(os.environ.get("STACK_HEALTH_TIMEOUT", "60"))
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        pending = [n for n in pending if http_status(f"http://{HOST}:{ports[n]}/healthz", 1.0) != 200]
        if not pending:
            break
        if not embedded.pid_alive(pid):
            raise StackError(f"the services exited while starting ({', '.join(pending)} never healthy)\n"
                             + tail(LOGS / "services.log"))
        if time.monotonic() > deadline:
            raise StackError(f"not healthy within {timeout:.0f} s: {', '.join(pending)}\n"
                             + tail(LOGS / "services.log"))
        time.sleep(0.25)


def print_urls(state: dict[str, Any]) -> None:
    ports: dict[str, int] = state.get("ports", {})
    print()
    for name in SERVICES:
        if name not in ports:
            print(f"  {name:<14} not started (services/{name}/__main__.py missing)")
            continue
        base = f"http://{HOST}:{ports[name]}"
        print(f"  {name:<14} {base}   docs {base}/docs   metrics {base}/metrics   health {base}/healthz")
    if "audit_sampler" in ports:
        print(f"  {'workbench':<14} http://{HOST}:{ports['audit_sampler']}/workbench")
    if "insights" in ports:
        # No dev user here: who may read the dashboard is a decision (README: `services.insights users create`).
        print(f"  {'dashboard':<14} http://{HOST}:{ports['insights']}/dashboard  "
              "(sign-in: python -m services.insights users create ...)")
    kind = "embedded Tansu, memory only" if state.get("broker_ours") else "external"
    print(f"  {'kafka':<14} {state.get('bootstrap')} ({kind})")
    kind = "embedded, data in .local/pg" if state.get("pg_ours") else "external"
    print(f"  {'postgres':<14} {redact(state.get('database_url', '?'))} ({kind})")
    print(f"  {'logs':<14} {LOGS.relative_to(ROOT)}/  (make logs)")
    secret = "$AUTH_TOKEN_SECRET" if os.environ.get("AUTH_TOKEN_SECRET") else f"$(cat {SECRET_FILE.relative_to(ROOT)})"
    print(f"  {'token':<14} AUTH_TOKEN_SECRET={secret} {Path(sys.executable).name} -m shared token "
          f"--subject me --roles ops_admin --regions '*'")
    print()


def cmd_up(_: argparse.Namespace) -> int:
    state = load_state()
    alive = running(state)
    if state and all(alive.values()) and state.get("services") == available_services():
        say("already running")
        print_urls(state)
        return 0
    LOGS.mkdir(parents=True, exist_ok=True)
    names = available_services()
    missing = [n for n in SERVICES if n not in names]
    if missing:
        say(f"warning: no services/<name>/__main__.py for {', '.join(missing)}: not started")
    state["ports"] = {n: port_of(n) for n in names}
    try:
        fresh_broker = start_infrastructure(state)
        if fresh_broker and state["pg_ours"]:
            schemas = asyncio.run(reset_consumer_offsets(state["database_url"]))
            if schemas:
                say(f"fresh broker: cleared stored consumer offsets in {', '.join(schemas)}")
        from shared.contracts.topics import ALL_TOPICS

        partitions = int(os.environ.get("KAFKA_TOPIC_PARTITIONS", "4"))
        asyncio.run(embedded.wait_for_kafka(state["bootstrap"], 30))
        asyncio.run(embedded.create_topics(state["bootstrap"], ALL_TOPICS, partitions))
        say(f"topics: {len(ALL_TOPICS)} present ({partitions} partitions for new ones)")
        env = service_env(state)
        if names:
            migrate(names, env)
            dev_credentials(names, env)
            pid = honcho_pid()
            if pid is None:
                pid = start_services(names, env)
                say(f"services: {', '.join(names)} starting under honcho (pid {pid})")
            state["services"] = names
            save_state(state)
            wait_healthy(names, state["ports"], pid)
            # Remembered so that `down` finds them even if honcho itself was killed.
            state["service_pids"] = embedded.descendants(pid)
            save_state(state)
            say("all services healthy")
        else:
            state["services"] = []
            save_state(state)
            say("warning: no service to start yet; PostgreSQL, broker and topics are up")
    except (StackError, embedded.EmbeddedError) as exc:
        print(f"stack: up failed: {exc}", file=sys.stderr)
        print("stack: what did start is still running; `python deploy/local/stack.py down` stops it",
              file=sys.stderr)
        return 1
    print_urls(state)
    return 0


# ------------------------------------------------------------------------------------------------- down


def leftovers(service_pids: list[int]) -> list[str]:
    """Processes of this stack still alive (by the folders and files only this stack uses)."""
    marks = [str(PG_DIR), str(PROCFILE)]
    found = []
    own_broker = broker_pid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if not embedded.pid_alive(int(entry.name)):
            continue
        pid = int(entry.name)
        if any(m in cmd for m in marks) or pid == own_broker or (pid in service_pids and is_service(pid)):
            found.append(f"{entry.name} {cmd[:150]}")
    return found


def cmd_down(args: argparse.Namespace) -> int:
    state = load_state()
    failures = []
    pid = embedded.read_pid_file(SERVICES_PID)
    if pid is not None:
        say(f"stopping services (honcho pid {pid})")
        try:
            embedded.stop_process(pid, timeout=25, group=True)
        except embedded.EmbeddedError as exc:
            failures.append(str(exc))
    SERVICES_PID.unlink(missing_ok=True)
    for orphan in state.get("service_pids", []):  # services that outlived a killed honcho
        if embedded.pid_alive(orphan) and is_service(orphan):
            say(f"stopping orphaned service process {orphan}")
            try:
                embedded.stop_process(orphan, timeout=20)
            except embedded.EmbeddedError as exc:
                failures.append(str(exc))
    pid = broker_pid()
    if pid is not None:
        say(f"stopping broker (pid {pid})")
        try:
            embedded.stop_process(pid, timeout=10)
        except embedded.EmbeddedError as exc:
            failures.append(str(exc))
    BROKER_PID.unlink(missing_ok=True)
    if embedded.postgres_pid(PG_DIR) is not None:
        say("stopping PostgreSQL")
        try:
            embedded.stop_postgres(PG_DIR)
        except embedded.EmbeddedError as exc:
            failures.append(str(exc))
    if args.wipe and PG_DIR.exists():
        shutil.rmtree(PG_DIR)
        say(f"removed {PG_DIR.relative_to(ROOT)}")
    STATE_FILE.unlink(missing_ok=True)
    left = leftovers(state.get("service_pids", []))
    if left:
        failures.append("processes left behind:\n  " + "\n  ".join(left))
    if failures:
        print("stack: down incomplete: " + "\n".join(failures), file=sys.stderr)
        return 1
    say("stopped; no process left" + ("" if state else " (nothing was recorded as running)"))
    return 0


# ----------------------------------------------------------------------------------------- status, logs


def cmd_status(_: argparse.Namespace) -> int:
    state = load_state()
    if not state:
        running_pg = embedded.postgres_pid(PG_DIR)
        say("not running" + (f" (but PostgreSQL pid {running_pg} runs in .local/pg)" if running_pg else ""))
        return 3
    ok = True
    if state.get("pg_ours"):
        pg = embedded.postgres_pid(PG_DIR)
        ok &= pg is not None
        print(f"  postgres       {'pid ' + str(pg) if pg else 'DOWN'}  {redact(state.get('database_url', ''))}")
    else:
        print(f"  postgres       external  {redact(state.get('database_url', ''))}")
    if state.get("broker_ours"):
        bp = broker_pid()
        ok &= bp is not None
        print(f"  kafka          {'pid ' + str(bp) if bp else 'DOWN'}  {state.get('bootstrap')}")
    else:
        print(f"  kafka          external  {state.get('bootstrap')}")
    hp = honcho_pid()
    if state.get("services"):
        ok &= hp is not None
        print(f"  honcho         {'pid ' + str(hp) if hp else 'DOWN'}")
    for name, port in state.get("ports", {}).items():
        base = f"http://{HOST}:{port}"
        health, ready = http_status(f"{base}/healthz"), http_status(f"{base}/readyz")
        ok &= health == 200 and ready == 200
        print(f"  {name:<14} {base}  healthz {health or 'no answer'}  readyz {ready or 'no answer'}")
    return 0 if ok else 1


def cmd_logs(args: argparse.Namespace) -> int:
    files = sorted(LOGS.glob("*.log")) + ([PG_DIR / "log"] if (PG_DIR / "log").exists() else [])
    if not files:
        say("no logs yet (run up first)")
        return 1
    tail_bin = shutil.which("tail")
    if tail_bin is None:
        for f in files:
            print(tail(f, args.lines))
        return 0
    os.execv(tail_bin, [tail_bin, "-n", str(args.lines), "-F", *map(str, files)])  # noqa: S606
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/local/stack.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start everything (idempotent)").set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop everything up started")
    down.add_argument("--wipe", action="store_true", help="also delete the database folder .local/pg")
    down.set_defaults(func=cmd_down)
    sub.add_parser("status", help="what runs, and health").set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="follow the logs")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.set_defaults(func=cmd_logs)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (StackError, embedded.EmbeddedError) as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
