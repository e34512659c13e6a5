"""Process-level runtime tuning every service shares: the start-up heap kept out of the cyclic collector.

A started service holds a large, long-lived heap (framework, driver, models, contracts). Every full collection
walks it again, which cost about a fifth of a batch's CPU (intake's batch path, the ledger and auto_comp
consumers, insights' rollups). Freezing what exists once start-up is done keeps it out of every later
collection. The per-batch collector pause of the consumers lives with the runner (``shared.kafka.consumer``).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect once, then move every surviving object to the permanent generation."""
    gc.collect()
    gc.freeze()


class FreezeHeapAfterStartup:
    """The same as a service component: the last one started, so everything long-lived exists by then."""

    async def start(self) -> None:
        freeze_startup_heap()

    async def stop(self) -> None:
        gc.unfreeze()
