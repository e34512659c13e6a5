"""The service's entry point."""

from __future__ import annotations

import gc

import services.auto_comp.__main__ as entry


def test_the_startup_heap_is_frozen_before_the_service_runs(monkeypatch):
    seen: list[int] = []

    def run_cli(**kwargs):
        seen.append(gc.get_freeze_count())
        return 0

    monkeypatch.setattr(entry, "run_cli", run_cli)
    try:
        gc.unfreeze()
        assert entry.main(["serve"]) == 0
        # the long-lived objects are out of every collection the batches trigger
        assert seen and seen[0] > 0
    finally:
        gc.unfreeze()
