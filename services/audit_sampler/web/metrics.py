"""Workbench and report metrics (prefix ``audit_``, next to the service's own in ``metrics.py``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SIGN_INS = Counter("audit_workbench_sign_ins_total",
                   "Workbench sign-in attempts by outcome (ok, failed, throttled, trusted_header).", ["outcome"])
SIGN_IN_LOCKS = Counter("audit_workbench_sign_in_locks_total",
                        "Sign-in pauses set after repeated failures, by scope: account_client (one account from "
                        "one client), client (one address over many accounts), account (one account from many "
                        "addresses: its known devices still sign in).", ["scope"])
SESSIONS_PURGED = Counter("audit_workbench_sessions_purged_total",
                          "Expired workbench sessions deleted by the periodic purge.")
CSRF_REJECTED = Counter("audit_workbench_csrf_rejected_total", "Workbench form posts refused for a bad CSRF token.")
REPORT_SECONDS = Histogram("audit_report_seconds", "Time to assemble a report (accuracy, calibration, trend).",
                           ["report"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
