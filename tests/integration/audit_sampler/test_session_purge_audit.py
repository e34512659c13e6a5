"""Expired workbench sessions are deleted by the service's own periodic job (real service, real PostgreSQL
and broker): the rows of expired sessions disappear, live ones (and signed-out ones not yet expired) stay,
and the purge is counted."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from services.audit_sampler.app import build_app
from services.audit_sampler.config import Settings
from services.audit_sampler.persistence import workbench as queries

pytestmark = pytest.mark.integration

PURGED = "audit_workbench_sessions_purged_total"


def purged_so_far() -> float:
    return REGISTRY.get_sample_value(PURGED) or 0.0


async def test_expired_sessions_are_purged_and_live_ones_stay(audit_database, kafka_bootstrap, topic_factory):
    (manual_topic, corrections) = await topic_factory("manual", "corrections", partitions=1)
    settings = Settings(database_url=audit_database, kafka_bootstrap_servers=kafka_bootstrap,
                        manual_topic=manual_topic, corrections_topic=corrections,
                        consumer_group=f"purge-{manual_topic}", policy_reload_seconds=0,
                        metrics_refresh_seconds=3600, session_purge_seconds=0.2)
    app = build_app(settings)
    ctx = app.state.ctx
    now = datetime.now(UTC)
    # Written before the service starts, so the first round already has something to delete.
    async with ctx.engine.begin() as conn:
        await queries.upsert_user(conn, "pam", None, ["auditor"], ["US"])
        for sid, created, expires in (("expired-1", now - timedelta(hours=9), now - timedelta(hours=1)),
                                      ("expired-2", now - timedelta(days=8), now - timedelta(days=7)),
                                      ("live", now, now + timedelta(hours=8)),
                                      ("signed-out", now, now + timedelta(hours=8))):
            await queries.create_session(conn, sid, "pam", f"csrf-{sid}", created, expires)
        await queries.end_session(conn, "signed-out", now)
    before = purged_so_far()
    await ctx.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            async with ctx.engine.connect() as conn:
                left = set((await conn.execute(text("SELECT id FROM workbench_sessions"))).scalars())
            if purged_so_far() - before >= 2 and left == {"live", "signed-out"}:
                break
            assert time.monotonic() < deadline, f"expired sessions were never purged: {sorted(left)}"
            await asyncio.sleep(0.1)
        async with ctx.engine.connect() as conn:
            assert await queries.live_session(conn, "live", datetime.now(UTC)) is not None
        # a session that expires while the service runs goes in a later round
        async with ctx.engine.begin() as conn:
            await conn.execute(text("UPDATE workbench_sessions SET expires_at = now() - interval '1 second' "
                                    "WHERE id = 'live'"))
        deadline = time.monotonic() + 30
        while True:
            async with ctx.engine.connect() as conn:
                left = set((await conn.execute(text("SELECT id FROM workbench_sessions"))).scalars())
            if left == {"signed-out"} and purged_so_far() - before >= 3:
                break
            assert time.monotonic() < deadline, f"a session expired later was never purged: {sorted(left)}"
            await asyncio.sleep(0.1)
        assert purged_so_far() - before == 3
    finally:
        await ctx.stop()
