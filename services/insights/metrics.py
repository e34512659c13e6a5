"""insights' Prometheus metrics (prefix ``insights_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("insights_events_consumed_total", "Events applied to the records and rollups, by event type.",
                 ["event_type"])
NEWEST_EVENT = Gauge("insights_newest_event_timestamp_seconds",
                     "occurred_at of the newest event applied, per topic (its age is the rollups' lag behind "
                     "the business).", ["topic"])
BATCH_SECONDS = Histogram("insights_batch_seconds", "Time to apply one consumer batch (records and deltas).",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
DELTA_ROWS = Counter("insights_delta_rows_written_total", "Pre-aggregated rollup delta rows appended.")
COMPACTED_ROWS = Counter("insights_compacted_rows_total", "Rollup rows written by the compactor.")
DELTA_BACKLOG = Gauge("insights_delta_rows_pending", "Delta rows not yet folded into the rollups.")
LAST_COMPACTION = Gauge("insights_last_compaction_timestamp_seconds", "When the compactor last finished a pass.")
REPORT_SECONDS = Histogram("insights_report_seconds", "Time to answer a read (report, breakdown, series, burndown).",
                           ["kind"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5))

_newest: dict[str, float] = {}


def note_newest(topic: str, at: float) -> None:
    """Only ever moves forward: a late event does not make the rollups look older than they are."""
    if at > _newest.get(topic, 0.0):
        _newest[topic] = at
        NEWEST_EVENT.labels(topic).set(at)
SPIKES = Counter("insights_spikes_detected_total",
                 "Spike alerts stored (each published once as insight.spike_detected), by region, dimension "
                 "(reason, carrier, seller) and kind (spike, shift).", ["region", "dimension", "kind"])
SPIKE_EPISODES_OPEN = Gauge("insights_spike_episodes_open",
                            "Spike episodes whose last alert is on the region's last complete local day.",
                            ["region", "dimension"])
SPIKE_SERIES_JUDGED = Gauge("insights_spike_series_judged",
                            "Series the last detector round judged, per region and dimension: those over the "
                            "volume pre-filter whose judged days are new or counted differently since this replica "
                            "last judged them.", ["region", "dimension"])
SPIKE_ROUND_SECONDS = Histogram("insights_spike_round_seconds", "Time of one spike detector round (every region).",
                                buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
LAST_SPIKE_ROUND = Gauge("insights_spike_last_round_timestamp_seconds",
                         "When the spike detector last finished a round (on the replica holding the round's lock).")

# Strategy returns (services/insights/returns.py)
RETURN_EXPOSURES = Counter(
    "insights_return_exposures_total", "Live issued and holdout decisions recorded for strategy returns (a "
    "re-delivered decision is not counted again).", ["region", "outcome"])
BUYER_ORDERS = Counter(
    "insights_buyer_orders_total", "Buyer orders stored for strategy returns (a re-delivered order is not "
    "counted again).", ["region"])
BUYER_ORDERS_PURGED = Counter(
    "insights_buyer_orders_purged_total", "Buyer orders deleted by the retention task (older than the return "
    "window plus the margin).")

# Budget usage monitoring (services/insights/budget_watch.py)
BUDGET_EXHAUSTION = Gauge("insights_budget_projected_exhaustion_timestamp_seconds",
                          "Start of the local day a region's budget limit is reached at the current period's "
                          "average daily usage so far (may lie after the period end); absent without a limit or "
                          "usage.", ["region", "period"])
BUDGET_PERIOD_END = Gauge("insights_budget_period_end_timestamp_seconds",
                          "End of the region's current budget period (local midnight after its last day).",
                          ["region", "period"])
