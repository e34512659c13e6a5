"""What became of an issued voucher: vouchers.lifecycle.v1 -> ``voucher_lifecycle``, shown on the decision.

The promotion system reports a voucher redeemed, expired or revoked. The ledger moves the money (posts,
releases, settles the liable parties' charge); here the decision record learns that the compensation it
issued is closed, so ``GET /v1/decisions/{ticket}`` no longer shows an expired voucher as still issued.
A voucher closes once: the first lifecycle event of a compensation is kept, later ones change nothing
(the ledger applies the same rule). Events of compensations auto_comp did not issue (manual ones travel
on the same topic) are skipped.

An expiry reported before the voucher's validity ended (``shared.vouchers``, beyond the clock tolerance)
is recorded as an expiry all the same, with how early it came, so the decision shows it and
``auto_comp_voucher_lifecycle_total{early="true"}`` counts it; the ledger logs it and flags the lineage.

Its own table, not columns of ``compensations``: that row is rewritten on every step of the budget saga
and carries its indexes; a voucher's close is written once and read only with the decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.auto_comp import metrics
from shared.contracts import events as ev
from shared.kafka import Delivered
from shared.vouchers import expired_early_by

STATES: dict[type, str] = {ev.VoucherRedeemed: "redeemed", ev.VoucherExpired: "expired", ev.VoucherRevoked: "revoked"}

_ISSUED = text(
    "SELECT compensation_id, region, kind, expires_at FROM compensations "
    "WHERE compensation_id = ANY(CAST(:ids AS text[])) AND status = 'issued'")
_INSERT = text(
    "INSERT INTO voucher_lifecycle (compensation_id, region, state, occurred_at, event_id, valid_until, "
    "expired_early_by_seconds) SELECT * FROM unnest(CAST(:c AS text[]), CAST(:r AS text[]), CAST(:s AS text[]), "
    "CAST(:t AS timestamptz[]), CAST(:e AS text[]), CAST(:v AS timestamptz[]), CAST(:x AS bigint[])) "
    "ON CONFLICT (compensation_id) DO NOTHING RETURNING region, state, expired_early_by_seconds IS NOT NULL")


class VoucherLifecycleHandler:
    """One read and one insert per batch, whatever its size."""

    consumes = frozenset({"voucher.redeemed", "voucher.expired", "voucher.revoked"})

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        first: dict[str, tuple[str, Delivered]] = {}
        for d in events:
            state = STATES[type(d.payload)]  # the runner lets only ``consumes`` through
            first.setdefault(d.payload.compensation_id, (state, d))  # type: ignore[attr-defined]
        if not first:
            return
        issued = {r[0]: r for r in await conn.execute(_ISSUED, {"ids": list(first)})}
        rows: list[tuple[str, str, str, datetime, str, datetime | None, int | None]] = []
        for cid, (state, d) in first.items():
            comp = issued.get(cid)
            if comp is None:
                metrics.VOUCHER_LIFECYCLE_SKIPPED.inc()
                continue
            valid_until = comp[3] if comp[2] == "voucher" else None
            early = expired_early_by(valid_until, d.envelope.occurred_at) if state == "expired" else None
            rows.append((cid, comp[1], state, d.envelope.occurred_at, d.envelope.event_id, valid_until,
                         None if early is None else int(early.total_seconds())))
        if not rows:
            return
        result = await conn.execute(_INSERT, {
            "c": [r[0] for r in rows], "r": [r[1] for r in rows], "s": [r[2] for r in rows],
            "t": [r[3] for r in rows], "e": [r[4] for r in rows], "v": [r[5] for r in rows],
            "x": [r[6] for r in rows]})
        for region, state, early in result.all():
            metrics.VOUCHER_LIFECYCLE.labels(region, state, "true" if early else "false").inc()
