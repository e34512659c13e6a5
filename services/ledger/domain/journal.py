"""Journal transactions: two or more entries that sum to zero per currency, never changed once posted.

Sign convention: a positive amount is a debit, a negative one a credit.

Accounts (per region, in the region's currency):
- ``seller:<id>``, ``carrier:<id>``, ``platform``: liable parties; their debit balance is what they were
  charged for compensations.
- ``compensation_payable``: what the marketplace owes buyers for compensations issued (credit).
- ``compensation_expense``: compensation value actually spent out of budgets (debit).
- ``budget:<period>``: the regional budget of a period; its credit balance is the spend posted to it.

Transaction kinds:
- ``charge``: Dr liable parties (by share) / Cr compensation_payable, when a compensation is issued; again
  (linked to the charge it replaces) after an audit correction or when an automatic voucher closes.
- ``budget_posting``: Dr compensation_expense / Cr budget:<period>, when spend is posted to the budget: one
  per batch, budget period and currency for all the spend the batch posts (the hot budget account is
  written once per batch); each compensation keeps the id of the posting that carries its part (lineage).
- ``reversal``: the exact negation of an earlier transaction, pointing at it.

Stored as transfers (ADR 0013): every line of a transaction is one (debit account, credit account, amount)
row, balanced by construction. A transaction's entries become transfers by pairing each entry with the one
entry of opposite sign (every kind above has a single credit, or a single debit): a charge split over two
parties is two transfers (each party -> payable), a budget posting one. ``transfers`` does the pairing.

A compensation has at most one live (unreversed) charge. An automatic voucher is charged at face value
when issued; when it closes (redeemed, expired, revoked, or lapsed and swept) the live charge is reversed
and the value the buyer received is charged again to the same parties pro rata, so the liable parties end
up charged for what the buyer received, as the budget does (``book.Book._settle``, ADR 0005).
"""

from __future__ import annotations

import enum
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import NamedTuple

PAYABLE = "compensation_payable"
EXPENSE = "compensation_expense"
_PARTY = re.compile(r"^(platform|(seller|carrier):[A-Za-z0-9._:@\-]{1,128})$")
_BUDGET = re.compile(r"^budget:\d{4}-\d{2}(-\d{2})?$")


class TxKind(enum.StrEnum):
    CHARGE = "charge"
    BUDGET_POSTING = "budget_posting"
    REVERSAL = "reversal"


class UnbalancedTransaction(ValueError):
    pass


class UnknownAccount(ValueError):
    pass


def budget_account(period: str) -> str:
    return f"budget:{period}"


def is_party_account(key: str) -> bool:
    return bool(_PARTY.match(key))


@lru_cache(maxsize=65_536)
def check_account_key(key: str) -> str:
    if key in (PAYABLE, EXPENSE) or _PARTY.match(key) or _BUDGET.match(key):
        return key
    raise UnknownAccount(f"{key!r} is not a ledger account (seller:<id>, carrier:<id>, platform, "
                         f"{PAYABLE}, {EXPENSE}, budget:<period>)")


def party_type(key: str) -> str:
    return key.split(":", 1)[0]


class Entry(NamedTuple):
    """One line of a transaction; a named tuple (immutable, and cheap to build on the hot path)."""

    account: str
    amount_minor: int  # + debit, - credit
    currency: str


class _TransactionFields(NamedTuple):
    tx_id: str
    kind: TxKind
    region: str
    compensation_id: str
    source_event_id: str
    occurred_at: datetime
    entries: tuple[Entry, ...]
    reverses_tx_id: str | None = None
    corrects_tx_id: str | None = None
    correction_id: str | None = None


class Transaction(_TransactionFields):
    """A balanced journal transaction: immutable (a named tuple), checked when it is built."""

    __slots__ = ()

    def __new__(cls, tx_id: str, kind: TxKind, region: str, compensation_id: str, source_event_id: str,
                occurred_at: datetime, entries: tuple[Entry, ...], reverses_tx_id: str | None = None,
                corrects_tx_id: str | None = None, correction_id: str | None = None) -> Transaction:
        self = super().__new__(cls, tx_id, kind, region, compensation_id, source_event_id, occurred_at, entries,
                               reverses_tx_id, corrects_tx_id, correction_id)
        self._check()
        return self

    def _check(self) -> None:
        entries = self.entries
        if len(entries) < 2:
            raise UnbalancedTransaction(f"{self.tx_id}: a transaction needs two or more entries")
        currency, total, mixed = entries[0].currency, 0, False
        for e in entries:
            if type(e.amount_minor) is not int or e.amount_minor == 0:
                raise UnbalancedTransaction(f"{self.tx_id}: entry amounts must be non-zero ints")
            check_account_key(e.account)
            total += e.amount_minor
            mixed = mixed or e.currency != currency
        if mixed:
            totals: dict[str, int] = defaultdict(int)
            for e in entries:
                totals[e.currency] += e.amount_minor
            unbalanced = {c: t for c, t in totals.items() if t != 0}
        else:
            unbalanced = {currency: total} if total else {}
        if unbalanced:
            raise UnbalancedTransaction(f"{self.tx_id}: entries do not sum to zero: {unbalanced}")


class Transfer(NamedTuple):
    """One stored line of a transaction: ``amount`` (> 0) from ``debit`` to ``credit``."""

    debit: str
    credit: str
    amount: int


def transfers(tx: Transaction) -> list[Transfer]:
    """The transaction's entries as transfers: each entry paired with the single entry of opposite sign."""
    debits = [e for e in tx.entries if e.amount_minor > 0]
    credits = [e for e in tx.entries if e.amount_minor < 0]
    if len(credits) == 1:
        return [Transfer(d.account, credits[0].account, d.amount_minor) for d in debits]
    if len(debits) == 1:
        return [Transfer(debits[0].account, c.account, -c.amount_minor) for c in credits]
    raise UnbalancedTransaction(f"{tx.tx_id}: several debits and several credits cannot be stored as transfers")


def entries_of(lines: list[Transfer]) -> list[tuple[str, int]]:
    """A transaction's transfers back as its signed entries, one per account, in the order transactions are
    built: liable parties (or expense) first, payable (or the budget) last."""
    totals: dict[str, int] = {}
    for t in lines:
        totals[t.debit] = totals.get(t.debit, 0) + t.amount
        totals[t.credit] = totals.get(t.credit, 0) - t.amount
    return sorted(totals.items(), key=lambda x: x[0] == PAYABLE or x[0].startswith("budget:"))


def charge(*, tx_id: str, region: str, currency: str, compensation_id: str, source_event_id: str,
           occurred_at: datetime, shares: Iterable[tuple[str, int]], corrects_tx_id: str | None = None,
           correction_id: str | None = None) -> Transaction:
    """Dr each liable party its share, Cr payable the total. Zero shares carry no entry."""
    debits = [Entry(check_account_key(party), amount, currency) for party, amount in shares if amount != 0]
    if any(e.amount_minor < 0 for e in debits):
        raise UnbalancedTransaction(f"{tx_id}: liability shares cannot be negative")
    total = sum(e.amount_minor for e in debits)
    return Transaction(tx_id, TxKind.CHARGE, region, compensation_id, source_event_id, occurred_at,
                       (*debits, Entry(PAYABLE, -total, currency)), corrects_tx_id=corrects_tx_id,
                       correction_id=correction_id)


def budget_posting(*, tx_id: str, region: str, currency: str, period: str, compensation_id: str | None,
                   source_event_id: str, occurred_at: datetime, amount: int) -> Transaction:
    """Dr expense / Cr the period's budget. ``compensation_id`` is None for a batch's posting of several."""
    return Transaction(tx_id, TxKind.BUDGET_POSTING, region, compensation_id,  # type: ignore[arg-type]
                       source_event_id, occurred_at,
                       (Entry(EXPENSE, amount, currency), Entry(budget_account(period), -amount, currency)))


def reversal(original: Transaction | None, *, tx_id: str, source_event_id: str, occurred_at: datetime,
             entries: tuple[Entry, ...] | None = None, region: str | None = None,
             compensation_id: str | None = None, reverses_tx_id: str | None = None,
             correction_id: str | None = None) -> Transaction:
    """The negation of ``original`` (or of its stored ``entries``), linked to it."""
    if original is not None:
        entries, region = original.entries, original.region
        compensation_id, reverses_tx_id = original.compensation_id, original.tx_id
    assert entries is not None and region and compensation_id and reverses_tx_id
    return Transaction(tx_id, TxKind.REVERSAL, region, compensation_id, source_event_id, occurred_at,
                       tuple(Entry(e.account, -e.amount_minor, e.currency) for e in entries),
                       reverses_tx_id=reverses_tx_id, correction_id=correction_id)
