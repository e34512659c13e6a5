"""auto_comp's Prometheus metrics (prefix ``auto_comp_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

DECISIONS = Counter(
    "auto_comp_decisions_total", "Decisions of record by region, strategy and outcome ('none' when no "
    "strategy applied); shadow strategies count under mode=shadow. A ticket waiting for a budget allowance "
    "is counted once it is issued or denied.", ["region", "strategy", "outcome", "mode"])
ISSUED_AMOUNT = Counter(
    "auto_comp_issued_amount_minor_total", "Amount issued, in minor units of the currency.",
    ["region", "currency"])
ISSUED = Counter("auto_comp_issued_total", "Compensations issued.", ["region", "strategy", "kind"])
DECISION_LATENCY = Histogram(
    "auto_comp_decision_latency_seconds", "From the ticket's acceptance upstream (envelope produced_at) to "
    "its decision being written.", ["region"], buckets=_LATENCY)
BATCH_SECONDS = Histogram(
    "auto_comp_decision_batch_seconds", "Time to decide one batch of tickets (handler only).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
END_TO_END = Histogram(
    "auto_comp_ticket_to_voucher_seconds", "From the ticket's occurred_at to the compensation being issued.",
    ["region"], buckets=(*_LATENCY, 900, 3600, 86_400))
CONFIG_INFO = Gauge(
    "auto_comp_strategy_config_info", "1 for the strategy set version loaded now.", ["version"])
STRATEGY_VERSION = Gauge(
    "auto_comp_strategy_version", "Version of each loaded strategy.", ["strategy", "mode"])
RELOAD_FAILED = Gauge(
    "auto_comp_strategy_reload_failed", "1 while the last strategy reload failed (the previous version stays "
    "active); alert on it.")
RELOADS = Counter("auto_comp_strategy_reloads_total", "Strategy reloads by result.", ["result"])
ALLOWANCE_REQUESTS = Counter(
    "auto_comp_allowance_requests_total", "Budget allowance requests sent to the ledger, by why: first (a new "
    "allowance), ahead (low-water mark or half the lease gone), waiting (tickets wait for it), resend (not "
    "answered in time).", ["region", "why"])
ALLOWANCE_ANSWERS = Counter(
    "auto_comp_allowance_answers_total", "The ledger's answers applied, by outcome and what limited the grant.",
    ["region", "outcome", "limited_by"])
ALLOWANCE_RETURNS = Counter(
    "auto_comp_allowance_returns_total", "Allowances closed and returned to the ledger, by reason (expired, "
    "period_end, revoked, shutdown).", ["region", "reason"])
WAITING = Gauge(
    "auto_comp_waiting_compensations", "Compensations waiting for a budget allowance (decision pending_budget).")
WAITING_OLDEST = Gauge(
    "auto_comp_waiting_oldest_seconds", "Age of the oldest compensation waiting for a budget allowance (alert: "
    "the ledger does not answer).")
VOUCHER_LIFECYCLE = Counter(
    "auto_comp_voucher_lifecycle_total", "Issued vouchers closed by the promotion system (redeemed, expired, "
    "revoked), recorded on their decision once each; early=true: expired before the voucher's validity ended.",
    ["region", "state", "early"])
VOUCHER_LIFECYCLE_SKIPPED = Counter(
    "auto_comp_voucher_lifecycle_skipped_total", "Voucher lifecycle events of compensations auto_comp did not "
    "issue (manual compensations share the topic), skipped.")
