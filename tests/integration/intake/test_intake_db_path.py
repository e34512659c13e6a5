"""intake's write path against the real PostgreSQL: one statement per request (no pre-ping, no BEGIN or
COMMIT), connections the server killed cost no request, and bursts do not open and close connections."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from services.intake.domain.screening import screen
from services.intake.persistence import store_events
from shared.db import fetch_one_shot, make_engine
from shared.regions import catalogue
from tests.integration.intake.intake_support import (
    Watch,
    create_key,
    intake_settings,
    migrated,
    new_id,
    received_ids,
    running,
)
from tests.unit.intake.intake_samples import sample

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def url(fresh_database):
    return await migrated(fresh_database)


def _candidates(n: int) -> list[Any]:
    items = [sample("ticket.opened", event_id=new_id("db"), buyer_id=new_id("buyer"),
                    occurred_at=datetime.now(UTC).isoformat()) for _ in range(n)]
    return screen("ticket.opened", items, now=datetime.now(UTC), max_skew=timedelta(minutes=5),
                  regions=catalogue(), may_send_to=lambda r: True).candidates


async def test_a_write_is_one_statement_with_no_ping_and_no_transaction_round_trips(url):
    engine = make_engine(url, "intake", pool_size=1)
    statements: list[str] = []
    try:
        # A connection's first use of the statement also introspects its array types (once per connection).
        await store_events(engine, "ticket.opened", _candidates(1), "order-system", "corr-db")
        async with engine.connect() as conn:  # the pool's only busy connection: log what it sends from now on
            driver = (await conn.get_raw_connection()).driver_connection
            driver.add_query_logger(lambda q: statements.append(q.query.strip()))
        candidates = _candidates(3)
        ids = [c.item.event_id for c in candidates]

        stored = await store_events(engine, "ticket.opened", candidates, "order-system", "corr-db")
        assert stored == dict.fromkeys(ids)
        assert len(statements) == 1 and statements[0].startswith("WITH incoming AS"), statements

        statements.clear()
        again = await store_events(engine, "ticket.opened", candidates, "order-system", "corr-db")
        assert again == {c.item.event_id: c.fingerprint for c in candidates}
        assert len(statements) == 1, statements
        async with engine.connect() as conn:
            outbox = (await conn.execute(text(
                "SELECT value FROM outbox WHERE convert_from(value, 'UTF8')::jsonb->>'event_id' = ANY(:ids) "
                "ORDER BY id"), {"ids": ids})).scalars().all()
        assert [bytes(v).count(i.encode()) > 0 for v, i in zip(outbox, ids, strict=True)] == [True] * 3
    finally:
        await engine.dispose()


async def test_a_statement_whose_connection_dies_is_sent_once_more_on_a_fresh_connection(url):
    engine = make_engine(url, "intake", pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE SEQUENCE IF NOT EXISTS db_path_attempts"))
        # The first attempt kills its own backend mid-statement (an ambiguous failure, as in a crash).
        (row,) = await fetch_one_shot(engine, "SELECT CASE WHEN nextval('db_path_attempts') = 1 "
                                              "THEN pg_terminate_backend(pg_backend_pid()) ELSE true END AS ok")
        assert row["ok"] is True
        (row,) = await fetch_one_shot(engine, "SELECT last_value FROM db_path_attempts")
        assert row["last_value"] == 2
        # Dying twice is an error for the caller, and the dead connections never return to the pool.
        with pytest.raises(Exception, match="terminat"):
            await fetch_one_shot(engine, "SELECT pg_terminate_backend(pg_backend_pid())")
        (row,) = await fetch_one_shot(engine, "SELECT 1 AS one")
        assert row["one"] == 1
    finally:
        await engine.dispose()


async def _kill_intake_connections(url: str) -> int:
    engine = make_engine(url, "public", pool_size=1)
    try:
        async with engine.connect() as conn:
            killed = (await conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'intake'"))).scalar()
        return int(killed or 0)
    finally:
        await engine.dispose()


async def test_connections_the_server_killed_cost_no_request_and_the_relay_resumes(url, kafka_bootstrap):
    async with running(intake_settings(url, kafka_bootstrap)) as svc:
        _, key = await create_key(svc.engine)
        headers = {"X-API-Key": key}
        watch = await Watch(kafka_bootstrap, ("tickets.v1",)).start()
        try:
            first = sample("ticket.opened", event_id=new_id("kill"), buyer_id=new_id("buyer"))
            r = await svc.client.post("/v1/tickets", json=first, headers=headers)
            assert r.status_code == 202, r.text
            assert await _kill_intake_connections(url) >= 1  # the relay's lock connection at least

            after = [sample("ticket.opened", event_id=new_id("kill"), buyer_id=new_id("buyer")) for _ in range(3)]
            r = await svc.client.post("/v1/tickets", json=after[0], headers=headers)
            assert r.status_code == 202, r.text
            r = await svc.client.post("/v1/tickets/batch", json={"items": after[1:]}, headers=headers)
            assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
            ids = [e["event_id"] for e in [first, *after]]
            assert await received_ids(svc.engine, ids) == set(ids)
            # At least once: a relay cycle cut off between the broker's ack and its DELETE publishes again.
            arrived = await watch.until(ids, timeout=30)
            assert all(arrived[i] for i in ids), {i: len(a) for i, a in arrived.items()}
        finally:
            await watch.stop()


async def test_bursts_reuse_the_pool_instead_of_opening_and_closing_connections(url, kafka_bootstrap):
    async with running(intake_settings(url, kafka_bootstrap, db_pool_size=2)) as svc:
        _, key = await create_key(svc.engine)
        headers = {"X-API-Key": key}
        pool = svc.engine.sync_engine.pool
        opened: list[int] = []
        event.listen(pool, "connect", lambda *_: opened.append(1))

        async def burst(n: int = 40) -> None:
            items = [sample("ticket.opened", event_id=new_id("burst"), buyer_id=new_id("buyer")) for _ in range(n)]
            answers = await asyncio.gather(*(svc.client.post("/v1/tickets", json=i, headers=headers) for i in items))
            assert [a.status_code for a in answers] == [202] * n

        await burst()
        after_first = len(opened)
        for _ in range(3):
            await burst()
        # Overflow connections used to be closed after each burst and opened again by the next one.
        assert len(opened) == after_first
        assert pool.checkedin() + pool.checkedout() <= 4  # the ceiling stays 2 x DB_POOL_SIZE
