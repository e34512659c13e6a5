"""``python -m services.insights users create|add|list|unlock|disable``: the people who sign in to the
dashboard (the workbench's ``users`` commands, ``shared.web.cli``, on insights' own tables and roles)."""

from __future__ import annotations

import argparse

from services.insights.web.auth import DASHBOARD_ROLES, STORE
from shared.web.cli import UsersCli
from shared.web.cli import register as register_users


def _database_url() -> str:
    from services.insights.config import Settings

    return Settings().database_url


DASHBOARD_USERS = UsersCli(pages="dashboard", roles=DASHBOARD_ROLES, store=STORE, schema="insights",
                           database_url=_database_url, who="strategy managers, finance, ops, leads")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    register_users(subparsers, DASHBOARD_USERS)
