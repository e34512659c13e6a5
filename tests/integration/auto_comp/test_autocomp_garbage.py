"""auto_comp's consumers pause the cyclic collector while a batch is in hand (shared CollectorPause), which is
only sound if a batch leaves no cyclic garbage behind: its objects must go by reference counting."""

from __future__ import annotations

import gc

import pytest
from autocomp_support import answer, apply, late_ticket, requests_for, write_strategies

from services.auto_comp.app import build_context
from services.auto_comp.config import Settings
from services.auto_comp.handlers import BudgetResultHandler, TicketHandler
from services.auto_comp.store import StrategyStore

pytestmark = pytest.mark.integration



async def _decide_and_issue(engine, tickets: TicketHandler, tag: str, n: int) -> None:
    await apply(engine, tickets, [late_ticket(f"T-{tag}-{i}", f"B-{tag}-{i}") for i in range(n)])
    answers = []
    for i in range(n):
        [request] = await requests_for(engine, f"T-{tag}-{i}")
        answers.append(answer(request["payload"], reserved=request["payload"]["amount"]["amount_minor"]))
    await apply(engine, BudgetResultHandler(), answers)


async def test_a_batch_leaves_no_cyclic_garbage(engine, tmp_path):
    tickets = TicketHandler(StrategyStore(write_strategies(tmp_path)))
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
    for group in (f"{settings.consumer_group}.tickets", f"{settings.consumer_group}.budget"):
        assert runners[group].pause_gc, group
