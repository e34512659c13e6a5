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
    allowance_lease_seconds: int = Field(
        60, ge=5, le=3600, validation_alias="LEDGER_ALLOWANCE_LEASE_SECONDS",
        description="How long a budget allowance grant may be spent (no later than the period's end); "
                    "auto_comp asks for more before then while it spends (ADR 0012).")
    allowance_share_percent: int = Field(
        10, ge=1, le=100, validation_alias="LEDGER_ALLOWANCE_SHARE_PERCENT",
        description="Beyond what waiting tickets need, a grant takes at most this percent of the room left "
                    "under the limit and the pace line, so grants shrink as the budget nears its limit.")
    allowance_period_end_percent: int = Field(
        1, ge=0, le=100, validation_alias="LEDGER_ALLOWANCE_PERIOD_END_PERCENT",
        description="Near the period's end, outstanding allowances are kept within this percent of the budget "
                    "(beyond what waiting tickets need): the most unspent allowance a period can end with.")
    allowance_retry_seconds: int = Field(
        5, ge=1, le=3600, validation_alias="LEDGER_ALLOWANCE_RETRY_SECONDS",
        description="After a denial for an exhausted budget, auto_comp asks again no sooner than this "
                    "(returns and raised limits can free room); paced denials say when the pace allows more.")
    allowance_min_seconds: int = Field(
        15, ge=1, le=3600, validation_alias="LEDGER_ALLOWANCE_MIN_SECONDS",
        description="Nothing is granted for a period closer than this to its end (auto_comp, which closes "
                    "allowances AUTO_COMP_ALLOWANCE_SAFETY_SECONDS early, moves on to the next period).")
    allowance_overdue_seconds: int = Field(
        300, ge=1, validation_alias="LEDGER_ALLOWANCE_OVERDUE_SECONDS",
        description="An allowance still not returned this long after its expiry counts as overdue "
                    "(ledger_allowances_overdue; auto_comp returns them, any replica can).")
    consumer_group: str = Field("ledger", validation_alias="LEDGER_CONSUMER_GROUP")
    books_max_batch: int = Field(
        2000, ge=1, le=10_000, validation_alias="LEDGER_BOOKS_MAX_BATCH",
        description="Records per batch of the books group (charges, lifecycle, corrections). Each batch "
                    "pays a fixed set of statements and a commit, and locks its budget rows only at the "
                    "end, so larger batches cost less per charge; budget requests keep CONSUMER_MAX_BATCH.")
