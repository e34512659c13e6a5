"""insights settings: the common variables plus its own (``INSIGHTS_`` prefix)."""

from __future__ import annotations

from pydantic import Field

from shared.config import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "insights"
    port: int = Field(8005, ge=1, le=65535, validation_alias="INSIGHTS_PORT")
    consumer_group: str = Field("insights", validation_alias="INSIGHTS_CONSUMER_GROUP",
                                description="Consumer group over every business topic (its own offsets).")
    max_batch: int = Field(
        2000, ge=1, le=10_000, validation_alias="INSIGHTS_MAX_BATCH",
        description="Records per consumer batch: a batch costs a fixed handful of statements, so larger "
                    "batches cost less per event.")
    compact_interval_seconds: float = Field(
        1.0, gt=0, le=300, validation_alias="INSIGHTS_COMPACT_INTERVAL_SECONDS",
        description="How often appended rollup deltas are folded into the rollups (reports read both).")
