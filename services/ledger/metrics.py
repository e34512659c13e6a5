"""The ledger's Prometheus metrics (prefix ``ledger_``; money gauges in minor units)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TRANSACTIONS = Counter("ledger_transactions_total", "Journal transactions written, by kind.", ["kind"])
TRANSFERS = Counter("ledger_transfers_total", "Journal transfer rows (debit, credit, amount) written, by "
                    "transaction kind.", ["kind"])
CHARGES = Counter("ledger_charges_total", "Liability charge entries, by liable-party type and currency.",
                  ["party_type", "currency"])
CHARGED_MINOR = Counter("ledger_charged_minor_total", "Minor units charged to liable parties.",
                        ["party_type", "currency"])
REVERSED_MINOR = Counter("ledger_reversed_minor_total", "Minor units of liable-party charges reversed.",
                         ["party_type", "currency"])
DECISIONS = Counter("ledger_budget_decisions_total", "Budget reservation answers sent.",
                    ["region", "outcome", "reason"])
BUDGET_LIMIT = Gauge("ledger_budget_limit_minor", "Budget limit of a region and period.", ["region", "period"])
BUDGET_RESERVED = Gauge("ledger_budget_reserved_minor", "Pending reservations.", ["region", "period"])
BUDGET_ALLOTTED = Gauge("ledger_budget_allotted_minor", "Granted to budget allowances, not charged against nor "
                        "released yet (counts in usage).", ["region", "period"])
ALLOWANCE_ANSWERS = Counter("ledger_allowance_answers_total", "Allowance requests answered (a repeated request "
                            "counts again), by outcome and what limited the grant ('' when nothing did).",
                            ["region", "outcome", "limited_by"])
ALLOWANCE_GRANTED = Counter("ledger_allowance_granted_minor_total", "Minor units granted to allowances.",
                            ["region", "currency"])
ALLOWANCE_RETURNS = Counter("ledger_allowance_returns_total", "Allowances returned by auto_comp, by reason.",
                            ["region", "reason"])
ALLOWANCE_RELEASED = Counter("ledger_allowance_released_minor_total", "Minor units of allowances returned "
                             "unspent.", ["region", "currency"])
ALLOWANCES_OVERDUE = Gauge("ledger_allowances_overdue", "Allowances still open past their expiry plus "
                           "LEDGER_ALLOWANCE_OVERDUE_SECONDS: auto_comp has not returned them (alert).", ["region"])
BUDGET_POSTED = Gauge("ledger_budget_posted_minor", "Posted spend, automatic or manual.",
                      ["region", "period", "origin"])
BUDGET_USED_RATIO = Gauge("ledger_budget_used_ratio", "(allotted + reserved + posted) / limit.", ["region", "period"])
BUDGET_EXCEEDED = Counter("ledger_budget_exceeded_total",
                          "Manual compensations that left usage above the budget (alert on any increase).",
                          ["region"])
THRESHOLDS = Counter("ledger_budget_threshold_crossed_total", "Threshold events sent (50/80/100 percent).",
                     ["region", "threshold"])
BUDGET_BREAKAGE = Gauge("ledger_budget_breakage_minor", "Expired voucher value of a period.", ["region", "period"])
PARKED = Counter("ledger_events_parked_total", "Events that arrived before their compensation.", ["event_type"])
PARKED_NOW = Gauge("ledger_parked_events", "Events waiting for their compensation, by region.", ["region"])
PARKED_OLDEST_AGE = Gauge("ledger_parked_oldest_age_seconds",
                          "Age of the oldest event waiting for its compensation, by region (0 when none).",
                          ["region"])
PARK_WINDOW = Gauge("ledger_park_window_seconds",
                    "How long an event may wait for its compensation before it is dead-lettered "
                    "(LEDGER_PARK_SECONDS; 0: events are dead-lettered at once, never parked).")
IGNORED = Counter("ledger_events_ignored_total", "Business duplicates and late lifecycle events ignored.",
                  ["reason"])
EARLY_EXPIRIES = Counter("ledger_voucher_early_expiries_total",
                         "Voucher expiries reported before the voucher's validity ended (applied, flagged on the "
                         "compensation's lineage): usually an upstream clock or mapping error.", ["region"])
SWEPT = Counter("ledger_reservations_swept_total", "Reservations voided by the sweeper.", ["why"])
INVARIANT_VIOLATIONS = Gauge("ledger_invariant_violations", "Violations found by the last invariant check.",
                             ["check"])
INVARIANT_LAST_RUN = Gauge("ledger_invariant_last_run_timestamp_seconds", "When the invariants last ran.")
