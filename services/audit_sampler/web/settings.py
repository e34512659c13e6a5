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
        description="Failed sign-ins of one account from one client (browser known to the account, else "
                    "network address) within the lockout period before that client pauses for that account.")
    signin_client_max_failures: int = Field(
        30, ge=1, le=100_000, validation_alias="AUDIT_SAMPLER_SIGNIN_CLIENT_MAX_FAILURES",
        description="Failed sign-ins from one network address across all accounts within the lockout period "
                    "before the address pauses (known devices are not affected).")
    signin_account_max_failures: int = Field(
        100, ge=1, le=1_000_000, validation_alias="AUDIT_SAMPLER_SIGNIN_ACCOUNT_MAX_FAILURES",
        description="Failed sign-ins of one account from unknown clients within the lockout period before the "
                    "account pauses for unknown clients; browsers it signed in from before still sign in.")
    signin_lockout_seconds: int = Field(
        900, ge=1, le=86_400, validation_alias="AUDIT_SAMPLER_SIGNIN_LOCKOUT_SECONDS",
        description="The window failures are counted in, and how long a reached limit pauses sign-in.")
    device_cookie_days: int = Field(
        90, ge=1, le=730, validation_alias="AUDIT_SAMPLER_DEVICE_COOKIE_DAYS",
        description="How long a browser stays a known device of the account it signed in to.")
