"""Intake's Prometheus metrics. Outbox publish latency is the toolkit's
``comp_outbox_publish_latency_seconds{service="intake"}``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_ACCEPTED = Counter(
    "intake_events_accepted_total", "Events stored and queued for publishing.", ["event_type", "region"])
EVENTS_DUPLICATE = Counter(
    "intake_events_duplicate_total", "Events re-sent with an event id and content already on record.",
    ["event_type", "region"])
EVENTS_REJECTED = Counter(
    "intake_events_rejected_total",
    "Events refused; reason: schema, unknown_region, currency, clock_skew, forbidden_region, conflict.",
    ["event_type", "region", "reason"])
REQUESTS_REFUSED = Counter(
    "intake_requests_refused_total",
    "Whole requests refused before their items were read; reason: unauthorized, forbidden_event_type, "
    "rate_limited, backlog_full, malformed, database_unavailable.", ["event_type", "reason"])
REQUEST_SECONDS = Histogram(
    "intake_request_duration_seconds", "Latency of event submissions, from first byte to response.",
    ["route"], buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
BATCH_ITEMS = Histogram(
    "intake_batch_items", "Items per batch request.", ["event_type"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000))
OUTBOX_BACKLOG = Gauge("intake_outbox_backlog", "Unpublished outbox rows, as last counted.")
OUTBOX_OLDEST_AGE = Gauge("intake_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row.")
IDEMPOTENCY_PURGED = Counter(
    "intake_idempotency_records_purged_total", "Event ids forgotten after INTAKE_IDEMPOTENCY_RETENTION_DAYS.")
