"""insights settings: the common variables plus its own (``INSIGHTS_`` prefix)."""

from __future__ import annotations

from pathlib import Path

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
    budget_watch_seconds: float = Field(
        300.0, ge=0, le=86_400, validation_alias="INSIGHTS_BUDGET_WATCH_SECONDS",
        description="How often each region's current budget period is projected at its pace so far (the "
                    "exhaustion gauges behind the InsightsBudgetExhaustsBeforePeriodEnd alert; 0: never).")
    market_dir: str = Field(
        "", validation_alias="INSIGHTS_MARKET_DIR",
        description="Folder of the per-region market reference files (<REGION>.yaml); empty: the samples "
                    "shipped in services/insights/market.")
    # ---------------------------------------------------------------- dashboard pages (/dashboard)
    # The same sign-in as the audit workbench (shared.web), on insights' own users, sessions and counters.
    session_ttl_seconds: int = Field(
        8 * 3600, ge=60, le=7 * 86_400, validation_alias="INSIGHTS_SESSION_TTL_SECONDS",
        description="A dashboard session ends this long after sign-in.")
    cookie_secure: bool = Field(
        False, validation_alias="INSIGHTS_COOKIE_SECURE",
        description="Mark the dashboard's cookies Secure (HTTPS only); set true whenever it is served over HTTPS.")
    trusted_header_auth: bool = Field(
        False, validation_alias="INSIGHTS_TRUSTED_HEADER_AUTH",
        description="Trust the user name in INSIGHTS_TRUSTED_USER_HEADER (set by an identity proxy) instead of "
                    "passwords. Only behind a proxy that sets that header and strips it from clients; roles and "
                    "regions still come from the dashboard users table.")
    trusted_user_header: str = Field(
        "X-Forwarded-User", validation_alias="INSIGHTS_TRUSTED_USER_HEADER",
        description="Header carrying the signed-in user name in trusted-header mode.")
    signin_max_failures: int = Field(
        5, ge=1, le=100, validation_alias="INSIGHTS_SIGNIN_MAX_FAILURES",
        description="Failed sign-ins of one account from one client within the lockout period before that "
                    "client pauses for that account.")
    signin_client_max_failures: int = Field(
        30, ge=1, le=100_000, validation_alias="INSIGHTS_SIGNIN_CLIENT_MAX_FAILURES",
        description="Failed sign-ins from one network address across all accounts within the lockout period "
                    "before the address pauses (known devices are not affected).")
    signin_account_max_failures: int = Field(
        100, ge=1, le=1_000_000, validation_alias="INSIGHTS_SIGNIN_ACCOUNT_MAX_FAILURES",
        description="Failed sign-ins of one account from unknown clients within the lockout period before the "
                    "account pauses for unknown clients; browsers it signed in from before still sign in.")
    signin_lockout_seconds: int = Field(
        900, ge=1, le=86_400, validation_alias="INSIGHTS_SIGNIN_LOCKOUT_SECONDS",
        description="The window failures are counted in, and how long a reached limit pauses sign-in.")
    device_cookie_days: int = Field(
        90, ge=1, le=730, validation_alias="INSIGHTS_DEVICE_COOKIE_DAYS",
        description="How long a browser stays a known device of the account it signed in to.")
    session_purge_seconds: float = Field(
        3600.0, gt=0, le=86_400, validation_alias="INSIGHTS_SESSION_PURGE_SECONDS",
        description="How often expired dashboard sessions and spent sign-in counters are deleted.")
    dashboard_trend_periods: int = Field(
        6, ge=2, le=24, validation_alias="INSIGHTS_DASHBOARD_TREND_PERIODS",
        description="Periods the overview's trend charts show: the chosen period and the ones before it, of "
                    "the same kind (months, ISO weeks, days, or ranges of the same length).")
    returns_consumer_group: str = Field(
        "insights-returns", validation_alias="INSIGHTS_RETURNS_CONSUMER_GROUP",
        description="Consumer group over decisions.v1 and buyer.orders.v1 for strategy returns (its own "
                    "offsets, so an order backlog never delays the reports).")
    return_window_days: int = Field(
        30, ge=1, le=365, validation_alias="INSIGHTS_RETURN_WINDOW_DAYS",
        description="A buyer's later orders count toward a strategy's return for this many days after the "
                    "decision (the ticket's time).")
    return_min_group: int = Field(
        30, ge=1, le=1_000_000, validation_alias="INSIGHTS_RETURN_MIN_GROUP",
        description="Fewest buyers (windows elapsed) each of the treated and holdout groups needs before a "
                    "return is compared.")
    return_retention_margin_days: int = Field(
        90, ge=1, le=3650, validation_alias="INSIGHTS_RETURN_RETENTION_MARGIN_DAYS",
        description="Buyer orders are kept for the return window plus this margin; decisions older than "
                    "margin + window can no longer be measured (reported as beyond retention).")
    return_retention_interval_seconds: float = Field(
        3600.0, gt=0, le=86_400, validation_alias="INSIGHTS_RETURN_RETENTION_INTERVAL_SECONDS",
        description="How often the retention task deletes buyer orders past the window and margin.")
    scorecard_thresholds_file: str = Field(
        str(Path(__file__).with_name("thresholds") / "scorecard.yaml"),
        validation_alias="INSIGHTS_SCORECARD_THRESHOLDS_FILE",
        description="Per-region thresholds of the strategy scorecard's verdicts (validated at start-up).")
