"""The workbench's roles and user rules over the shared password, token and user helpers
(``shared.web.security``: scrypt hashes, session ids, CSRF tokens)."""

from __future__ import annotations

from shared.web.security import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    USERNAME,
    NewUser,
    UserError,
    check_password,
    dummy_hash,
    hash_password,
    new_csrf_token,
    new_device_id,
    new_session_id,
    same_token,
    verify_password,
)
from shared.web.security import validate_user as validate_any_user

WORKBENCH_ROLES = ("auditor", "senior_auditor", "lead", "ops_admin")
LEAD_ROLES = ("lead", "ops_admin")
AUDIT_ROLES = ("auditor", "senior_auditor", "lead", "ops_admin")

__all__ = ["AUDIT_ROLES", "LEAD_ROLES", "MAX_PASSWORD", "MIN_PASSWORD", "USERNAME", "WORKBENCH_ROLES", "NewUser",
           "UserError", "check_password", "dummy_hash", "hash_password", "new_csrf_token", "new_device_id",
           "new_session_id", "same_token", "validate_user", "verify_password"]


def validate_user(username: str, roles: list[str], regions: list[str]) -> NewUser:
    """Check a user's name, roles (workbench roles only) and region grants (catalogue codes or ``*``)."""
    return validate_any_user(username, roles, regions, allowed_roles=WORKBENCH_ROLES, pages="workbench")
