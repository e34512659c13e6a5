"""audit_sampler settings: the common variables plus its own (``AUDIT_SAMPLER_`` prefix)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config import ServiceSettings
from shared.contracts.topics import Topic

DEFAULT_POLICY_DIR = str(Path(__file__).with_name("policies"))
DEFAULT_LIMITS_DIR = str(Path(__file__).with_name("authority"))


class Settings(ServiceSettings):
    service_name: str = "audit_sampler"
    port: int = Field(8003, ge=1, le=65535, validation_alias="AUDIT_SAMPLER_PORT")
    policy_dir: str = Field(
        DEFAULT_POLICY_DIR, validation_alias="AUDIT_SAMPLER_POLICY_DIR",
        description="Folder of sampling policy YAML files (one per region plus default.yaml).")
    policy_reload_seconds: float = Field(
        30.0, ge=0, le=3600, validation_alias="AUDIT_SAMPLER_POLICY_RELOAD_SECONDS",
        description="How often changed policy files are re-read (0: only at start); a bad file keeps the "
                    "previous policies and makes /readyz report it.")
    consumer_group: str = Field(
        "audit_sampler", validation_alias="AUDIT_SAMPLER_CONSUMER_GROUP",
        description="Kafka consumer group of the manual-compensation consumer.")
    manual_topic: str = Field(
        Topic.MANUAL_COMPENSATIONS.value, validation_alias="AUDIT_SAMPLER_MANUAL_TOPIC",
        description="Topic of manual compensations to sample.")
    corrections_topic: str = Field(
        Topic.AUDIT_CORRECTIONS.value, validation_alias="AUDIT_SAMPLER_CORRECTIONS_TOPIC",
        description="Topic audit corrections are published to (through the outbox).")
    metrics_refresh_seconds: float = Field(
        15.0, gt=0, le=3600, validation_alias="AUDIT_SAMPLER_METRICS_REFRESH_SECONDS",
        description="How often queue depth / oldest age gauges are recomputed from the database.")
    session_purge_seconds: float = Field(
        3600.0, gt=0, le=86_400, validation_alias="AUDIT_SAMPLER_SESSION_PURGE_SECONDS",
        description="How often expired workbench sessions are deleted (they stop working at expiry "
                    "whatever this is; the purge only keeps the table from growing).")
    limits_dir: str = Field(
        DEFAULT_LIMITS_DIR, validation_alias="AUDIT_SAMPLER_LIMITS_DIR",
        description="Folder of agent authority limit YAML files (one per region; a region without one "
                    "delegates no authority: every request waits for an approver).")
    requests_topic: str = Field(
        Topic.COMPENSATION_REQUESTS.value, validation_alias="AUDIT_SAMPLER_REQUESTS_TOPIC",
        description="Topic of compensation requests to judge against the authority limits.")
    requests_consumer_group: str = Field(
        "audit_sampler_requests", validation_alias="AUDIT_SAMPLER_REQUESTS_CONSUMER_GROUP",
        description="Kafka consumer group of the compensation-request consumer.")
    escalation_check_seconds: float = Field(
        60.0, gt=0, le=3600, validation_alias="AUDIT_SAMPLER_ESCALATION_CHECK_SECONDS",
        description="How often requests past their approval SLA are escalated to senior auditors.")
