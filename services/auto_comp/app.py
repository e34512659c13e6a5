"""auto_comp's app: ticket, grant and voucher-lifecycle consumers, the allowance keeper, strategy reload on
SIGHUP, and the HTTP API. (A strategy's return is measured by insights since issue 15, ADR 0020.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import timedelta
from typing import cast

from aiokafka import TopicPartition
from fastapi import FastAPI

from services.auto_comp.api import build_router
from services.auto_comp.config import Settings
from services.auto_comp.handlers import AllowanceKeeper, GrantHandler, Rules, TicketHandler, close_partitions
from services.auto_comp.store import StrategyStore
from services.auto_comp.vouchers import VoucherLifecycleHandler
from shared.auth import Authenticator
from shared.config import ServiceSettings
from shared.service import ServiceContext, create_app

log = logging.getLogger(__name__)


class ReloadOnSighup:
    """``kill -HUP <pid>`` reloads the strategy files (the admin endpoint does the same)."""

    def __init__(self, store: StrategyStore) -> None:
        self.store = store
        self._installed = False

    async def start(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread / OS
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.store.reload)
            self._installed = True

    async def stop(self) -> None:
        if self._installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._installed = False


def build_context(settings: Settings) -> tuple[ServiceContext, StrategyStore]:
    store = StrategyStore(settings.strategies_dir)
    ctx = ServiceContext.create("auto_comp", "auto_comp", settings)
    rules = Rules(group=f"{settings.consumer_group}.tickets", granularity=settings.budget_period,
                  safety=timedelta(seconds=settings.allowance_safety_seconds),
                  horizon=timedelta(seconds=settings.allowance_horizon_seconds))

    async def close_allowances(partitions: list[TopicPartition], why: str) -> None:
        # A partition's allowance belongs to its owner: returned when the partition moves or the consumer
        # stops (the batch in hand has committed by then), so its next owner starts from a fresh grant.
        if await close_partitions(ctx.engine, rules, [tp.partition for tp in partitions], why):
            ctx.relay.wake()

    # The cyclic collector rests while a batch is in hand (shared CollectorPause): a batch's objects are
    # freed by reference counting (a test holds the handlers to that), and collections during a batch only
    # walked them again (about a tenth of the process's CPU under load, with the startup heap frozen).
    ctx.add_consumer(rules.group, [settings.tickets_topic], TicketHandler(store, rules), pause_gc=True,
                     on_revoke=close_allowances)
    ctx.add_consumer(f"{settings.consumer_group}.grants", [settings.grants_topic], GrantHandler(rules),
                     pause_gc=True)
    ctx.components.append(AllowanceKeeper(ctx.engine, rules, interval=settings.allowance_check_seconds,
                                          grant_timeout=settings.grant_timeout_seconds,
                                          on_enqueued=ctx.relay.wake))
    ctx.components.append(ReloadOnSighup(store))
    ctx.warnings.append(store.strategies)
    # What became of each issued voucher, for the decision record: a group of its own, off the hot path.
    ctx.add_consumer(f"{settings.consumer_group}-vouchers", [settings.vouchers_topic], VoucherLifecycleHandler())
    return ctx, store


def build_app(settings: ServiceSettings | None = None, *, manage_lifecycle: bool = True) -> FastAPI:
    settings = cast(Settings, settings) if settings is not None else Settings()
    ctx, store = build_context(settings)
    app = create_app(ctx, title="auto_comp", manage_lifecycle=manage_lifecycle,
                     description="Automatic compensation: strategies, decisions, budget allowances.",
                     openapi_tags=[{"name": "decisions"}, {"name": "strategies"}])
    app.state.store = store
    app.include_router(build_router(ctx.engine, Authenticator(ctx.tokens), store))
    return app
