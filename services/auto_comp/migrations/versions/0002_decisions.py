"""Decisions, shadow decisions, compensations (the budget saga) and per-buyer guard rows.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE decisions (
            ticket_id text PRIMARY KEY,
            region text NOT NULL,
            order_id text NOT NULL,
            buyer_id text NOT NULL,
            reason text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ('issued', 'not_eligible', 'capped_by_abuse_guard',
                'holdout', 'budget_denied', 'paced', 'pending_budget')),
            failed_rule text,
            detail text NOT NULL,
            strategy_id text,
            strategy_version int,
            config_version text NOT NULL,
            scenario text,
            tier text,
            currency text NOT NULL,
            proposed_minor bigint,
            issued_minor bigint,
            compensation_id text,
            inputs jsonb NOT NULL,
            event_id text NOT NULL,
            ticket_occurred_at timestamptz NOT NULL,
            decided_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("CREATE INDEX decisions_region_time ON decisions (region, decided_at DESC, ticket_id DESC)")
    op.execute("CREATE INDEX decisions_region_outcome ON decisions (region, outcome, decided_at DESC)")
    op.execute("CREATE INDEX decisions_strategy ON decisions (strategy_id, decided_at DESC)")
    op.execute("""
        CREATE TABLE shadow_decisions (
            ticket_id text NOT NULL,
            strategy_id text NOT NULL,
            strategy_version int NOT NULL,
            region text NOT NULL,
            outcome text NOT NULL,
            failed_rule text,
            detail text NOT NULL,
            tier text,
            currency text NOT NULL,
            proposed_minor bigint,
            inputs jsonb NOT NULL,
            decided_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (ticket_id, strategy_id)
        )""")
    op.execute("CREATE INDEX shadow_decisions_strategy ON shadow_decisions (strategy_id, decided_at DESC)")
    op.execute("""
        CREATE TABLE compensations (
            compensation_id text PRIMARY KEY,
            reservation_id text NOT NULL UNIQUE,
            ticket_id text NOT NULL,
            strategy_id text NOT NULL,
            strategy_version int NOT NULL,
            order_id text NOT NULL,
            scenario text NOT NULL,
            buyer_id text NOT NULL,
            region text NOT NULL,
            reason text NOT NULL,
            kind text NOT NULL,
            currency text NOT NULL,
            status text NOT NULL CHECK (status IN ('pending', 'issued', 'denied')),
            requested_minor bigint NOT NULL CHECK (requested_minor > 0),
            fallback_minor bigint[] NOT NULL DEFAULT '{}',
            issued_minor bigint CHECK (issued_minor > 0),
            liability_rule text NOT NULL,
            shares jsonb NOT NULL,
            min_spend_minor bigint,
            expires_at timestamptz NOT NULL,
            voucher_code text UNIQUE,
            denial_reason text,
            budget_period text,
            request jsonb NOT NULL,
            correlation_id text,
            attempts int NOT NULL DEFAULT 1,
            ticket_occurred_at timestamptz NOT NULL,
            requested_at timestamptz NOT NULL DEFAULT now(),
            last_sent_at timestamptz NOT NULL DEFAULT now(),
            settled_at timestamptz,
            UNIQUE (ticket_id, strategy_id)
        )""")
    # A compensation the budget denied does not use up the order's scenario.
    op.execute("CREATE UNIQUE INDEX compensations_order_scenario ON compensations (order_id, scenario) "
               "WHERE status <> 'denied'")
    op.execute("CREATE INDEX compensations_buyer ON compensations (region, buyer_id, ticket_occurred_at) "
               "WHERE status <> 'denied'")
    op.execute("CREATE INDEX compensations_pending ON compensations (last_sent_at) WHERE status = 'pending'")
    op.execute("""
        CREATE TABLE buyer_guards (
            region text NOT NULL,
            buyer_id text NOT NULL,
            PRIMARY KEY (region, buyer_id)
        )""")


def downgrade() -> None:
    for table in ("buyer_guards", "compensations", "shadow_decisions", "decisions"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
