"""``python -m services.audit_sampler users create|list|unlock|disable``: manage the people who sign in to the
workbench (the shared ``users`` commands of ``shared.web.cli`` on the workbench's tables and roles)."""

from __future__ import annotations

import argparse

from services.audit_sampler.persistence import workbench as queries
from services.audit_sampler.web.security import WORKBENCH_ROLES
from shared.web.cli import UsersCli
from shared.web.cli import register as register_users

SCHEMA = "audit_sampler"


def _database_url() -> str:
    from services.audit_sampler.config import Settings

    return Settings().database_url


WORKBENCH_USERS = UsersCli(pages="workbench", roles=WORKBENCH_ROLES, store=queries.STORE, schema=SCHEMA,
                           database_url=_database_url, who="auditors, leads, ...")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    register_users(subparsers, WORKBENCH_USERS)
