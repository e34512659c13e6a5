"""audit_sampler's Prometheus metrics (prefix ``audit_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

POPULATION = Counter("audit_population_total", "Manual compensations recorded in the population.",
                     ["region"])
SAMPLED = Counter("audit_sampled_total", "Compensations sampled for audit, by region and reason.",
                  ["region", "reason"])
CAPACITY_DROPPED = Counter("audit_capacity_dropped_total",
                           "Sampled compensations dropped because a queue-day was over capacity.",
                           ["region", "queue"])
QUEUE_DEPTH = Gauge("audit_queue_depth", "Items waiting (queued or with an expired lease).",
                    ["region", "queue"])
QUEUE_CLAIMED = Gauge("audit_queue_claimed", "Items under a live lease.", ["region", "queue"])
QUEUE_OLDEST_AGE = Gauge("audit_queue_oldest_age_seconds", "Age of the oldest waiting item.",
                         ["region", "queue"])
QUEUE_SLA_SECONDS = Gauge("audit_queue_sla_seconds", "The queue's SLA target in its policy (alerts compare the "
                          "oldest waiting item's age with it).", ["region", "queue"])
QUEUE_SLA_BREACHED = Gauge("audit_queue_sla_breached", "Waiting or claimed items past their SLA target.",
                           ["region", "queue"])
VERDICTS = Counter("audit_verdicts_total", "Verdicts by item kind and outcome.",
                   ["region", "item_kind", "outcome"])
VERDICT_ATTRIBUTE_FAILURES = Counter("audit_verdict_attribute_failures_total",
                                     "Failed Compensation Quality Audit attributes.", ["region", "attribute"])
CORRECTIONS = Counter("audit_corrections_total", "Audit corrections enqueued for the ledger.",
                      ["region", "kind"])
DISPUTES = Counter("audit_disputes_total", "Disputes raised and resolved.", ["region", "event"])
CALIBRATION_AGREEMENT = Gauge("audit_calibration_agreement_ratio",
                              "Share of attributes on which double audits agreed (last 30 days).",
                              ["region"])
GOLD_ACCURACY = Gauge("audit_gold_accuracy_ratio", "Share of gold items scored as the known answer "
                      "(last 30 days).", ["region"])
ESTIMATED_ACCURACY = Gauge("audit_estimated_accuracy_ratio",
                           "Horvitz-Thompson estimate of compensation accuracy (last 30 days).", ["region"])
POLICY_RELOADS = Counter("audit_policy_reloads_total", "Policy reload attempts by result.", ["result"])
