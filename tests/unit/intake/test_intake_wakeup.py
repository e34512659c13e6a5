"""The relay is woken at once after a quiet spell, and at most once per interval under load."""

import asyncio

from services.intake.wakeup import CoalescedWake


async def test_first_commit_wakes_at_once_later_ones_share_one_wake_per_interval():
    wakes: list[float] = []
    loop = asyncio.get_running_loop()
    wake = CoalescedWake(lambda: wakes.append(loop.time()), interval=0.05)

    started = loop.time()
    wake()
    assert len(wakes) == 1  # quiet until now: no delay
    for _ in range(20):  # a burst of commits within the interval
        wake()
        await asyncio.sleep(0.001)
    assert len(wakes) == 1
    await asyncio.sleep(0.08)
    assert len(wakes) == 2  # one deferred wake for the whole burst, one interval after the first
    assert wakes[1] - started >= 0.05 - 0.005

    await asyncio.sleep(0.06)
    wake()
    assert len(wakes) == 3  # quiet again for longer than the interval: at once
    await asyncio.sleep(0.08)
    assert len(wakes) == 3  # nothing was pending
