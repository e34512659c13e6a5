"""The relay is woken at once after a quiet spell, and at most once per interval under load.

The event loop runs on a clock the test moves, so each step is exact and nothing waits on the wall clock
to show that a wake did not happen."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from shared.outbox import CoalescedWake


def on_test_clock(scenario: Callable[[Callable[[float], Awaitable[None]]], Awaitable[None]]) -> None:
    loop = asyncio.new_event_loop()
    now = [1000.0]
    loop.time = lambda: now[0]  # type: ignore[method-assign]

    async def advance(seconds: float) -> None:
        now[0] += seconds
        for _ in range(3):  # let every timer now due run
            await asyncio.sleep(0)

    try:
        loop.run_until_complete(scenario(advance))
    finally:
        loop.close()


def test_first_commit_wakes_at_once_later_ones_share_one_wake_per_interval():
    async def scenario(advance: Callable[[float], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        wakes: list[float] = []
        wake = CoalescedWake(lambda: wakes.append(loop.time()), interval=0.05)
        started = loop.time()
        wake()
        assert wakes == [started]  # quiet until now: no delay
        for _ in range(20):  # a burst of commits within the interval
            wake()
            await advance(0.001)
        assert len(wakes) == 1  # 20 ms of the 50 ms interval have passed: the deferred wake is not due
        await advance(0.03)
        assert wakes == pytest.approx([started, started + 0.05])  # one deferred wake for the burst, at the interval

        await advance(0.06)
        wake()
        assert len(wakes) == 3  # quiet again for longer than the interval: at once
        await advance(0.08)
        assert len(wakes) == 3  # nothing was pending, so nothing more fires

    on_test_clock(scenario)
