"""The one rule for a voucher expiry reported before the voucher's validity ends (ledger and auto_comp).

A promotion system expires a voucher at the end of its validity (``valid_until`` of the compensation
that issued it), so ``voucher.expired`` should occur at or after that instant. One that occurs earlier
usually means an upstream clock or mapping error (the wrong voucher, the wrong time zone, a batch job run
with the wrong date), not a buyer-visible event; it is still applied (the promotion system says the
voucher can no longer be used), but flagged where people look: a metric, a WARNING log with its ids, the
compensation's lineage in the ledger and the decision record in auto_comp (docs/audit.md).

Clocks of upstream systems differ by seconds: an expiry up to ``EXPIRY_CLOCK_TOLERANCE`` early is the
same as on time (the skew intake accepts for event timestamps by default, INTAKE_MAX_CLOCK_SKEW_SECONDS).
"""

from __future__ import annotations

from datetime import datetime, timedelta

EXPIRY_CLOCK_TOLERANCE = timedelta(minutes=5)


def expired_early_by(valid_until: datetime | None, expired_at: datetime,
                     tolerance: timedelta = EXPIRY_CLOCK_TOLERANCE) -> timedelta | None:
    """How long before the end of its validity a voucher was reported expired, when that is more than the
    clock tolerance; None for an expiry on time (or a voucher without a validity)."""
    if valid_until is None:
        return None
    early = valid_until - expired_at
    return early if early > tolerance else None
