"""Settings from environment variables (pydantic-settings). Each service subclasses ``ServiceSettings``.

Common variables have no prefix (``DATABASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS``, ...); a service's own
ones carry its prefix (``INTAKE_``, ``AUTO_COMP_``, ``AUDIT_SAMPLER_``, ``LEDGER_``). The README's
configuration table lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres:@/postgres?host=.local/pg"
# Values that appeared in this repository's history as defaults; anyone can read them.
PUBLISHED_SECRETS = frozenset({"dev-only-insecure-token-secret-change-me"})


class MissingSetting(ValueError):
    """A variable the command at hand needs is not set (``variable: message``, never a value)."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


def absolute_socket_dir(url: str) -> str:
    """``?host=.local/pg`` made absolute against the working directory.

    libpq and asyncpg read a host that starts with ``/`` as a Unix-socket folder and anything else as a
    host name, so the local stack's relative default would be looked up in DNS. Operator commands run from
    the repository root, where `make up` keeps the socket."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    changed = [(k, str(Path(v).resolve()) if k == "host" and "/" in v and not v.startswith("/") else v)
               for k, v in query]
    if changed == query:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(changed, safe="/"), parts.fragment))


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


class CommonSettings(BaseSettings):
    """Variables every service reads."""

    # hide_input_in_errors: a startup error names the variable but never echoes its value (DATABASE_URL
    # carries a password, AUTH_TOKEN_SECRET is one).
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True,
                                      hide_input_in_errors=True)

    database_url: str = Field(DEFAULT_DATABASE_URL, description="SQLAlchemy asyncpg URL of PostgreSQL.")
    db_pool_size: int = Field(10, ge=1, le=200)
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    kafka_enable_idempotence: bool = Field(
        False, description="Idempotent producer; enable on real Kafka (the embedded broker lacks InitProducerId).")
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "zstd", description="none, gzip, snappy, lz4 or zstd (zstd: gzip's size for a fraction of its CPU)")
    kafka_topic_partitions: int = Field(4, ge=1, le=1024)
    # The relay queues a whole batch before it awaits, so records batch without lingering; a linger would
    # only add its length to every hop.
    kafka_linger_ms: int = Field(0, ge=0, le=1_000, description="Producer linger (ms) before sending a batch.")
    kafka_client_id_prefix: str = "comp"
    # No default: a public default would let anyone who read this file sign tokens for every region. It is
    # required by what signs or verifies tokens (`serve`, `python -m shared token`; `require_token_secret`),
    # not by operator commands that only touch the database or files. `make up` generates one per checkout
    # (.local/auth_token_secret).
    auth_token_secret: SecretStr | None = Field(
        None, description="HMAC key for signed bearer tokens; shared by all services of a stack; >= 32 characters.")
    auth_token_issuer: str = "compensation-platform"  # noqa: S105 - an issuer name, not a secret
    log_level: str = "INFO"
    log_json: bool = True
    log_events_percent: float = Field(
        100.0, ge=0, le=100,
        description="Percent of correlation ids whose requests, decisions and denials are logged at INFO, "
                    "chosen by a hash of the id so one ticket's lines are all in or all out in every service.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="HTTP request body limit (413 above it).")
    outbox_poll_interval_ms: int = Field(20, ge=1, le=10_000)
    outbox_batch_size: int = Field(500, ge=1, le=10_000)
    consumer_max_batch: int = Field(500, ge=1, le=10_000)
    consumer_poll_timeout_ms: int = Field(50, ge=1, le=10_000)
    # The embedded (Tansu) broker holds a fetch for its wait even when records arrive meanwhile, so this
    # wait is paid by every hop of the pipeline at low load; real Kafka answers as soon as data arrives.
    consumer_fetch_max_wait_ms: int = Field(
        20, ge=1, le=10_000, description="Longest a fetch waits at the broker for records (latency per hop on "
                                         "brokers that hold the fetch; more idle fetches when lower).")
    consumer_kafka_commit_interval_ms: int = Field(
        1_000, ge=0, le=600_000, description="Least time between a consumer's advisory Kafka offset commits "
                                             "(offsets of record are in the database); 0 after every batch.")
    consumer_prefetch: bool = Field(
        True, description="Fetch and decode the next batch while the current one is written (at most one ahead).")
    consumer_processes: int = Field(
        1, ge=1, le=64, description="Processes that run a service's consumers (serve starts the extra ones, "
                                    "consumers only; one per core scales a CPU-bound consumer).")
    consumer_session_timeout_ms: int = Field(
        10_000, ge=6_000, le=300_000,
        description="A dead consumer's partitions move after this long (group joins on the embedded broker "
                    "also wait half of it).")
    processed_events_retention_days: int = Field(
        30, ge=1, le=3650, description="How long consumers remember processed event ids (>= topic retention).")
    regions_file: str | None = Field(None, description="Region catalogue YAML replacing the shipped one.")

    @field_validator("auth_token_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < 32:
            raise ValueError("AUTH_TOKEN_SECRET must be at least 32 characters (openssl rand -base64 32)")
        if secret in PUBLISHED_SECRETS:
            raise ValueError("AUTH_TOKEN_SECRET is a value published in this repository; generate your own")
        return value

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            value = "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("DATABASE_URL must be a postgresql:// or postgresql+asyncpg:// URL")
        return absolute_socket_dir(value)

    def require_token_secret(self) -> str:
        """The token secret, for what signs or verifies tokens; a clear error when it is not set."""
        if self.auth_token_secret is None:
            raise MissingSetting("AUTH_TOKEN_SECRET", "required, not set")
        return self.auth_token_secret.get_secret_value()


class ServiceSettings(CommonSettings):
    """Base of each service's settings: adds the HTTP bind address and port."""

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
