"""The outbox backlog, counted in the background so the request path only reads a number."""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from services.intake.metrics import OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE
from shared.outbox import backlog
from shared.periodic import PeriodicTask

log = logging.getLogger(__name__)


class BacklogGuard:
    """Refuses new events once ``limit`` rows wait unpublished (the broker has been away too long).

    Between counts, rows this process enqueues are added to the last count, so a burst cannot overshoot
    the limit by more than what other replicas enqueue within one interval.
    """

    def __init__(self, engine: AsyncEngine, limit: int, interval: float) -> None:
        self._engine = engine
        self.limit = limit
        self._interval = interval
        self.count = 0
        self.oldest_age = 0.0
        # A failed count keeps the last one; the database may be back next time.
        self._counter = PeriodicTask("intake-backlog-guard", interval, self.refresh, run_first=False)

    @property
    def full(self) -> bool:
        return self.count >= self.limit

    def note_enqueued(self, rows: int) -> None:
        self.count += rows

    async def refresh(self) -> None:
        async with self._engine.connect() as conn:
            self.count, self.oldest_age = await backlog(conn)
        OUTBOX_BACKLOG.set(self.count)
        OUTBOX_OLDEST_AGE.set(self.oldest_age)

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()
        await self._counter.start()

    async def stop(self) -> None:
        await self._counter.stop()
