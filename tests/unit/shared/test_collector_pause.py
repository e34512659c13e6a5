"""The consumer runner's CollectorPause: the cyclic collector rests while any pausing runner's batch is in
hand, comes back when none is (also after a failure), still collects now and then when batches overlap, and
is never switched on against someone else's choice."""

from __future__ import annotations

import asyncio
import gc

import pytest

from shared.config import CommonSettings
from shared.db import make_engine
from shared.kafka import consumer
from shared.kafka.consumer import ConsumerRunner


def _runner() -> ConsumerRunner:
    s = CommonSettings(database_url="postgresql+asyncpg://u:p@localhost:1/x")
    return ConsumerRunner(settings=s, engine=make_engine(s.database_url, "test"), group_id="g", topics=["t"],
                          handler=None, pause_gc=True)  # type: ignore[arg-type]


async def test_collector_is_paused_while_any_batch_is_in_hand(monkeypatch):
    seen: list[tuple[str, bool]] = []
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def shared_process(self, records):  # stands in for the batch's work
        seen.append((records[0], gc.isenabled()))
        await gates[records[0]].wait()

    monkeypatch.setattr(ConsumerRunner, "_process_batch", shared_process)
    assert gc.isenabled()
    a, b = _runner(), _runner()
    first = asyncio.create_task(a._process(["a"]))
    await asyncio.sleep(0)
    second = asyncio.create_task(b._process(["b"]))
    await asyncio.sleep(0)
    assert seen == [("a", False), ("b", False)]
    gates["a"].set()
    await first
    assert not gc.isenabled()  # b's batch is still in hand
    gates["b"].set()
    await second
    assert gc.isenabled()


async def test_collector_comes_back_after_a_failed_batch_and_is_not_switched_on_for_others(monkeypatch):
    async def failing(self, records):
        raise RuntimeError("boom")

    monkeypatch.setattr(ConsumerRunner, "_process_batch", failing)
    with pytest.raises(RuntimeError):
        await _runner()._process(["x"])
    assert gc.isenabled()
    gc.disable()  # someone else's choice: a batch must not undo it
    try:
        with pytest.raises(RuntimeError):
            await _runner()._process(["x"])
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_overlapping_batches_still_collect_now_and_then(monkeypatch):
    collected: list[int] = []
    gate = asyncio.Event()

    async def shared_process(self, records):
        if records[0] == "long":
            await gate.wait()

    monkeypatch.setattr(ConsumerRunner, "_process_batch", shared_process)
    monkeypatch.setattr(consumer.COLLECTOR_PAUSE, "max_pause_seconds", 0.0)
    monkeypatch.setattr(consumer.gc, "collect", lambda *a: collected.append(1) or 0)
    long = asyncio.create_task(_runner()._process(["long"]))
    await asyncio.sleep(0)
    await _runner()._process(["short"])  # ends while the long one is in hand, pause over the limit
    assert collected == [1] and not gc.isenabled()
    gate.set()
    await long
    assert gc.isenabled()


async def test_runners_without_the_option_leave_the_collector_alone(monkeypatch):
    states: list[bool] = []

    async def record(self, records):
        states.append(gc.isenabled())

    monkeypatch.setattr(ConsumerRunner, "_process_batch", record)
    runner = _runner()
    runner.pause_gc = False
    await runner._process(["x"])
    assert states == [True]
