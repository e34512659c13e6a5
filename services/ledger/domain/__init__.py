"""Pure ledger logic: periods, budget decisions, journal transactions and the book's state machine."""
