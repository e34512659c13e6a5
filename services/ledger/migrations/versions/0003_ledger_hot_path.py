"""Ledger hot path: cheaper journal inserts with the same guarantees.

- The link check (reversal / correction links point at recorded transactions) becomes a row trigger
  that fires only for rows that carry a link: a charge or budget posting (almost every row) no longer
  pays for a transition table. Deferred to the end of the statement like the old statement trigger, so a
  transaction and the reversal of it may still arrive in the same COPY.
- ``compensations_budget`` (region, period) is dropped: no query reads compensations by budget, and
  every charge paid for maintaining it.
- The unique reservation of an automatic compensation becomes a partial unique index: manual
  compensations (no reservation, NULL) no longer add an index entry each; uniqueness is unchanged.

- The balance check on journal entries (still once per statement, same rules, same errors) takes one
  pass over the statement's entries instead of two.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# One pass over the statement's entries (a hash aggregate per transaction, no per-currency regrouping and
# no count(DISTINCT) sort); only a transaction that mixes currencies is summed per currency. When it finds
# a culprit, the original queries run to raise the same precise error as before.
FAST_BALANCE_CHECK = """CREATE OR REPLACE FUNCTION journal_entries_balance() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE bad text; culprit text;
    BEGIN
        SELECT c.tx_id INTO culprit FROM (
            SELECT tx_id, count(*) AS lines, max(line_no) AS top, min(currency) AS currency,
                   max(currency) AS last_currency, sum(amount_minor) AS total
            FROM new_entries GROUP BY tx_id) c
            LEFT JOIN journal_transactions t ON t.tx_id = c.tx_id
            WHERE t.tx_id IS NULL OR c.lines <> t.entry_count OR c.top > t.entry_count OR c.lines < 2
               OR (c.currency = c.last_currency AND (c.currency <> t.currency OR c.total <> 0))
               OR (c.currency <> c.last_currency AND EXISTS (
                       SELECT 1 FROM new_entries x WHERE x.tx_id = c.tx_id GROUP BY x.currency
                       HAVING sum(x.amount_minor) <> 0))
            LIMIT 1;
        IF culprit IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT n.tx_id INTO bad FROM new_entries n GROUP BY n.tx_id, n.currency
            HAVING sum(n.amount_minor) <> 0 LIMIT 1;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'journal transaction % does not balance per currency', bad
                USING ERRCODE = 'check_violation';
        END IF;
        RAISE EXCEPTION 'journal transaction % is unknown or its entries are incomplete', culprit
            USING ERRCODE = 'check_violation';
    END $$"""

ORIGINAL_BALANCE_CHECK = """CREATE OR REPLACE FUNCTION journal_entries_balance() RETURNS trigger LANGUAGE plpgsql AS $$
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
    END $$"""


def upgrade() -> None:
    op.execute(FAST_BALANCE_CHECK)
    op.execute("DROP TRIGGER journal_transactions_links ON journal_transactions")
    op.execute("""CREATE FUNCTION journal_link_exists() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF (NEW.reverses_tx_id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM journal_transactions t WHERE t.tx_id = NEW.reverses_tx_id))
           OR (NEW.corrects_tx_id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM journal_transactions t WHERE t.tx_id = NEW.corrects_tx_id)) THEN
            RAISE EXCEPTION 'journal transaction % links to a transaction that does not exist', NEW.tx_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END $$""")
    op.execute("""CREATE TRIGGER journal_transactions_link AFTER INSERT ON journal_transactions FOR EACH ROW
        WHEN (NEW.reverses_tx_id IS NOT NULL OR NEW.corrects_tx_id IS NOT NULL)
        EXECUTE FUNCTION journal_link_exists()""")
    op.execute("DROP FUNCTION journal_links_exist()")
    op.execute("DROP INDEX compensations_budget")
    op.execute("ALTER TABLE compensations DROP CONSTRAINT compensations_reservation_id_key")
    op.execute("CREATE UNIQUE INDEX compensations_reservation ON compensations (reservation_id) "
               "WHERE reservation_id IS NOT NULL")


def downgrade() -> None:
    op.execute(ORIGINAL_BALANCE_CHECK)
    op.execute("DROP INDEX compensations_reservation")
    op.execute("ALTER TABLE compensations ADD CONSTRAINT compensations_reservation_id_key UNIQUE (reservation_id)")
    op.execute("CREATE INDEX compensations_budget ON compensations (region, period)")
    op.execute("DROP TRIGGER journal_transactions_link ON journal_transactions")
    op.execute("DROP FUNCTION journal_link_exists()")
    op.execute("""CREATE FUNCTION journal_links_exist() RETURNS trigger LANGUAGE plpgsql AS $$
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
    END $$""")
    op.execute("""CREATE TRIGGER journal_transactions_links AFTER INSERT ON journal_transactions
        REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION journal_links_exist()""")
