"""Fixtures of the whole suite. Infrastructure is chosen in ``tests/infra.py`` (environment, else
testcontainers, else embedded) and started only when a test asks for it, so unit tests start nothing.

Session:  ``infrastructure``, ``database_url`` (asyncpg URL of a server the suite may create databases
          on), ``kafka_bootstrap`` (host:port; the platform's topics exist), ``make_database``,
          ``topic_factory``.
Module:   ``fresh_database``: URL of a new empty database for the test module (dropped afterwards).
Function: ``unique_topic_prefix``, ``make_topics``: topics of the test's own, never shared.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

# Services refuse to start without their own AUTH_TOKEN_SECRET; the suite signs with a random one per run
# (subprocesses the tests start inherit it).
os.environ.setdefault("AUTH_TOKEN_SECRET", secrets.token_urlsafe(32))

from tests.infra import Infrastructure, create_database, drop_database, unique_name  # noqa: E402

_INFRA: Infrastructure | None = None

TopicFactory = Callable[..., Awaitable[tuple[str, ...]]]
DatabaseFactory = Callable[..., Awaitable[str]]


def _partitions() -> int:
    return int(os.environ.get("KAFKA_TOPIC_PARTITIONS", "4"))


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    """Holder of the session's PostgreSQL and Kafka; starts each on first use, stops both at the end."""
    global _INFRA
    _INFRA = Infrastructure()
    try:
        yield _INFRA
    finally:
        _INFRA.close()


@pytest.fixture(scope="session")
def database_url(infrastructure: Infrastructure) -> str:
    """``postgresql+asyncpg://`` URL of the session's server (its maintenance database). Tests should
    work in ``fresh_database`` instead of here."""
    return infrastructure.database_url()


@pytest.fixture(scope="session")
async def kafka_bootstrap(infrastructure: Infrastructure) -> str:
    """Bootstrap servers of the session's broker; every topic of ``shared.contracts.topics`` exists."""
    from shared.contracts.topics import ALL_TOPICS

    return await infrastructure.kafka_bootstrap(ALL_TOPICS, _partitions())


@pytest.fixture(scope="session")
async def make_database(database_url: str) -> AsyncIterator[DatabaseFactory]:
    """``await make_database("hint")`` creates a new empty database and returns its URL; all of them are
    dropped at the end of the session."""
    created: list[str] = []

    async def make(hint: str = "") -> str:
        name = "test_" + unique_name(hint, 50).replace("-", "_")
        url = await create_database(database_url, name)
        created.append(name)
        return url

    yield make
    for name in created:
        try:
            await drop_database(database_url, name)
        except Exception as exc:  # a leftover database is not worth failing the run for
            print(f"warning: could not drop test database {name}: {exc!r}", file=sys.stderr)


@pytest.fixture(scope="module")
async def fresh_database(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """URL of a new, empty database of this test module's own (``test_<random>``), dropped after it."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = "test_" + unique_name(module[:30], 50).replace("-", "_")
    url = await create_database(database_url, name)
    yield url
    try:
        await drop_database(database_url, name)
    except Exception as exc:
        print(f"warning: could not drop test database {name}: {exc!r}", file=sys.stderr)


@pytest.fixture(scope="session")
async def topic_factory(kafka_bootstrap: str) -> TopicFactory:
    """``await topic_factory("orders", "results", partitions=4)`` creates uniquely named topics and returns
    their names in order. For module- or session-scoped fixtures; tests use ``make_topics``."""

    async def make(*names: str, partitions: int | None = None, prefix: str | None = None) -> tuple[str, ...]:
        from shared.embedded import create_topics

        base = prefix or unique_name("t")
        full = tuple(f"{base}.{n}" for n in names) if names else (base,)
        await create_topics(kafka_bootstrap, full, partitions or _partitions())
        return full

    return make


@pytest.fixture
def unique_topic_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix no other test uses: ``<test name>-<random>``; use it for topics and consumer groups."""
    return unique_name(request.node.name, 60)


@pytest.fixture
def make_topics(topic_factory: TopicFactory, unique_topic_prefix: str) -> TopicFactory:
    """``(a, b) = await make_topics("tickets", "results", partitions=1)``: topics of this test's own,
    named ``<unique_topic_prefix>.<name>`` (with no names: one topic named the prefix)."""

    async def make(*names: str, partitions: int | None = None) -> tuple[str, ...]:
        return await topic_factory(*names, partitions=partitions, prefix=unique_topic_prefix)

    return make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _INFRA is not None:
        for line in _INFRA.describe():
            terminalreporter.write_line(f"test infrastructure: {line}")
