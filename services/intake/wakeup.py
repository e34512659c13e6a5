"""Waking the outbox relay after a commit, without waking it for every single request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class CoalescedWake:
    """Calls ``wake`` at once when it has not been called for ``interval`` seconds, else once at the end
    of that interval (however many commits happened meanwhile).

    Each relay cycle (read the batch, produce it, wait for the broker's acks, delete the rows) costs about
    as much CPU as half a single-event request, in intake and in PostgreSQL alike; waking the relay on
    every commit made it run a cycle every few milliseconds under load (120 cycles/s at 300 req/s, against
    50 with no wake-up at all; about a fifth of intake's CPU per request). With ``interval`` set to the
    relay's own poll interval, a busy intake publishes at the relay's poll rhythm, and a quiet one still
    at once: a wake-up adds no delay, its absence at most ``interval``.
    """

    def __init__(self, wake: Callable[[], None], interval: float) -> None:
        self._wake = wake
        self._interval = interval
        self._last = float("-inf")
        self._pending: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._pending is not None:
            return  # a wake is already due: it publishes this commit too
        if now - self._last >= self._interval:
            self._fire()
        else:
            self._pending = loop.call_at(self._last + self._interval, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = asyncio.get_running_loop().time()
        self._wake()
