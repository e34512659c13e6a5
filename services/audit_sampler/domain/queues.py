"""Queue rules: daily capacity with highest-risk-first admission, SLA ages, leases.

Capacity and inclusion probability (the documented choice): a queue admits at most ``daily_capacity``
sampled items per local day. Over capacity, the lowest-risk unclaimed item is dropped (the newcomer if it
is the lowest). Mandatory items (amount threshold, weekly minimum) and gold items are never dropped.
Every drop is recorded, and the population keeps the design probability ``p``; for estimation each kept
non-mandatory item of that queue-day gets ``effective p = p * kept / selected``, treating capacity drops
as a second-phase subsample of the day's selection (the usual non-response weighting adjustment).
Because drops favour high risk, this adjustment is approximate for low-risk strata; the report shows how
many items were dropped so a reader can judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from shared.regions import Region


@dataclass(frozen=True)
class Candidate:
    key: str  # compensation id
    risk: float
    existing: bool  # already admitted (queued, unclaimed) vs arriving now


def fill_queue_day(capacity: int | None, fixed: int, candidates: list[Candidate]) -> tuple[
        list[Candidate], list[Candidate]]:
    """Split droppable candidates of one queue-day into (kept, dropped), highest risk kept.

    ``fixed`` counts the day's droppable items that can no longer be dropped (claimed or audited);
    ``candidates`` are the queued ones that still can be, plus the newcomers. On equal risk the item that
    was there first stays, so admission never churns between equals.
    """
    if capacity is None:
        return list(candidates), []
    slots = max(0, capacity - fixed)
    ranked = sorted(candidates, key=lambda c: (-c.risk, not c.existing))
    return ranked[:slots], ranked[slots:]


def effective_probability(probability: float, kept: int, selected: int) -> float:
    """Design probability times the share of the queue-day's selection that capacity kept."""
    if selected <= 0 or kept >= selected:
        return probability
    return probability * kept / selected


def local_day(region: Region, instant: datetime) -> date:
    return region.local(instant).date()


def sla_due(enqueued_at: datetime, sla_hours: int) -> datetime:
    return enqueued_at + timedelta(hours=sla_hours)


def lease_expiry(now: datetime, lease_seconds: int) -> datetime:
    return now + timedelta(seconds=lease_seconds)
