"""Approval stage (issue 14): compensation requests, their trail, issued-vs-approved checks, audit findings
and corrective actions.

Revision ID: 0006
Revises: 0005

``compensation_requests`` holds each request with its judgement and current state; ``request_trail`` every
step (requested, auto-approved, queued, escalated, approved, rejected) with who and why. Approved amounts
count toward an agent's local-day total and a buyer's window: both are summed from this table under
transaction-level advisory locks of the (region, agent, day) and (region, buyer) keys (docs/audit.md,
"Approvals"), so two requests racing one limit take turns.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DDL = [
    """CREATE TABLE compensation_requests (
        request_id text PRIMARY KEY,
        event_id text NOT NULL,
        region text NOT NULL,
        agent_id text NOT NULL,
        team text NOT NULL,
        agent_tier text,
        buyer_id text NOT NULL,
        order_id text NOT NULL,
        ticket_id text NOT NULL,
        reason_code text NOT NULL,
        kind text NOT NULL,
        currency text NOT NULL,
        amount_minor bigint NOT NULL CHECK (amount_minor > 0),
        request jsonb NOT NULL,
        requested_at timestamptz NOT NULL,
        local_day date NOT NULL,
        status text NOT NULL CHECK (status IN ('approved', 'awaiting_approval', 'escalated', 'rejected')),
        automatic boolean NOT NULL,
        approved_amount_minor bigint CHECK (approved_amount_minor > 0 AND approved_amount_minor <= amount_minor),
        rule text,
        limits_version text,
        exceeded text[] NOT NULL DEFAULT '{}',
        judgement text NOT NULL,
        due_at timestamptz,
        escalated_at timestamptz,
        decided_by text,
        decision_reason text,
        decided_at timestamptz,
        received_at timestamptz NOT NULL DEFAULT now(),
        CHECK ((status = 'approved') = (approved_amount_minor IS NOT NULL)))""",
    "CREATE INDEX compensation_requests_agent_day ON compensation_requests (region, agent_id, local_day) "
    "WHERE status = 'approved'",
    "CREATE INDEX compensation_requests_buyer_day ON compensation_requests (region, buyer_id, local_day) "
    "WHERE status = 'approved'",
    "CREATE INDEX compensation_requests_waiting ON compensation_requests (region, due_at) "
    "WHERE status IN ('awaiting_approval', 'escalated')",
    """CREATE TABLE request_trail (
        id bigserial PRIMARY KEY,
        request_id text NOT NULL REFERENCES compensation_requests (request_id),
        action text NOT NULL CHECK (action IN ('requested', 'auto_approved', 'queued', 'escalated', 'approved',
                                               'rejected')),
        actor text NOT NULL,
        reason text NOT NULL,
        amount_minor bigint,
        at timestamptz NOT NULL)""",
    "CREATE INDEX request_trail_request ON request_trail (request_id, id)",
    """CREATE TABLE issue_checks (
        compensation_id text PRIMARY KEY,
        request_id text,
        region text NOT NULL,
        status text NOT NULL CHECK (status IN ('ok', 'flagged', 'awaiting_request')),
        mismatches text[] NOT NULL DEFAULT '{}',
        finding text,
        compensation jsonb,
        checked_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX issue_checks_awaiting ON issue_checks (request_id) WHERE status = 'awaiting_request'",
    "ALTER TABLE audit_items ADD COLUMN finding text",
    """CREATE TABLE corrective_actions (
        id bigserial PRIMARY KEY,
        region text NOT NULL,
        source text NOT NULL CHECK (source IN ('finding', 'pattern', 'root_cause', 'spike')),
        source_ref text,
        target_type text NOT NULL CHECK (target_type IN ('agent', 'team', 'seller', 'carrier', 'guideline')),
        target_id text NOT NULL,
        kind text NOT NULL,
        owner text NOT NULL,
        due_on date NOT NULL,
        status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'in_progress', 'done', 'cancelled')),
        note text,
        window_days int NOT NULL DEFAULT 28 CHECK (window_days BETWEEN 1 AND 366),
        opened_by text NOT NULL,
        opened_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        done_at timestamptz,
        effect_published_at timestamptz)""",
    "CREATE INDEX corrective_actions_to_measure ON corrective_actions (done_at) "
    "WHERE status = 'done' AND effect_published_at IS NULL",
    "CREATE INDEX corrective_actions_open ON corrective_actions (region, due_on) "
    "WHERE status IN ('open', 'in_progress')",
]


def upgrade() -> None:
    for statement in DDL:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS corrective_actions")
    op.execute("ALTER TABLE audit_items DROP COLUMN IF EXISTS finding")
    for table in ("issue_checks", "request_trail", "compensation_requests"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
