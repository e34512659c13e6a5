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
    spike_interval_seconds: float = Field(
        900.0, ge=0, le=86_400, validation_alias="INSIGHTS_SPIKE_INTERVAL_SECONDS",
        description="How often the spike detector judges the day series (0: never, e.g. for a read-only "
                    "replica); each round judges the last complete local days again.")
    spike_lookback_days: int = Field(
        3, ge=1, le=31, validation_alias="INSIGHTS_SPIKE_LOOKBACK_DAYS",
        description="Complete local days whose alerts a round stores (and publishes, once): late events can "
                    "still raise an alert for a day this many days back.")
    spike_history_weeks: int = Field(
        65, ge=5, le=120, validation_alias="INSIGHTS_SPIKE_HISTORY_WEEKS",
        description="Weeks of day buckets read per series: 52 for the seasonal baseline and 13 for the "
                    "scale and the CUSUM to settle (docs/insights-detection.md).")
