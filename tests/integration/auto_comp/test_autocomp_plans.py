"""Hot statements whose cost must not grow with the tables: checked by what PostgreSQL reads, not by time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from services.auto_comp import persistence
from tests.integration.auto_comp.autocomp_support import NOW, autocomp_engine

pytestmark = pytest.mark.integration

OTHER_BUYERS = 50_000


@pytest.fixture(scope="module")
async def engine(fresh_database):
    engine = await autocomp_engine(fresh_database)
    async with engine.begin() as conn:
        # Compensations of other buyers, in the same time window: what a buyer's history must not read.
        await conn.execute(text(
            "INSERT INTO compensations (compensation_id, ticket_id, strategy_id, strategy_version, "
            "order_id, scenario, buyer_id, region, reason, kind, currency, status, requested_minor, "
            "liability_rule, shares, expires_at, ticket_occurred_at, partition, pacing_percent) "
            "SELECT 'ac-' || i, 'T-' || i, 'us-late', 1, 'O-' || i, 'late_delivery', 'B-' || i, "
            "'US', 'late_delivery', 'voucher', 'USD', CASE WHEN i % 2 = 0 THEN 'pending' ELSE 'issued' END, "
            "500, 'otherwise', '[]', CAST(:at AS timestamptz) + interval '7 days', "
            "CAST(:at AS timestamptz) - (i % 100) * interval '1 minute', i % 4, 10 "
            "FROM generate_series(1, :n) AS i"), {"at": NOW, "n": OTHER_BUYERS})
    yield engine
    await engine.dispose()


class Explaining:
    """A connection that runs each statement, then runs it again under EXPLAIN ANALYZE and keeps the plan."""

    def __init__(self, conn):
        self.conn = conn
        self.plans: list[dict] = []

    async def execute(self, statement, params=None):
        result = await self.conn.execute(statement, params)
        plan = (await self.conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + statement.text), params)).scalar_one()
        self.plans.append(plan[0]["Plan"])
        return result


def rows_read(plan: dict, table: str) -> int:
    """Rows the plan's scans of ``table`` produced or filtered out, over all their loops."""
    n = 0
    if plan.get("Relation Name") == table:
        n += (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * plan["Actual Loops"]
    return n + sum(rows_read(p, table) for p in plan.get("Plans", []))


@pytest.mark.parametrize("nestloop", ["on", "off"])
async def test_buyer_history_reads_only_the_buyers_rows(engine, nestloop):
    # enable_nestloop=off stands for statistics that make a hash join look cheaper (a table that grew since
    # it was last analyzed): the plan that read every compensation in the window once per batch.
    buyers = [("US", "B-2"), ("US", "B-3"), ("US", "B-nobody")]
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL enable_nestloop = {nestloop}"))
        explaining = Explaining(conn)
        history = await persistence.buyer_history(explaining, buyers, NOW - timedelta(days=30),  # type: ignore[arg-type]
                                                  NOW + timedelta(days=1))
        read = sum(rows_read(plan, "compensations") for plan in explaining.plans)
    assert {k: [(g.occurred_at, g.amount.minor) for g in v] for k, v in history.items()} == {
        ("US", "B-2"): [(NOW - timedelta(minutes=2), 500)],
        ("US", "B-3"): [(NOW - timedelta(minutes=3), 500)],
        ("US", "B-nobody"): [],
    }
    assert read <= 10 * len(buyers), f"read {read} compensation rows for {len(buyers)} buyers"


@pytest.mark.parametrize("settle", ["issue", "deny"])
async def test_waiting_compensations_settle_by_primary_key_whatever_the_backlog(engine, settle):
    async with engine.connect() as conn:
        trans = await conn.begin()
        try:
            # Statistics taken when nothing was pending, then a backlog of waiting compensations: the
            # state of a service whose allowance requests wait for the ledger under load.
            await conn.execute(text("UPDATE compensations SET status = 'issued', issued_minor = 500"))
            await conn.execute(text("ANALYZE compensations"))
            await conn.execute(text(
                "UPDATE compensations SET status = 'pending', issued_minor = NULL, "
                "expires_at = now() + interval '1 day' WHERE right(compensation_id, 1) IN ('0', '2', '4', '6', '8')"))
            explaining = Explaining(conn)
            ids = ["ac-2", "ac-4"]
            if settle == "issue":
                done = await persistence.mark_issued(explaining, [  # type: ignore[arg-type]
                    {"compensation_id": c, "ticket_id": "T" + c[2:], "issued_minor": 500, "voucher_code": None,
                     "budget_period": "2026-11", "allowance_id": "al-1", "valid_until": None, "detail": "issued"}
                    for c in ids])
            else:
                done = await persistence.mark_denied(explaining, [  # type: ignore[arg-type]
                    {"compensation_id": c, "ticket_id": "T" + c[2:], "outcome": "budget_denied",
                     "denial_reason": "exhausted", "budget_period": "2026-11", "detail": "denied"} for c in ids])
            # (EXPLAIN ANALYZE ran each statement a second time, which found them settled and changed nothing.)
            read = sum(rows_read(plan, "compensations") for plan in explaining.plans[:1])
            status = (await conn.execute(text(
                "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE compensation_id "
                "= ANY(CAST(:ids AS text[])) AND status = :s) FROM compensations"),
                {"ids": ids, "s": "issued" if settle == "issue" else "denied"})).one()
        finally:
            await trans.rollback()
    assert done == set(ids)
    assert tuple(status) == (OTHER_BUYERS // 2 - 2, 2)
    assert read <= 10 * len(ids), f"read {read} compensation rows to settle {len(ids)}"


async def test_the_waiting_check_of_a_batch_reads_no_issued_compensation(engine):
    """Locking a batch's allowances also asks whether tickets of their keys wait: an index probe into the
    waiting ones, never a read of the issued ones (every voucher of the service)."""
    async with engine.connect() as conn:
        trans = await conn.begin()
        try:
            await conn.execute(text("UPDATE compensations SET status = 'issued', issued_minor = 500"))
            await conn.execute(text(
                "INSERT INTO allowances (allowance_id, region, period, partition, pacing_percent, currency, owner, "
                "status, close_at) SELECT 'al-' || p, 'US', '2026-11', p, 10, 'USD', 'plan', 'open', now() "
                "FROM generate_series(0, 3) AS p"))
            await conn.execute(text("ANALYZE compensations"))
            explaining = Explaining(conn)
            _, found = await persistence.lock_allowances(  # type: ignore[arg-type]
                explaining, keys=[("US", "2026-11", p, 10) for p in range(4)])
            read = sum(rows_read(plan, "compensations") for plan in explaining.plans)
        finally:
            await trans.rollback()
    assert len(found) == 4 and not any(a.waiting for a in found.values())
    assert read == 0, f"read {read} compensation rows to see that none waits"
