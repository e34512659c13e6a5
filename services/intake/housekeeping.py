"""Forgets event ids past the idempotency retention, so the table does not grow without bound."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.metrics import IDEMPOTENCY_PURGED
from services.intake.persistence import purge_received
from shared.periodic import PeriodicTask

log = logging.getLogger(__name__)


class IdempotencyPurger:
    def __init__(self, engine: AsyncEngine, retention: timedelta, interval: float) -> None:
        self._engine = engine
        self._retention = retention
        self._interval = interval
        # Retried next round on failure: accepting events does not depend on it.
        self._purger = PeriodicTask("intake-idempotency-purger", interval, self.purge)

    async def purge(self, now: datetime | None = None) -> int:
        """Purge in chunks until nothing expired is left; returns how many ids were forgotten."""
        cutoff = (now or datetime.now(UTC)) - self._retention
        total = 0
        while True:
            async with self._engine.begin() as conn:
                deleted = await purge_received(conn, cutoff)
            total += deleted
            IDEMPOTENCY_PURGED.inc(deleted)
            if deleted == 0:
                return total

    async def start(self) -> None:
        await self._purger.start()

    async def stop(self) -> None:
        await self._purger.stop()
