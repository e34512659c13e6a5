"""Forgets event ids past the idempotency retention, so the table does not grow without bound."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.metrics import IDEMPOTENCY_PURGED
from services.intake.persistence import purge_received

log = logging.getLogger(__name__)


class IdempotencyPurger:
    def __init__(self, engine: AsyncEngine, retention: timedelta, interval: float) -> None:
        self._engine = engine
        self._retention = retention
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

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
        self._task = asyncio.create_task(self._run(), name="intake-idempotency-purger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception as exc:  # retried next round; accepting events does not depend on it
                log.warning("purging old idempotency records failed", extra={"error": str(exc)})
            await asyncio.sleep(self._interval)
