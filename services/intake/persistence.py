"""Intake's tables: idempotency records (with the outbox rows they release) and API keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.intake.domain.items import payload_of
from services.intake.domain.keys import ApiKey
from services.intake.domain.screening import Candidate
from shared.contracts.codec import codec, json_time
from shared.contracts.envelope import new_event_id
from shared.db import fetch_one_shot
from shared.outbox import Record, headers_json

# One statement, run as its own transaction, is a whole request's write: it claims every new event id,
# puts the events it claimed in the outbox (so an accepted event and its outbox row commit together, and
# an event id claimed earlier never gets a second row), and reads the fingerprints of the ids already on
# record. The main query's snapshot predates both INSERTs, so ids claimed here show a NULL fingerprint. Ids
# are claimed in sorted order so that two requests sharing ids in different orders wait on each other,
# never deadlock; outbox rows are inserted in request order, the order the relay publishes them in.
# One round trip instead of five (pool pre-ping, BEGIN, claim, outbox insert, COMMIT).
_STORE = """
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::jsonb[])
        WITH ORDINALITY AS t(event_id, fingerprint, topic, key, value, headers, n)),
claimed AS (
    INSERT INTO received_events (event_id, event_type, fingerprint)
    SELECT event_id, $7::text, fingerprint FROM incoming ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id),
queued AS (
    INSERT INTO outbox (topic, key, value, headers)
    SELECT i.topic, i.key, i.value, i.headers FROM incoming i JOIN claimed c ON c.event_id = i.event_id
    ORDER BY i.n)
SELECT i.event_id, c.event_id IS NOT NULL AS claimed, r.fingerprint
FROM incoming i
LEFT JOIN claimed c ON c.event_id = i.event_id
LEFT JOIN received_events r ON r.event_id = i.event_id"""

_FINGERPRINTS = "SELECT event_id, fingerprint FROM received_events WHERE event_id = ANY($1::text[])"


def outbox_records(event_type: str, candidates: Sequence[Candidate], source: str, produced_at: datetime,
                   correlation_id: str) -> list[Record]:
    """The Kafka records of accepted items: topic, partition key and headers as the contract defines.

    The items were fully validated already, so their records are written by the contract's codec from
    the items' JSON (``EventCodec.record``) without building the models again; this halves the batch path's
    CPU. An item without a correlation id of its own carries ``correlation_id``, the request's (its
    ``X-Correlation-Id``, or the one intake gave the request and logged it with).
    """
    encoder = codec(event_type)
    produced = json_time(produced_at)
    return [encoder.record(payload_of(c.data), event_id=c.item.event_id, occurred_at=c.data["occurred_at"],
                           produced_at=produced, source=source, region=c.item.region,
                           correlation_id=c.item.correlation_id or correlation_id, traceparent=c.item.traceparent,
                           payload_object=c.item)
            for c in candidates]


def outbox_record(event_type: str, candidate: Candidate, source: str, produced_at: datetime,
                  correlation_id: str | None = None) -> Record:
    """One item's record (see ``outbox_records``)."""
    return outbox_records(event_type, [candidate], source, produced_at, correlation_id or new_event_id())[0]


async def store_events(engine: AsyncEngine, event_type: str, candidates: Sequence[Candidate],
                       source: str, correlation_id: str) -> dict[str, str | None]:
    """Record each new event id and put its event in the outbox, atomically, in one statement.

    Returns event id -> None when stored now, or the fingerprint already on record. Candidates must have
    distinct event ids (screening guarantees it). The statement is idempotent, which lets
    ``fetch_one_shot`` send it again after a lost connection: an event stored by the lost attempt then
    reads as already on record with its own fingerprint (a duplicate, never a second outbox row).
    """
    if not candidates:
        return {}
    records = outbox_records(event_type, candidates, source, datetime.now(UTC), correlation_id)
    rows = await fetch_one_shot(
        engine, _STORE,
        [c.item.event_id for c in candidates], [c.fingerprint for c in candidates],
        [r[0] for r in records], [r[1] for r in records], [r[2] for r in records],
        [headers_json(r[3]) for r in records], event_type)
    stored: dict[str, str | None] = {}
    unseen: list[str] = []
    for event_id, claimed, previous in rows:
        if claimed:
            stored[event_id] = None
        elif previous is None:
            unseen.append(event_id)  # committed by a concurrent request after our snapshot
        else:
            stored[event_id] = previous
    if unseen:
        for event_id, previous in await fetch_one_shot(engine, _FINGERPRINTS, unseen):
            stored[event_id] = previous
    return stored


async def purge_received(conn: AsyncConnection, older_than: datetime, limit: int = 10_000) -> int:
    """Forget up to ``limit`` event ids received before ``older_than`` (small chunks keep locks short)."""
    result = await conn.execute(text(
        "DELETE FROM received_events WHERE event_id IN (SELECT event_id FROM received_events "
        "WHERE received_at < :before ORDER BY received_at LIMIT :n)"), {"before": older_than, "n": limit})
    return int(result.rowcount)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ API keys

_KEY_COLUMNS = ("key_id, system_name, key_hash, regions, event_types, rate_limit_per_second, created_at, "
                "revoked_at")


def _api_key(row: Any) -> ApiKey:
    return ApiKey(key_id=row.key_id, system_name=row.system_name, key_hash=row.key_hash,
                  regions=frozenset(row.regions), event_types=frozenset(row.event_types),
                  rate_limit_per_second=row.rate_limit_per_second, created_at=row.created_at,
                  revoked_at=row.revoked_at)


async def insert_api_key(conn: AsyncConnection, *, key_id: str, system_name: str, key_hash: str,
                         regions: Sequence[str], event_types: Sequence[str], rate_limit_per_second: int) -> None:
    await conn.execute(text(
        "INSERT INTO api_keys (key_id, system_name, key_hash, regions, event_types, rate_limit_per_second) "
        "VALUES (:key_id, :system_name, :key_hash, CAST(:regions AS text[]), CAST(:event_types AS text[]), "
        ":rate)"), {"key_id": key_id, "system_name": system_name, "key_hash": key_hash,
                    "regions": list(regions), "event_types": list(event_types), "rate": rate_limit_per_second})


async def get_api_key(conn: AsyncConnection, key_id: str) -> ApiKey | None:
    row = (await conn.execute(text(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = :k"),
                              {"k": key_id})).first()
    return None if row is None else _api_key(row)


async def list_api_keys(conn: AsyncConnection) -> list[ApiKey]:
    rows = (await conn.execute(text(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at"))).all()
    return [_api_key(r) for r in rows]


async def revoke_api_key(conn: AsyncConnection, key_id: str, at: datetime) -> bool:
    """True when the key existed and was active until now."""
    result = await conn.execute(text(
        "UPDATE api_keys SET revoked_at = :at WHERE key_id = :k AND revoked_at IS NULL"), {"k": key_id, "at": at})
    return bool(result.rowcount)  # type: ignore[attr-defined]
