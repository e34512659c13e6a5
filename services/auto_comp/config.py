"""auto_comp settings: the common variables plus the service's own (``AUTO_COMP_`` prefix)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.config import ServiceSettings
from shared.contracts.topics import Topic

SHIPPED_STRATEGIES = Path(__file__).with_name("strategies")


class Settings(ServiceSettings):
    service_name: str = "auto_comp"
    port: int = Field(8002, ge=1, le=65535, validation_alias="AUTO_COMP_PORT")
    strategies_dir: Path = Field(
        SHIPPED_STRATEGIES, validation_alias="AUTO_COMP_STRATEGIES_DIR",
        description="Directory (or single file) of strategy YAML files; reloaded on SIGHUP or the admin "
                    "endpoint.")
    budget_period: Literal["month", "day"] = Field(
        "month", validation_alias="AUTO_COMP_BUDGET_PERIOD",
        description="Budget period of the allowances it asks for: the ledger's LEDGER_BUDGET_PERIOD (a "
                    "mismatch gets every request denied as no_budget).")
    allowance_safety_seconds: float = Field(
        5.0, gt=0, le=300, validation_alias="AUTO_COMP_ALLOWANCE_SAFETY_SECONDS",
        description="Spending from an allowance stops this long before it expires (or its period ends), which "
                    "absorbs clock differences with the ledger; the last seconds of a period spend from the "
                    "next period's allowance.")
    allowance_horizon_seconds: float = Field(
        30.0, gt=0, le=3600, validation_alias="AUTO_COMP_ALLOWANCE_HORIZON_SECONDS",
        description="A request for more asks for what this long takes at the rate the allowance was spent "
                    "(the ledger caps it by the budget's room and LEDGER_ALLOWANCE_SHARE_PERCENT).")
    allowance_check_seconds: float = Field(
        1.0, gt=0, validation_alias="AUTO_COMP_ALLOWANCE_CHECK_SECONDS",
        description="How often the keeper closes expired allowances (any replica's, a killed instance's "
                    "too), re-sends unanswered requests and finishes tickets left waiting.")
    grant_timeout_seconds: float = Field(
        10.0, gt=0, validation_alias="AUTO_COMP_GRANT_TIMEOUT_SECONDS",
        description="A request the ledger has not answered for this long is sent again (same request, the "
                    "ledger answers it once).")
    consumer_group: str = Field("auto_comp", validation_alias="AUTO_COMP_CONSUMER_GROUP")
    tickets_topic: str = Field(Topic.TICKETS.value, validation_alias="AUTO_COMP_TICKETS_TOPIC")
    grants_topic: str = Field(Topic.BUDGET_GRANTS.value, validation_alias="AUTO_COMP_GRANTS_TOPIC")
    vouchers_topic: str = Field(
        Topic.VOUCHER_LIFECYCLE.value, validation_alias="AUTO_COMP_VOUCHERS_TOPIC",
        description="Voucher redemptions, expiries and revocations, shown on the decision of the voucher they "
                    "close (consumer group <AUTO_COMP_CONSUMER_GROUP>-vouchers).")
