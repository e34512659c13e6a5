"""auto_comp settings: the common variables plus the service's own (``AUTO_COMP_`` prefix)."""

from __future__ import annotations

from pathlib import Path

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
    saga_timeout_seconds: float = Field(
        60.0, gt=0, validation_alias="AUTO_COMP_SAGA_TIMEOUT_SECONDS",
        description="A budget reservation unanswered for this long is requested again (same reservation id).")
    saga_check_interval_seconds: float = Field(
        30.0, gt=0, validation_alias="AUTO_COMP_SAGA_CHECK_INTERVAL_SECONDS",
        description="How often the saga task looks for unanswered reservations.")
    reservation_hold_days: int = Field(
        7, ge=1, le=365, validation_alias="AUTO_COMP_RESERVATION_HOLD_DAYS",
        description="Expiry of a reservation for store credit (vouchers use their own validity).")
    consumer_group: str = Field("auto_comp", validation_alias="AUTO_COMP_CONSUMER_GROUP")
    tickets_topic: str = Field(Topic.TICKETS.value, validation_alias="AUTO_COMP_TICKETS_TOPIC")
    budget_results_topic: str = Field(Topic.BUDGET_RESULTS.value, validation_alias="AUTO_COMP_BUDGET_RESULTS_TOPIC")
