"""Dashboard metrics (prefix ``insights_dashboard_``, next to the service's own in ``metrics.py``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SIGN_INS = Counter("insights_dashboard_sign_ins_total",
                   "Dashboard sign-in attempts by outcome (ok, failed, throttled, trusted_header).", ["outcome"])
SIGN_IN_LOCKS = Counter("insights_dashboard_sign_in_locks_total",
                        "Dashboard sign-in pauses set after repeated failures, by scope: account_client, client "
                        "(one address over many accounts), account (one account from many addresses: its known "
                        "devices still sign in).", ["scope"])
SESSIONS_PURGED = Counter("insights_dashboard_sessions_purged_total",
                          "Expired dashboard sessions deleted by the periodic purge.")
CSRF_REJECTED = Counter("insights_dashboard_csrf_rejected_total",
                        "Dashboard form posts refused for a bad CSRF token.")
PAGE_SECONDS = Histogram("insights_dashboard_page_seconds", "Time to assemble a dashboard page's data.", ["page"],
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
