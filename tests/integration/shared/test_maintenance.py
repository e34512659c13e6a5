from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db import make_engine, migrate
from shared.maintenance import list_dead_letters, replay_dead_letter, trim_processed_events

pytestmark = pytest.mark.integration
MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "intake" / "migrations"


@pytest.fixture(scope="module")
async def engine(fresh_database):
    await migrate(fresh_database, "chores", MIGRATIONS)
    eng = make_engine(fresh_database, "chores")
    yield eng
    await eng.dispose()


async def test_trim_removes_only_records_past_retention(engine):
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO processed_events (consumer_group, event_id, processed_at) VALUES "
            "('g', 'old-1', now() - interval '40 days'), ('g', 'old-2', now() - interval '31 days'), "
            "('g', 'recent', now() - interval '2 days')"))
    assert await trim_processed_events(engine, retention_days=30, chunk=1) == 2
    async with engine.connect() as conn:
        left = (await conn.execute(text("SELECT event_id FROM processed_events"))).scalars().all()
    assert left == ["recent"]


async def test_replay_puts_the_original_bytes_back_on_the_source_topic(engine):
    async with engine.begin() as conn:
        await conn.execute(text(
            'INSERT INTO dead_letters (consumer_group, topic, partition, "offset", key, value, headers, error) '
            "VALUES ('g', 'tickets.v1', 2, 17, 'B1', :v, CAST(:h AS jsonb), 'boom')"),
            {"v": b'{"x":1}', "h": '[["event_type", "ticket.opened"], ["dlq.error", "boom"]]'})
    (listed,) = await list_dead_letters(engine)
    assert listed["error"] == "boom" and listed["offset"] == 17
    assert await replay_dead_letter(engine, listed["id"]) == "tickets.v1"
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT topic, key, value, headers FROM outbox"))).one()
    assert row[0] == "tickets.v1" and bytes(row[1]) == b"B1" and bytes(row[2]) == b'{"x":1}'
    assert row[3] == [["event_type", "ticket.opened"]]  # dlq.* headers are not replayed
    with pytest.raises(KeyError):
        await replay_dead_letter(engine, 999_999)
