"""A leaner journal (ADR 0013): transactions stored as transfer rows, the budget posted once per batch.

- ``journal_transfers``: one row per line of a transaction: (debit account, credit account, amount > 0),
  balanced by construction, with the transaction's kind, links and lineage on every line. A charge split
  over two parties is two rows; a budget posting one. Replaces ``journal_transactions`` (one header per
  transaction) and ``journal_entries`` (one row per signed entry): a split manual charge and its posting
  wrote 2 headers + 5 entries and 16 index entries; now 2 rows (and a share of one posting per batch) and 6
  index entries. The per-statement balance trigger goes: a transfer cannot be unbalanced. A transaction's
  lines are numbered 1..line_count (CHECK; the invariant checker verifies each is complete and uniform).
- Uniqueness and links, as before, on each transaction's first line: one transaction per (source event,
  kind), reversed at most once, links to recorded transactions (row trigger, only for linked lines).
  Append-only as before: no UPDATE, DELETE or TRUNCATE.
- Statements read the party side of charges (debits) and reversals (credits) through two partial indexes;
  balances stay in the striped ``account_balances``.
- ``compensations.posting_tx_id`` (manual) and ``reservations.posting_tx_id`` (holds): the budget posting
  that carries each compensation's posted part, now that a batch posts once per budget.
- ``journal_transactions`` and ``journal_entries`` become views over the transfers, in the classic form
  (one entry per account of a transaction, signed), for readers and reports.

Upgrade (data): every existing transaction is copied into transfers, pairing each entry with the single
entry of opposite sign (every kind the ledger writes has one credit or one debit; the migration refuses any
transaction that has several of both), and existing postings (one per compensation) are linked from their
compensation or hold. Run it with the ledger stopped (the copy is one transaction); check-invariants
afterwards must report nothing, as before.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE journal_transfers (
            tx_id text NOT NULL,
            line_no smallint NOT NULL,
            line_count smallint NOT NULL,
            kind text NOT NULL CHECK (kind IN ('charge', 'budget_posting', 'reversal')),
            region text NOT NULL,
            currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            debit_account text NOT NULL,
            credit_account text NOT NULL,
            amount_minor bigint NOT NULL CHECK (amount_minor > 0),
            compensation_id text,
            source_event_id text NOT NULL,
            reverses_tx_id text,
            corrects_tx_id text,
            correction_id text,
            occurred_at timestamptz NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tx_id, line_no),
            CONSTRAINT transfer_line CHECK (line_no BETWEEN 1 AND line_count),
            CONSTRAINT transfer_two_accounts CHECK (debit_account <> credit_account),
            CONSTRAINT transfer_reversal_link CHECK ((kind = 'reversal') = (reverses_tx_id IS NOT NULL)),
            -- only a batch's budget posting carries several compensations (each keeps its posting's id)
            CONSTRAINT transfer_compensation CHECK (kind = 'budget_posting' OR compensation_id IS NOT NULL))""")
    op.execute("CREATE UNIQUE INDEX journal_transfers_source ON journal_transfers (source_event_id, kind) "
               "WHERE line_no = 1")
    op.execute("CREATE UNIQUE INDEX journal_transfers_reversed_once ON journal_transfers (reverses_tx_id) "
               "WHERE line_no = 1 AND reverses_tx_id IS NOT NULL")
    op.execute("CREATE INDEX journal_transfers_compensation ON journal_transfers (compensation_id) "
               "WHERE line_no = 1 AND compensation_id IS NOT NULL")
    # Statements of liable parties: charges debit them, reversals of charges credit them.
    op.execute("CREATE INDEX journal_transfers_party_debits ON journal_transfers (region, debit_account, "
               "occurred_at) WHERE kind = 'charge'")
    op.execute("CREATE INDEX journal_transfers_party_credits ON journal_transfers (region, credit_account, "
               "occurred_at) WHERE kind = 'reversal'")
    op.execute("""CREATE FUNCTION journal_transfer_link_exists() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF (NEW.reverses_tx_id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM journal_transfers t WHERE t.tx_id = NEW.reverses_tx_id AND t.line_no = 1))
           OR (NEW.corrects_tx_id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM journal_transfers t WHERE t.tx_id = NEW.corrects_tx_id AND t.line_no = 1)) THEN
            RAISE EXCEPTION 'journal transaction % links to a transaction that does not exist', NEW.tx_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END $$""")
    # After the row, still inside the statement: a transaction and its reversal may arrive in one COPY.
    op.execute("""CREATE TRIGGER journal_transfers_link AFTER INSERT ON journal_transfers FOR EACH ROW
        WHEN (NEW.line_no = 1 AND (NEW.reverses_tx_id IS NOT NULL OR NEW.corrects_tx_id IS NOT NULL))
        EXECUTE FUNCTION journal_transfer_link_exists()""")
    op.execute("""CREATE TRIGGER journal_transfers_immutable BEFORE UPDATE OR DELETE ON journal_transfers
        FOR EACH ROW EXECUTE FUNCTION journal_is_append_only()""")
    op.execute("""CREATE TRIGGER journal_transfers_no_truncate BEFORE TRUNCATE ON journal_transfers
        FOR EACH STATEMENT EXECUTE FUNCTION journal_is_append_only()""")

    # ---------------------------------------------------------------- the books written so far
    op.execute("""DO $$
    DECLARE bad text;
    BEGIN
        SELECT tx_id INTO bad FROM journal_entries GROUP BY tx_id
            HAVING count(*) FILTER (WHERE amount_minor > 0) > 1 AND count(*) FILTER (WHERE amount_minor < 0) > 1
            LIMIT 1;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'journal transaction % has several debits and several credits: not a transfer set', bad;
        END IF;
    END $$""")
    op.execute("""
        INSERT INTO journal_transfers (tx_id, line_no, line_count, kind, region, currency, debit_account,
            credit_account, amount_minor, compensation_id, source_event_id, reverses_tx_id, corrects_tx_id,
            correction_id, occurred_at, recorded_at)
        SELECT t.tx_id, row_number() OVER (PARTITION BY t.tx_id ORDER BY m.line_no), count(*) OVER (PARTITION BY t.tx_id),
            t.kind, t.region, t.currency,
            CASE WHEN s.amount_minor < 0 THEN m.account_key ELSE s.account_key END,
            CASE WHEN s.amount_minor < 0 THEN s.account_key ELSE m.account_key END,
            abs(m.amount_minor), t.compensation_id, t.source_event_id, t.reverses_tx_id, t.corrects_tx_id,
            t.correction_id, t.occurred_at, t.recorded_at
        FROM journal_transactions t
        -- s: the single entry of its sign (the credit when there is one credit, else the one debit)
        JOIN LATERAL (
            SELECT e.* FROM journal_entries e WHERE e.tx_id = t.tx_id AND sign(e.amount_minor) = (
                SELECT CASE WHEN count(*) FILTER (WHERE x.amount_minor < 0) = 1 THEN -1 ELSE 1 END
                FROM journal_entries x WHERE x.tx_id = t.tx_id)) s ON true
        JOIN journal_entries m ON m.tx_id = t.tx_id AND m.line_no <> s.line_no""")
    op.execute("ALTER TABLE compensations ADD COLUMN posting_tx_id text")
    op.execute("ALTER TABLE reservations ADD COLUMN posting_tx_id text")
    op.execute("""UPDATE compensations c SET posting_tx_id = t.tx_id FROM journal_transfers t
        WHERE t.line_no = 1 AND t.kind = 'budget_posting' AND t.compensation_id = c.compensation_id
        AND c.origin = 'manual'""")
    op.execute("""UPDATE reservations r SET posting_tx_id = t.tx_id FROM journal_transfers t
        WHERE t.line_no = 1 AND t.kind = 'budget_posting' AND t.compensation_id = r.compensation_id""")
    op.execute("DROP TABLE journal_entries")
    op.execute("DROP TABLE journal_transactions")
    op.execute("DROP FUNCTION IF EXISTS journal_entries_balance()")
    op.execute("DROP FUNCTION IF EXISTS journal_link_exists()")
    for view in VIEWS:
        op.execute(view)


# Entries in the order transactions are built: parties (or expense) first, payable (or the budget) last.
VIEWS = ["""
CREATE VIEW journal_transactions AS
    SELECT tx_id, kind, region, currency, compensation_id, source_event_id, reverses_tx_id, corrects_tx_id,
           correction_id, line_count AS transfer_count, occurred_at, recorded_at
    FROM journal_transfers WHERE line_no = 1""", """
CREATE VIEW journal_entries AS
    SELECT tx_id, CAST(row_number() OVER (PARTITION BY tx_id ORDER BY min(ord)) AS smallint) AS line_no,
           region, account_key, currency, CAST(sum(amount_minor) AS bigint) AS amount_minor, occurred_at
    FROM (SELECT tx_id, region, currency, occurred_at, debit_account AS account_key, amount_minor,
                 CASE WHEN debit_account = 'compensation_payable' OR debit_account LIKE 'budget:%'
                      THEN 1000 ELSE line_no END AS ord FROM journal_transfers
          UNION ALL
          SELECT tx_id, region, currency, occurred_at, credit_account, -amount_minor,
                 CASE WHEN credit_account = 'compensation_payable' OR credit_account LIKE 'budget:%'
                      THEN 1000 ELSE line_no END FROM journal_transfers) x
    GROUP BY tx_id, region, account_key, currency, occurred_at"""]


def downgrade() -> None:
    raise RuntimeError("0006 is not reversible: the transfers would have to be split back into headers and "
                       "entries; restore the pre-upgrade backup instead")
