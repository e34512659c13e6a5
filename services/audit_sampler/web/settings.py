"""Workbench settings (``AUDIT_SAMPLER_`` prefix), read from the environment next to the service's own."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkbenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    session_ttl_seconds: int = Field(
        8 * 3600, ge=60, le=7 * 86_400, validation_alias="AUDIT_SAMPLER_SESSION_TTL_SECONDS",
        description="A workbench session ends this long after sign-in.")
    cookie_secure: bool = Field(
        False, validation_alias="AUDIT_SAMPLER_COOKIE_SECURE",
        description="Mark the session cookie Secure (HTTPS only); set true whenever the workbench is "
                    "served over HTTPS.")
    trusted_header_auth: bool = Field(
        False, validation_alias="AUDIT_SAMPLER_TRUSTED_HEADER_AUTH",
        description="Trust the user name in AUDIT_SAMPLER_TRUSTED_USER_HEADER (set by an identity proxy) "
                    "instead of passwords. Only behind a proxy that sets that header and strips it from "
                    "clients; roles and regions still come from the workbench users table.")
    trusted_user_header: str = Field(
        "X-Forwarded-User", validation_alias="AUDIT_SAMPLER_TRUSTED_USER_HEADER",
        description="Header carrying the signed-in user name in trusted-header mode.")
    signin_max_failures: int = Field(
        5, ge=1, le=100, validation_alias="AUDIT_SAMPLER_SIGNIN_MAX_FAILURES",
        description="Failed sign-ins in a row before the account is locked for the lockout period.")
    signin_lockout_seconds: int = Field(
        900, ge=1, le=86_400, validation_alias="AUDIT_SAMPLER_SIGNIN_LOCKOUT_SECONDS",
        description="How long an account stays locked after too many failed sign-ins.")
