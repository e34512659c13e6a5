"""Helpers of insights' integration tests: events, applying them through the real handler and database."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from services.insights.handlers import RollupHandler
from shared.contracts import events as ev
from shared.contracts.registry import LATEST, make_envelope
from shared.db import make_engine, migrate
from shared.kafka import Delivered
from shared.regions import catalogue

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "insights" / "migrations"
_offsets = itertools.count()


async def insights_engine(url: str):  # type: ignore[no-untyped-def]
    await migrate(url, "insights", MIGRATIONS)
    return make_engine(url, "insights", pool_size=4)


def tz_of() -> dict[str, str]:
    return {code: catalogue().get(code).timezone for code in catalogue().codes()}


def delivered(event_type: str, payload: ev.Payload, *, region: str, at: datetime, event_id: str) -> Delivered:
    env = make_envelope(event_type, payload, source="test", region=region, occurred_at=at, event_id=event_id)
    return Delivered(env, payload, LATEST[event_type].topic.value, 0, next(_offsets), None, 0)


async def apply(engine: Any, batch: Sequence[Delivered]) -> None:
    handler = RollupHandler(tz_of())
    async with engine.begin() as conn:
        await handler(conn, batch)
