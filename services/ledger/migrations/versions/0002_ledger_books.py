"""Ledger books: journal (append-only, balanced), striped account balances, budgets and their audit
trail, reservations (holds), compensations, corrections, parked events, budget overruns.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DDL = [
    # ---------------------------------------------------------------- journal (append-only)
    """CREATE TABLE journal_transactions (
        tx_id text PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('charge', 'budget_posting', 'reversal')),
        region text NOT NULL,
        currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
        compensation_id text NOT NULL,
        source_event_id text NOT NULL,
        reverses_tx_id text,
        corrects_tx_id text,
        correction_id text,
        entry_count smallint NOT NULL CHECK (entry_count >= 2),
        occurred_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (source_event_id, kind),
        CHECK ((kind = 'reversal') = (reverses_tx_id IS NOT NULL)))""",
    "CREATE INDEX journal_transactions_compensation ON journal_transactions (compensation_id)",
    # a transaction is reversed at most once
    """CREATE UNIQUE INDEX journal_transactions_reversed_once ON journal_transactions (reverses_tx_id)
        WHERE reverses_tx_id IS NOT NULL""",
    # Links must point at recorded transactions. Checked per statement for the few linked rows, instead
    # of a foreign key's per-row trigger on every insert of the hot path.
    """CREATE FUNCTION journal_links_exist() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE bad text;
    BEGIN
        SELECT n.tx_id INTO bad FROM new_transactions n
            WHERE (n.reverses_tx_id IS NOT NULL AND NOT EXISTS (
                       SELECT 1 FROM journal_transactions t WHERE t.tx_id = n.reverses_tx_id))
               OR (n.corrects_tx_id IS NOT NULL AND NOT EXISTS (
                       SELECT 1 FROM journal_transactions t WHERE t.tx_id = n.corrects_tx_id))
            LIMIT 1;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'journal transaction % links to a transaction that does not exist', bad
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER journal_transactions_links AFTER INSERT ON journal_transactions
        REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION journal_links_exist()""",
    """CREATE TABLE journal_entries (
        tx_id text NOT NULL,
        line_no smallint NOT NULL CHECK (line_no >= 1),
        region text NOT NULL,
        account_key text NOT NULL,
        currency text NOT NULL,
        amount_minor bigint NOT NULL CHECK (amount_minor <> 0),
        occurred_at timestamptz NOT NULL,
        PRIMARY KEY (tx_id, line_no))""",
    "CREATE INDEX journal_entries_account ON journal_entries (region, account_key, occurred_at)",
    # Posted entries and transactions are never updated or deleted, whoever asks.
    """CREATE FUNCTION journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the journal is append-only: % on % refused (post a reversal instead)',
            TG_OP, TG_TABLE_NAME USING ERRCODE = 'raise_exception';
    END $$""",
    """CREATE TRIGGER journal_transactions_immutable BEFORE UPDATE OR DELETE ON journal_transactions
        FOR EACH ROW EXECUTE FUNCTION journal_is_append_only()""",
    """CREATE TRIGGER journal_transactions_no_truncate BEFORE TRUNCATE ON journal_transactions
        FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only()""",
    """CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE ON journal_entries
        FOR EACH ROW EXECUTE FUNCTION journal_is_append_only()""",
    """CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
        FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only()""",
    # Checked once per INSERT/COPY statement (not per row): every transaction whose entries arrive in the
    # statement exists, gets all its lines (1..entry_count) and sums to zero per currency. Line numbers are
    # unique per transaction, so nothing can be appended to a transaction later either.
    """CREATE FUNCTION journal_entries_balance() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE bad text;
    BEGIN
        SELECT n.tx_id INTO bad FROM new_entries n GROUP BY n.tx_id, n.currency
            HAVING sum(n.amount_minor) <> 0 LIMIT 1;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'journal transaction % does not balance per currency', bad
                USING ERRCODE = 'check_violation';
        END IF;
        SELECT c.tx_id INTO bad FROM (
            SELECT tx_id, count(*) AS lines, max(line_no) AS top, count(DISTINCT currency) AS currencies,
                   min(currency) AS currency
            FROM new_entries GROUP BY tx_id) c
            LEFT JOIN journal_transactions t ON t.tx_id = c.tx_id
            WHERE t.tx_id IS NULL OR c.lines <> t.entry_count OR c.top > t.entry_count
               OR c.lines < 2 OR (c.currencies = 1 AND c.currency <> t.currency)
            LIMIT 1;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'journal transaction % is unknown or its entries are incomplete', bad
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER journal_entries_balanced AFTER INSERT ON journal_entries
        REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION journal_entries_balance()""",
    # ---------------------------------------------------------------- balances (state, striped)
    # A hot account (payable, expense, platform, budget:<period>) has one row per stripe; each consumer
    # writes its own stripe, so parallel batches do not queue on one row. Balance = sum over stripes.
    """CREATE TABLE account_balances (
        region text NOT NULL,
        account_key text NOT NULL,
        currency text NOT NULL,
        stripe smallint NOT NULL,
        debits_minor bigint NOT NULL DEFAULT 0 CHECK (debits_minor >= 0),
        credits_minor bigint NOT NULL DEFAULT 0 CHECK (credits_minor >= 0),
        entries bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (region, account_key, currency, stripe))""",
    # ---------------------------------------------------------------- budgets
    """CREATE TABLE budgets (
        region text NOT NULL,
        period text NOT NULL,
        currency text NOT NULL,
        limit_minor bigint CHECK (limit_minor >= 0),
        reserved_minor bigint NOT NULL DEFAULT 0 CHECK (reserved_minor >= 0),
        posted_auto_minor bigint NOT NULL DEFAULT 0 CHECK (posted_auto_minor >= 0),
        posted_manual_minor bigint NOT NULL DEFAULT 0 CHECK (posted_manual_minor >= 0),
        released_minor bigint NOT NULL DEFAULT 0,
        breakage_minor bigint NOT NULL DEFAULT 0,
        thresholds_fired int[] NOT NULL DEFAULT '{}',
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (region, period),
        -- the hard limit, enforced by the database as well as by the domain
        CONSTRAINT automatic_within_limit
            CHECK (limit_minor IS NULL OR reserved_minor + posted_auto_minor <= limit_minor))""",
    """CREATE TABLE budget_changes (
        id bigserial PRIMARY KEY,
        region text NOT NULL,
        period text NOT NULL,
        currency text NOT NULL,
        old_limit_minor bigint,
        new_limit_minor bigint NOT NULL,
        actor text NOT NULL,
        via text NOT NULL,
        reason text NOT NULL,
        changed_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX budget_changes_budget ON budget_changes (region, period, changed_at)",
    """CREATE TABLE budget_overruns (
        id bigserial PRIMARY KEY,
        region text NOT NULL,
        period text NOT NULL,
        compensation_id text NOT NULL UNIQUE,
        limit_minor bigint NOT NULL,
        used_minor bigint NOT NULL,
        occurred_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now())""",
    # ---------------------------------------------------------------- reservations (holds) and compensations
    """CREATE TABLE reservations (
        reservation_id text PRIMARY KEY,
        compensation_id text NOT NULL,
        region text NOT NULL,
        period text NOT NULL,
        currency text NOT NULL,
        kind text NOT NULL,
        ticket_id text NOT NULL,
        buyer_id text NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'posted', 'voided', 'denied')),
        requested_minor bigint NOT NULL CHECK (requested_minor > 0),
        decided_minor bigint NOT NULL CHECK (decided_minor >= 0),
        amount_minor bigint NOT NULL CHECK (amount_minor >= 0),
        denial_reason text,
        expires_at timestamptz NOT NULL,
        issued_minor bigint,
        valid_until timestamptz,
        posted_minor bigint NOT NULL DEFAULT 0,
        released_minor bigint NOT NULL DEFAULT 0,
        breakage_minor bigint NOT NULL DEFAULT 0,
        closed_by text,
        requested_event_id text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CHECK (decided_minor = posted_minor + released_minor + breakage_minor
                              + CASE WHEN status = 'pending' THEN amount_minor ELSE 0 END))""",
    "CREATE INDEX reservations_compensation ON reservations (compensation_id)",
    "CREATE INDEX reservations_pending ON reservations (expires_at) WHERE status = 'pending'",
    "CREATE INDEX reservations_budget ON reservations (region, period)",
    """CREATE TABLE compensations (
        compensation_id text PRIMARY KEY,
        region text NOT NULL,
        origin text NOT NULL CHECK (origin IN ('auto', 'manual')),
        kind text NOT NULL,
        amount_minor bigint NOT NULL CHECK (amount_minor > 0),
        currency text NOT NULL,
        period text NOT NULL,
        buyer_id text NOT NULL,
        reservation_id text UNIQUE,
        issued_event_id text NOT NULL,
        issued_at timestamptz NOT NULL,
        charge_seq int NOT NULL DEFAULT 0,
        current_charge_tx text,
        current_shares jsonb NOT NULL DEFAULT '[]',
        current_amount_minor bigint NOT NULL DEFAULT 0,
        last_correction_id text,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX compensations_budget ON compensations (region, period)",
    """CREATE TABLE corrections (
        correction_id text PRIMARY KEY,
        compensation_id text NOT NULL,
        corrects_correction_id text REFERENCES corrections (correction_id),
        reversal_tx_id text,
        charge_tx_id text,
        corrected_amount_minor bigint NOT NULL,
        source_event_id text NOT NULL,
        occurred_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX corrections_compensation ON corrections (compensation_id)",
    # ---------------------------------------------------------------- events waiting for their compensation
    """CREATE TABLE parked_events (
        event_id text PRIMARY KEY,
        compensation_id text NOT NULL,
        event_type text NOT NULL,
        region text NOT NULL,
        value bytea NOT NULL,
        topic text NOT NULL,
        partition int NOT NULL,
        "offset" bigint NOT NULL,
        key bytea,
        consumer_group text NOT NULL,
        parked_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX parked_events_compensation ON parked_events (compensation_id)",
    "CREATE INDEX parked_events_age ON parked_events (parked_at)",
]


def upgrade() -> None:
    for statement in DDL:
        op.execute(statement)


def downgrade() -> None:
    for table in ("parked_events", "corrections", "compensations", "reservations", "budget_overruns",
                  "budget_changes", "budgets", "account_balances", "journal_entries", "journal_transactions"):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    op.execute("DROP FUNCTION IF EXISTS journal_entries_balance()")
    op.execute("DROP FUNCTION IF EXISTS journal_links_exist()")
    op.execute("DROP FUNCTION IF EXISTS journal_is_append_only()")
