"""Kafka topics of the platform. The version suffix changes only on an incompatible contract change."""

from __future__ import annotations

import enum


class Topic(enum.StrEnum):
    TICKETS = "tickets.v1"  # ticket / order-issue events from intake; key: buyer_id
    MANUAL_COMPENSATIONS = "compensations.manual.v1"  # CS agents' hand-issued compensations; key: buyer_id
    VOUCHER_LIFECYCLE = "vouchers.lifecycle.v1"  # redeemed / expired / revoked; key: buyer_id
    BUYER_ORDERS = "buyer.orders.v1"  # later orders by a buyer, for strategy ROI; key: buyer_id
    # Retired (ADR 0012): per-voucher reservations; the ledger still drains requests left from before.
    BUDGET_REQUESTS = "budget.requests.v1"  # auto_comp -> ledger reservation requests; key: buyer_id
    BUDGET_RESULTS = "budget.results.v1"  # ledger -> auto_comp reserved / denied; key: buyer_id
    BUDGET_ALLOWANCES = "budget.allowances.v1"  # auto_comp -> ledger allowance requests, returns; key: allowance
    BUDGET_GRANTS = "budget.grants.v1"  # ledger -> auto_comp allowance grants / denials; key: allowance
    COMPENSATIONS_ISSUED = "compensations.issued.v1"  # auto_comp issued vouchers; key: buyer_id
    AUDIT_CORRECTIONS = "audit.corrections.v1"  # audit_sampler corrections for the ledger; key: buyer_id
    BUDGET_ALERTS = "budget.alerts.v1"  # ledger threshold / exceeded events; key: region
    DECISIONS = "decisions.v1"  # auto_comp's final decisions, live and shadow; key: buyer_id
    AUDIT_ACTIVITY = "audit.activity.v1"  # audit_sampler sampled items, evictions, verdicts; key: buyer_id
    BUYER_FEEDBACK = "buyer.feedback.v1"  # CSAT answers and review scores from intake; key: buyer_id
    ORDER_VOLUME = "orders.volume.v1"  # daily order count and GMV per region from intake; key: region
    BUDGET_LIMITS = "budget.limits.v1"  # ledger budget limits set or changed; key: region
    INSIGHT_SPIKES = "insights.spikes.v1"  # insights' spike alerts per region and series; key: region
    COMPENSATION_REQUESTS = "compensations.requests.v1"  # CS agents' requests from intake; key: buyer_id
    COMPENSATION_APPROVALS = "compensations.approvals.v1"  # request decisions, issue flags; key: buyer_id
    AUDIT_ACTIONS = "audit.actions.v1"  # corrective actions and their effect; key: region
    DEAD_LETTERS = "deadletters.v1"  # poison messages with the reason; key: source topic


ALL_TOPICS: tuple[str, ...] = tuple(t.value for t in Topic)
