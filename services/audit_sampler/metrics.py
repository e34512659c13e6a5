"""audit_sampler's Prometheus metrics (prefix ``audit_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

# ---------------------------------------------------------------- approval stage (issue 14)
REQUESTS = Counter("audit_requests_total", "Compensation requests by step outcome: auto_approved (within the "
                   "authority limits), queued (above them), approved / rejected (by an approver).",
                   ["region", "team", "reason", "outcome"])
REQUEST_DECISION_SECONDS = Histogram(
    "audit_request_decision_seconds", "Time from a request to its approval or rejection.", ["region"],
    buckets=(1, 60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 72 * 3600))
REQUEST_ESCALATIONS = Counter("audit_request_escalations_total", "Requests escalated to senior auditors, by "
                              "whom (approver, or sla when the approval SLA passed).",
                              ["region", "team", "reason", "by"])
REQUEST_OVERRIDES = Counter("audit_request_overrides_total", "Requests above the authority limits that an "
                            "approver approved (the limits overridden).", ["region", "team", "reason"])
ISSUE_MISMATCHES = Counter("audit_issue_mismatches_total", "Manual compensations flagged against their approval: "
                           "above_approved, other_buyer, no_request, not_approved.",
                           ["region", "team", "reason", "mismatch"])
REQUESTS_WAITING = Gauge("audit_requests_waiting", "Requests waiting for an approver, by state "
                         "(awaiting_approval, escalated).", ["region", "state"])
REQUESTS_OVERDUE = Gauge("audit_requests_overdue", "Escalated requests past their escalation SLA.", ["region"])
LIMITS_RELOADS = Counter("audit_limits_reloads_total", "Authority limits reload attempts by result.", ["result"])
ACTIONS_OPEN = Gauge("audit_corrective_actions_open", "Corrective actions open or in progress.", ["region"])
ACTIONS_OVERDUE = Gauge("audit_corrective_actions_overdue", "Open corrective actions past their due date.",
                        ["region"])
