"""A background chore run every ``interval`` seconds while a service is up (a ServiceContext component).

A failing round is logged and retried next round: chores (gauges, purges, reloads, sweeps) must never
take the service down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class PeriodicTask:
    def __init__(self, name: str, interval: float, step: Callable[[], Awaitable[Any]], *,
                 run_first: bool = True) -> None:
        self.name, self.interval, self.step, self.run_first = name, interval, step, run_first
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        if not self.run_first:
            await asyncio.sleep(self.interval)
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(f"{self.name} failed; retrying next round", extra={"error": str(exc)}, exc_info=True)
            await asyncio.sleep(self.interval)
