"""The runtime every service shares: engine, producer, outbox relay, consumer runners, FastAPI app
with health, readiness, metrics, problem details, body limits and correlation ids, and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.auth import TokenService
from shared.config import ServiceSettings, redact_url
from shared.db import make_engine, migrate, ping, retry_connect
from shared.http import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    document_api,
    install_problem_handlers,
    problem_response,
)
from shared.kafka.consumer import ConsumerRunner
from shared.kafka.producer import EventProducer
from shared.logging import configure_logging
from shared.maintenance import Housekeeper, list_dead_letters, replay_dead_letter
from shared.outbox import OutboxRelay

log = logging.getLogger(__name__)


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class ServiceContext:
    name: str
    schema: str
    settings: ServiceSettings
    engine: AsyncEngine
    producer: EventProducer
    relay: OutboxRelay
    tokens: TokenService
    runners: list[ConsumerRunner] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)  # started after runners, stopped first
    readiness: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Degraded but still serving correctly (e.g. auto_comp's failed strategy reload: the last good set stays
    # in force): named in /readyz's "warnings" without making the service not ready. Each returns None when fine.
    warnings: list[Callable[[], str | None]] = field(default_factory=list)
    started: bool = False

    @classmethod
    def create(cls, name: str, schema: str, settings: ServiceSettings) -> ServiceContext:
        engine = make_engine(settings.database_url, schema, settings.db_pool_size)
        producer = EventProducer(settings, name)
        relay = OutboxRelay(engine, producer, name, batch_size=settings.outbox_batch_size,
                            poll_interval=settings.outbox_poll_interval_ms / 1000)
        tokens = TokenService(settings.require_token_secret(), settings.auth_token_issuer)
        return cls(name, schema, settings, engine, producer, relay, tokens)

    def add_consumer(self, group_id: str, topics: Sequence[str], handler: Any, **kw: Any) -> ConsumerRunner:
        runner = ConsumerRunner(settings=self.settings, engine=self.engine, group_id=group_id, topics=topics,
                                handler=handler, on_commit=self.relay.wake, **kw)
        self.runners.append(runner)
        return runner

    async def start(self) -> None:
        if not any(isinstance(c, Housekeeper) for c in self.components):
            self.components.append(Housekeeper(self.engine, self.settings.processed_events_retention_days))
        await retry_connect(self.engine, attempts=30)
        await _retry("Kafka broker", self.producer.start, attempts=30)
        await self.relay.start()
        for runner in self.runners:
            await _retry(f"consumer {runner.group_id}", runner.start, attempts=30)
        for component in self.components:
            await component.start()
        self.started = True
        log.info("service started", extra={"port": self.settings.port})

    async def stop(self) -> None:
        # Reverse order: stop taking work, finish batches in hand, flush the outbox, then disconnect.
        # Every step runs whatever the earlier ones did (even a cancellation), so no Kafka client or
        # pooled connection outlives the service; the first cancellation is re-raised at the end.
        steps: list[Callable[[], Awaitable[None]]] = [
            *(c.stop for c in reversed(self.components)), *(r.stop for r in reversed(self.runners)),
            self.relay.stop, self.producer.stop, self.engine.dispose]
        interrupted: BaseException | None = None
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("error during shutdown")
            except BaseException as exc:  # CancelledError, KeyboardInterrupt: finish releasing first
                interrupted = interrupted or exc
        self.started = False
        log.info("service stopped")
        if interrupted is not None:
            raise interrupted

    async def check_ready(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await ping(self.engine)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"failing: {type(exc).__name__}"
        try:
            await self.producer.ready()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"failing: {type(exc).__name__}"
        for runner in self.runners:
            # Not ready while a consumer loop is dead, restarting after a crash, or retrying a failing batch.
            problem = runner.readiness_problem()
            checks[f"consumer:{runner.group_id}"] = "ok" if problem is None else f"failing: {problem}"
        for check in self.readiness:
            try:
                await check()
                checks[getattr(check, "__name__", "check")] = "ok"
            except Exception as exc:
                checks[getattr(check, "__name__", "check")] = f"failing: {exc}"
        return checks

    def current_warnings(self) -> dict[str, str]:
        found = {}
        for warning in self.warnings:
            text = warning()
            if text:
                found[getattr(warning, "__name__", "warning")] = text
        return found


async def _retry(what: str, start: Callable[[], Awaitable[None]], attempts: int) -> None:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            await start()
            return
        except Exception as exc:
            last = exc
            log.warning(f"{what} not reachable yet", extra={"error": str(exc)})
            await asyncio.sleep(1)
    raise RuntimeError(f"{what} not reachable after {attempts} attempts: {last}") from last


def create_app(ctx: ServiceContext, *, title: str, description: str, version: str = "1.0.0",
               openapi_tags: list[dict[str, Any]] | None = None, manage_lifecycle: bool = True,
               security_schemes: dict[str, Any] | None = None,
               security: list[dict[str, list[str]]] | None = None) -> FastAPI:
    """A FastAPI app wired with the platform's middlewares and operational endpoints; its OpenAPI document
    states problem+json errors and the security of /v1 (bearer tokens unless ``security`` says)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await ctx.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await ctx.stop()

    app = FastAPI(title=title, description=description, version=version, lifespan=lifespan,
                  openapi_tags=openapi_tags)
    app.state.ctx = ctx
    install_problem_handlers(app)
    document_api(app, security_schemes=security_schemes, security=security)
    app.add_middleware(BodyLimitMiddleware, max_bytes=ctx.settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, service=ctx.name)

    @app.get("/healthz", tags=["operations"], include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": ctx.name}

    @app.get("/readyz", tags=["operations"], include_in_schema=False)
    async def readyz() -> Response:
        checks = await ctx.check_ready()
        warnings = {"warnings": found} if (found := ctx.current_warnings()) else {}
        if all(v == "ok" for v in checks.values()):
            return Response(content=_json({"status": "ready", "checks": checks, **warnings}),
                            media_type="application/json")
        return problem_response(503, "Service Unavailable", "not ready", checks=checks, **warnings)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _json(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj)


# ------------------------------------------------------------------ CLI


Command = Callable[[argparse.Namespace], Any]


def describe_config_errors(exc: ValidationError) -> str:
    """One line per bad environment variable, named as the operator sets it; values are never echoed
    (settings hide them, and DATABASE_URL carries a password)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        # Service variables are declared with their prefixed name as alias, which pydantic reports.
        variable = str(error["loc"][0]).upper() if error["loc"] else "?"
        message = "required, not set" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
        lines.append(f"  {variable}: {message}")
    return "\n".join(lines)


def run_cli(*, name: str, settings_factory: Callable[[], ServiceSettings],
            app_factory: Callable[[ServiceSettings], FastAPI], migrations_dir: Path, schema: str,
            extra: Callable[[argparse._SubParsersAction], None] | None = None,  # type: ignore[type-arg]
            argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP API and the consumers (and CONSUMER_PROCESSES - 1 consumer-only "
                                 "processes beside it)")
    sub.add_parser("consume", help="run the consumers and background work without the HTTP API (what serve "
                                   "starts for CONSUMER_PROCESSES > 1)")
    sub.add_parser("migrate", help="create/upgrade this service's database schema")
    dead = sub.add_parser("dead-letters", help="list or replay poison messages this service set aside")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True)
    dead_list = dead_sub.add_parser("list")
    dead_list.add_argument("--limit", type=int, default=50)
    dead_replay = dead_sub.add_parser("replay", help="re-publish one to its source topic")
    dead_replay.add_argument("id", type=int)
    if extra is not None:
        extra(sub)
    args = parser.parse_args(argv)
    # Only `serve` signs and verifies tokens; migrations, dead letters and the services' own operator
    # commands (keys, budgets, invariants, validators) run without the token secret.
    missing = ["  AUTH_TOKEN_SECRET: required, not set"] if (
        args.command == "serve" and not os.environ.get("AUTH_TOKEN_SECRET")) else []
    try:
        settings = settings_factory()
    except ValidationError as exc:
        lines = "\n".join([*missing, describe_config_errors(exc)])
        print(f"{name}: invalid configuration:\n{lines}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # e.g. an unreadable or invalid REGIONS_FILE
        print(f"{name}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if missing:
        print(f"{name}: invalid configuration:\n" + "\n".join(missing), file=sys.stderr)
        return 2
    configure_logging(name, settings.log_level, settings.log_json, settings.log_events_percent)
    if args.command == "serve":
        import uvicorn

        app = app_factory(settings)
        workers = ConsumerProcesses(name, settings.consumer_processes - 1)
        workers.start()
        try:
            uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                        timeout_graceful_shutdown=20, lifespan="on")
        finally:
            workers.stop()
        return 0
    if args.command == "consume":
        asyncio.run(consume_only(app_factory(settings).state.ctx))
        return 0
    if args.command == "migrate":
        asyncio.run(migrate(settings.database_url, schema, migrations_dir))
        print(f"{name}: schema {schema} migrated")
        return 0
    if args.command == "dead-letters":
        return asyncio.run(_dead_letters(args, settings, schema))
    handler: Command = args.handler
    try:
        result = handler(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except OSError as exc:
        if exc.filename is not None:  # a file the command was given: its own error says it best
            raise
        # An operator command against a stack that is not up (refused, no such socket, unknown host,
        # timeout): one line, not a driver traceback.
        print(f"{name}: cannot reach PostgreSQL at {redact_url(settings.database_url)} ({exc}); "
              "is the stack up (`make up`) or DATABASE_URL set?", file=sys.stderr)
        return 1
    return int(result or 0)


class ConsumerProcesses:
    """The extra consumer-only processes of ``serve`` (``CONSUMER_PROCESSES`` - 1): each runs the service's
    consumers and background work (``python -m services.<name> consume``) in its own interpreter, so a
    CPU-bound consumer scales across cores. They join the same consumer groups (Kafka spreads the partitions
    over every process), contend for the same outbox relay lock (one publishes, the others wake it) and run
    the same chores, which are safe on any number of replicas. They stop with serve (SIGTERM, the batch in
    hand finishes) and on their own if serve dies."""

    def __init__(self, name: str, count: int) -> None:
        self.name, self.count = name, count
        self.procs: list[Any] = []

    def start(self) -> None:
        import os
        import subprocess

        env = {**os.environ, "CONSUMER_PROCESSES": "1", "COMP_PARENT_PID": str(os.getpid())}
        for _ in range(self.count):
            self.procs.append(subprocess.Popen(  # noqa: S603 - fixed argv
                [sys.executable, "-m", f"services.{self.name}", "consume"], env=env, stdin=subprocess.DEVNULL))
        if self.procs:
            log.info("consumer processes started", extra={"pids": [p.pid for p in self.procs]})

    def stop(self, timeout: float = 35.0) -> None:
        import signal
        import subprocess

        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = []


async def consume_only(ctx: ServiceContext) -> None:
    """Run a service's consumers and background work until SIGTERM/SIGINT, or until the ``serve`` process
    that started this one (``COMP_PARENT_PID``) is gone."""
    import os
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = int(os.environ.get("COMP_PARENT_PID", "0"))
    await ctx.start()
    try:
        while not stop.is_set():
            if parent and os.getppid() != parent:
                log.warning("serve process gone; stopping the consumers", extra={"parent": parent})
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        await ctx.stop()


async def _dead_letters(args: argparse.Namespace, settings: ServiceSettings, schema: str) -> int:
    engine = make_engine(settings.database_url, schema, pool_size=1)
    try:
        if args.dead_command == "list":
            for row in await list_dead_letters(engine, args.limit):
                print(_json(row).decode())
        else:
            topic = await replay_dead_letter(engine, args.id)
            print(f"dead letter {args.id} queued for {topic}; the running service's relay publishes it")
        return 0
    finally:
        await engine.dispose()
