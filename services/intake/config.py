"""Intake settings: the common variables plus intake's own (``INTAKE_`` prefix)."""

from __future__ import annotations

from pydantic import Field

from shared.config import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "intake"
    port: int = Field(8001, ge=1, le=65535, validation_alias="INTAKE_PORT")
    max_body_bytes: int = Field(
        4_194_304, ge=1024, description="HTTP request body limit (413 above it); intake's default fits a "
                                        "1,000-item batch of manual compensations with evidence.")
    max_clock_skew_seconds: int = Field(
        300, ge=0, le=86_400, validation_alias="INTAKE_MAX_CLOCK_SKEW_SECONDS",
        description="How far in the future an event's timestamps may lie (producers' clocks drift).")
    max_outbox_backlog: int = Field(
        100_000, ge=1, validation_alias="INTAKE_MAX_OUTBOX_BACKLOG",
        description="Unpublished outbox rows above which intake answers 503 with Retry-After.")
    backlog_check_seconds: float = Field(
        1.0, gt=0, le=60, validation_alias="INTAKE_BACKLOG_CHECK_SECONDS",
        description="How often the outbox backlog is counted (the request path reads the cached count).")
    retry_after_seconds: int = Field(
        5, ge=1, le=3600, validation_alias="INTAKE_RETRY_AFTER_SECONDS",
        description="Retry-After sent with 503 when the outbox backlog is full.")
    api_key_cache_seconds: float = Field(
        5.0, ge=0, le=600, validation_alias="INTAKE_API_KEY_CACHE_SECONDS",
        description="How long an API key lookup is cached; a revocation takes effect within this time.")
    api_key_cache_size: int = Field(
        10_000, ge=1, validation_alias="INTAKE_API_KEY_CACHE_SIZE",
        description="Upper bound of cached API key lookups (memory stays flat under junk keys).")
    max_batch_items: int = Field(
        1000, ge=1, le=10_000, validation_alias="INTAKE_MAX_BATCH_ITEMS",
        description="Most items accepted in one batch request.")
    idempotency_retention_days: int = Field(
        30, ge=1, le=3650, validation_alias="INTAKE_IDEMPOTENCY_RETENTION_DAYS",
        description="How long event ids are remembered; a retry older than this is accepted as new "
                    "(consumers still deduplicate by event id).")
    housekeeping_interval_seconds: float = Field(
        300.0, gt=0, validation_alias="INTAKE_HOUSEKEEPING_INTERVAL_SECONDS",
        description="How often expired idempotency records are purged.")
