"""Metrics every service shares (Prometheus naming: ``comp_`` prefix, base units, ``_total`` counters)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMER_RECORDS = Counter(
    "comp_consumer_records_processed_total", "Records handled by a consumer runner (incl. duplicates).",
    ["group", "topic"])
CONSUMER_DUPLICATES = Counter(
    "comp_consumer_records_duplicate_total", "Records skipped because their event id was already processed.",
    ["group", "topic"])
CONSUMER_FAILED = Counter(
    "comp_consumer_records_failed_total", "Handler attempts that raised (retried or dead-lettered).",
    ["group", "topic"])
CONSUMER_DEAD_LETTERED = Counter(
    "comp_consumer_records_dead_lettered_total", "Records sent to the dead-letter topic.", ["group", "topic"])
CONSUMER_BATCH_SECONDS = Histogram(
    "comp_consumer_batch_duration_seconds", "Time to handle and commit one batch.", ["group"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CONSUMER_BATCH_SIZE = Histogram(
    "comp_consumer_batch_records", "Records per handled batch.", ["group"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000))
CONSUMER_LAG = Gauge(
    "comp_consumer_lag",
    "Records not processed yet: the partition end (high watermark or last record fetched + 1, the larger) "
    "minus the next offset of record.", ["group", "topic", "partition"])
CONSUMER_TRANSIENT_RETRIES = Counter(
    "comp_consumer_transient_retries_total", "Batch retries after a transient (database/broker) error.",
    ["group"])
CONSUMER_COMMIT_FAILURES = Counter(
    "comp_consumer_kafka_commit_failures_total",
    "Kafka offset commits that failed (harmless: offsets of record live in the database).", ["group"])

OUTBOX_BACKLOG = Gauge("comp_outbox_backlog", "Outbox rows not yet published.", ["service"])
OUTBOX_OLDEST_AGE = Gauge("comp_outbox_oldest_age_seconds", "Age of the oldest unpublished row.", ["service"])
OUTBOX_PUBLISHED = Counter("comp_outbox_published_total", "Outbox rows published to Kafka.", ["service", "topic"])
OUTBOX_PUBLISH_SECONDS = Histogram(
    "comp_outbox_publish_latency_seconds", "From outbox insert to broker acknowledgement.", ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
OUTBOX_PUBLISH_ERRORS = Counter("comp_outbox_publish_errors_total", "Failed publish attempts.", ["service"])

HTTP_REQUESTS = Counter("comp_http_requests_total", "HTTP requests.", ["service", "method", "route", "status"])
HTTP_SECONDS = Histogram(
    "comp_http_request_duration_seconds", "HTTP request latency.", ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
