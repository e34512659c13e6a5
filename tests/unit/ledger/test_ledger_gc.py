"""Garbage: a batch's book is freed by reference counting, so pausing the cyclic collector while batches are
in hand (shared CollectorPause, ADR 0005) loses nothing; the ledger's runners pause it."""

from __future__ import annotations

import gc
import weakref

from services.ledger.app import build_app
from services.ledger.config import Settings
from services.ledger.domain.book import Book
from tests.unit.ledger.ledger_factories import NOW, carrier, manual, payload_of, redeemed, seller


def test_a_book_is_freed_without_the_cyclic_collector():
    events = [manual(f"M{i}", 600, shares=[(seller(), 400), (carrier(), 200)]) for i in range(3)]
    events.append(redeemed("M0", 100))  # ignored (not a voucher), still dispatched
    was = gc.isenabled()
    gc.disable()
    try:
        book = Book(now=NOW, deltas=True)
        for e in events:
            book.apply(e, payload_of(e))
        book.finish()
        assert len(book.out.transactions) == 4  # three charges, one budget posting for the batch
        gone = weakref.ref(book)
        entry = book.out.transactions[0]
        del book
        assert gone() is None  # freed by reference counting: the book holds no cycle through itself
        assert entry.tx_id.startswith("charge:")
    finally:
        if was:
            gc.enable()


def test_ledger_runners_pause_the_collector_and_decode_with_the_shared_codec():
    s = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x")
    runners = build_app(s, housekeeping=False).state.ctx.runners
    assert runners and all(r.pause_gc and r.decoder is None for r in runners)
