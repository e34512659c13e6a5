"""Audit core: population of every manual compensation, agents, audit queues, verdicts, disputes,
calibration pairs, capacity drops.

Revision ID: 0002
Revises: 0001

Estimation notes (for the reports): ``population`` holds every compensation the sampler saw, with its
design inclusion probability ``inclusion_probability`` and ``effective_probability`` (the design
probability times kept / selected of its queue-day in ``queue_days``; kept up to date on sampled rows,
the only ones an estimator weights). A sampled item's Horvitz-Thompson weight is 1 / effective_probability. Gold and calibration items are not
part of the population sample: estimate from verdicts whose item kind is 'sample'.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DDL = [
    """CREATE TABLE population (
        compensation_id text PRIMARY KEY,
        event_id text NOT NULL,
        region text NOT NULL,
        buyer_id text NOT NULL,
        agent_id text NOT NULL,
        team text NOT NULL,
        reason_code text NOT NULL,
        kind text NOT NULL,
        currency text NOT NULL,
        amount_minor bigint NOT NULL CHECK (amount_minor > 0),
        order_amount_minor bigint,
        occurred_at timestamptz NOT NULL,
        local_day date NOT NULL,
        inclusion_probability double precision NOT NULL
            CHECK (inclusion_probability >= 0 AND inclusion_probability <= 1),
        effective_probability double precision NOT NULL,
        draw double precision NOT NULL,
        sampled boolean NOT NULL,
        mandatory boolean NOT NULL,
        capacity_dropped boolean NOT NULL DEFAULT false,
        risk_score double precision NOT NULL,
        reasons text[] NOT NULL,
        queue text NOT NULL,
        agent_state text NOT NULL,
        policy_version text NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX population_region_day ON population (region, local_day)",
    "CREATE INDEX population_buyer ON population (region, buyer_id, occurred_at)",
    "CREATE INDEX population_agent ON population (region, agent_id, occurred_at)",
    """CREATE TABLE agents (
        region text NOT NULL,
        agent_id text NOT NULL,
        team text NOT NULL,
        first_seen_at timestamptz NOT NULL,
        compensations_seen bigint NOT NULL DEFAULT 0,
        sampling_state text NOT NULL DEFAULT 'normal'
            CHECK (sampling_state IN ('tightened', 'normal', 'reduced')),
        recent_results boolean[] NOT NULL DEFAULT '{}',
        week_start date,
        sampled_this_week int NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (region, agent_id))""",
    """CREATE TABLE audit_items (
        id bigserial PRIMARY KEY,
        region text NOT NULL,
        queue text NOT NULL,
        item_kind text NOT NULL CHECK (item_kind IN ('sample', 'calibration', 'gold')),
        compensation_id text NOT NULL,
        parent_item_id bigint REFERENCES audit_items (id),
        agent_id text NOT NULL,
        team text NOT NULL,
        compensation jsonb NOT NULL,
        risk_score double precision NOT NULL,
        inclusion_probability double precision NOT NULL,
        reasons text[] NOT NULL,
        mandatory boolean NOT NULL DEFAULT false,
        local_day date NOT NULL,
        status text NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'claimed', 'done', 'dropped')),
        enqueued_at timestamptz NOT NULL DEFAULT now(),
        sla_due_at timestamptz NOT NULL,
        claimed_by text,
        lease_expires_at timestamptz,
        assigned_to text,
        excluded_auditor text,
        claims int NOT NULL DEFAULT 0,
        gold_expected jsonb,
        created_by text,
        completed_at timestamptz)""",
    "CREATE UNIQUE INDEX audit_items_one_sample ON audit_items (compensation_id) WHERE item_kind = 'sample'",
    "CREATE UNIQUE INDEX audit_items_one_calibration ON audit_items (parent_item_id) "
    "WHERE item_kind = 'calibration'",
    "CREATE INDEX audit_items_claimable ON audit_items (region, queue, enqueued_at) "
    "WHERE status IN ('queued', 'claimed')",
    "CREATE INDEX audit_items_queue_day ON audit_items (region, queue, local_day) WHERE item_kind = 'sample'",
    """CREATE TABLE verdicts (
        id bigserial PRIMARY KEY,
        item_id bigint NOT NULL UNIQUE REFERENCES audit_items (id),
        item_kind text NOT NULL,
        region text NOT NULL,
        compensation_id text NOT NULL,
        agent_id text NOT NULL,
        team text NOT NULL,
        reason_code text NOT NULL,
        currency text NOT NULL,
        amount_minor bigint NOT NULL,
        auditor_id text NOT NULL,
        attributes jsonb NOT NULL,
        passed boolean NOT NULL,
        error_category text,
        note text,
        corrected_amount_minor bigint,
        corrected_liability jsonb,
        correction_id text UNIQUE,
        gold_correct boolean,
        status text NOT NULL DEFAULT 'final'
            CHECK (status IN ('final', 'disputed', 'upheld', 'overturned')),
        created_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX verdicts_region_time ON verdicts (region, created_at)",
    "CREATE INDEX verdicts_auditor ON verdicts (auditor_id, created_at)",
    """CREATE TABLE verdict_attributes (
        verdict_id bigint NOT NULL REFERENCES verdicts (id),
        attribute text NOT NULL,
        ok boolean NOT NULL,
        PRIMARY KEY (verdict_id, attribute))""",
    """CREATE TABLE calibration_pairs (
        region text NOT NULL,
        primary_verdict_id bigint NOT NULL UNIQUE REFERENCES verdicts (id),
        primary_auditor text NOT NULL,
        second_verdict_id bigint NOT NULL UNIQUE REFERENCES verdicts (id),
        second_auditor text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE disputes (
        id bigserial PRIMARY KEY,
        verdict_id bigint NOT NULL UNIQUE REFERENCES verdicts (id),
        region text NOT NULL,
        raised_by text NOT NULL,
        reason text NOT NULL,
        status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'upheld', 'overturned')),
        resolved_by text,
        resolution_note text,
        reverse_correction_id text UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now(),
        resolved_at timestamptz)""",
    "CREATE INDEX disputes_open ON disputes (region, created_at) WHERE status = 'open'",
    """CREATE TABLE capacity_drops (
        id bigserial PRIMARY KEY,
        region text NOT NULL,
        queue text NOT NULL,
        local_day date NOT NULL,
        compensation_id text NOT NULL UNIQUE,
        risk_score double precision NOT NULL,
        inclusion_probability double precision NOT NULL,
        evicted_item_id bigint,
        dropped_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX capacity_drops_day ON capacity_drops (region, queue, local_day)",
    """CREATE TABLE queue_days (
        region text NOT NULL,
        queue text NOT NULL,
        local_day date NOT NULL,
        selected bigint NOT NULL DEFAULT 0,
        kept bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (region, queue, local_day))""",
]


def upgrade() -> None:
    for statement in DDL:
        op.execute(statement)


def downgrade() -> None:
    for table in ("queue_days", "capacity_drops", "disputes", "calibration_pairs", "verdict_attributes", "verdicts",
                  "audit_items", "agents", "population"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
