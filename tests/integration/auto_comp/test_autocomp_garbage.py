"""auto_comp's consumers pause the cyclic collector while a batch is in hand (shared CollectorPause), which is
only sound if a batch leaves no cyclic garbage behind: its objects must go by reference counting."""

from __future__ import annotations

import gc

import pytest

from services.auto_comp.app import build_context
from services.auto_comp.config import Settings
from services.auto_comp.handlers import GrantHandler, TicketHandler
from services.auto_comp.store import StrategyStore
from tests.integration.auto_comp.autocomp_support import (
    RULES,
    allowance_requests,
    apply,
    grant,
    late_ticket,
    write_strategies,
)

pytestmark = pytest.mark.integration



async def _decide_and_issue(engine, tickets: TicketHandler, tag: str, n: int) -> None:
    """n tickets of a partition of their own: they wait for its first grant, which issues them all."""
    partition = abs(hash(tag)) % 10_000 + 100
    await apply(engine, tickets, [late_ticket(f"T-{tag}-{i}", f"B-{tag}-{i}") for i in range(n)], partition=partition)
    requests = [r for r in await allowance_requests(engine) if r["payload"]["owner"].endswith(f":{partition}")]
    await apply(engine, GrantHandler(RULES), [grant(r["payload"], 10**9) for r in requests])
    # and n more, issued from it in the tickets' own transaction
    await apply(engine, tickets, [late_ticket(f"T-{tag}-b{i}", f"B-{tag}-b{i}") for i in range(n)], partition=partition)


async def test_a_batch_leaves_no_cyclic_garbage(engine, tmp_path):
    tickets = TicketHandler(StrategyStore(write_strategies(tmp_path)), RULES)
    await _decide_and_issue(engine, tickets, "warm", 5)  # statements compiled and cached once
    was = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        await _decide_and_issue(engine, tickets, "small", 5)
        small = gc.collect()
        await _decide_and_issue(engine, tickets, "large", 100)
        large = gc.collect()
    finally:
        if was:
            gc.enable()
    # What cyclic garbage there is (driver and pool bookkeeping) does not grow with the batch.
    assert large <= small + 20, (small, large)


def test_both_consumers_pause_the_collector(tmp_path):
    settings = Settings(database_url="postgresql+asyncpg://u:p@localhost:1/x",
                        strategies_dir=str(write_strategies(tmp_path)))
    ctx, _ = build_context(settings)
    runners = {r.group_id: r for r in ctx.runners}
    for group in (f"{settings.consumer_group}.tickets", f"{settings.consumer_group}.grants"):
        assert runners[group].pause_gc, group
