"""Ledger settings: the common variables plus the ledger's own (``LEDGER_`` prefix)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.config import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "ledger"
    port: int = Field(8004, ge=1, le=65535, validation_alias="LEDGER_PORT")
    budget_period: Literal["month", "day"] = Field(
        "month", validation_alias="LEDGER_BUDGET_PERIOD",
        description="Budget period, cut in the region's time zone: calendar month or day.")
    balance_stripes: int = Field(
        8, ge=1, le=256, validation_alias="LEDGER_BALANCE_STRIPES",
        description="Sub-balances per hot account, so parallel consumers do not queue on one row.")
    park_seconds: int = Field(
        3600, ge=0, le=30 * 86_400, validation_alias="LEDGER_PARK_SECONDS",
        description="How long an event that arrived before its compensation waits before dead-lettering.")
    voucher_grace_seconds: int = Field(
        86_400, ge=0, validation_alias="LEDGER_VOUCHER_GRACE_SECONDS",
        description="After a voucher's validity (or an unissued reservation's expiry) plus this grace, "
                    "a still-pending reservation is voided by the sweeper.")
    housekeeping_interval_seconds: float = Field(
        10.0, gt=0, validation_alias="LEDGER_HOUSEKEEPING_INTERVAL_SECONDS",
        description="Sweeper period: void stale reservations, retry parked events, refresh budget gauges.")
    invariant_interval_seconds: float = Field(
        300.0, gt=0, validation_alias="LEDGER_INVARIANT_INTERVAL_SECONDS",
        description="How often the invariant checker runs in the service and updates its metric.")
    consumer_group: str = Field("ledger", validation_alias="LEDGER_CONSUMER_GROUP")
    books_max_batch: int = Field(
        2000, ge=1, le=10_000, validation_alias="LEDGER_BOOKS_MAX_BATCH",
        description="Records per batch of the books group (charges, lifecycle, corrections). Each batch "
                    "pays a fixed set of statements and a commit, and locks its budget rows only at the "
                    "end, so larger batches cost less per charge; budget requests keep CONSUMER_MAX_BATCH.")
