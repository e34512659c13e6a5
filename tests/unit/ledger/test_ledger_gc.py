"""Garbage: a batch's book is freed by reference counting, and the ledger runner pauses the cyclic collector
while batches are in hand (services/ledger/runner.py, ADR 0005)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from ledger_factories import NOW, carrier, manual, payload_of, redeemed, seller

from services.ledger import runner as ledger_runner
from services.ledger.config import Settings
from services.ledger.domain.book import Book
from services.ledger.runner import LedgerRunner
from shared.db import make_engine
from shared.kafka.consumer import ConsumerRunner


def test_a_book_is_freed_without_the_cyclic_collector():
    events = [manual(f"M{i}", 600, shares=[(seller(), 400), (carrier(), 200)]) for i in range(3)]
    events.append(redeemed("M0", 100))  # ignored (not a voucher), still dispatched
    was = gc.isenabled()
    gc.disable()
    try:
        book = Book(now=NOW, deltas=True)
        for e in events:
            book.apply(e, payload_of(e))
        assert len(book.out.transactions) == 6
        gone = weakref.ref(book)
        entry = book.out.transactions[0]
        del book
        assert gone() is None  # freed by reference counting: the book holds no cycle through itself
        assert entry.tx_id.startswith("charge:")
    finally:
        if was:
            gc.enable()


def _runner() -> LedgerRunner:
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x")
    return LedgerRunner(settings=s, engine=make_engine(s.database_url, "ledger"), group_id="g", topics=["t"],
                        handler=None)  # type: ignore[arg-type]


async def test_collector_is_paused_while_any_batch_is_in_hand(monkeypatch):
    seen: list[tuple[str, bool]] = []
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def shared_process(self, records):  # stands in for the shared runner's batch
        seen.append((records[0], gc.isenabled()))
        await gates[records[0]].wait()

    monkeypatch.setattr(ConsumerRunner, "_process", shared_process)
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

    monkeypatch.setattr(ConsumerRunner, "_process", failing)
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

    monkeypatch.setattr(ConsumerRunner, "_process", shared_process)
    monkeypatch.setattr(ledger_runner, "MAX_PAUSE_SECONDS", 0.0)
    monkeypatch.setattr(ledger_runner.gc, "collect", lambda *a: collected.append(1) or 0)
    long = asyncio.create_task(_runner()._process(["long"]))
    await asyncio.sleep(0)
    await _runner()._process(["short"])  # ends while the long one is in hand, pause over the limit
    assert collected == [1] and not gc.isenabled()
    gate.set()
    await long
    assert gc.isenabled()
