"""Checks a schema alone cannot make: region in the catalogue, money in its currency, clock skew."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from services.intake.domain.items import PAST_TIMESTAMPS, ProducerFields
from shared.contracts.registry import money_fields
from shared.regions import RegionCatalogue, UnknownRegion


class Violation(NamedTuple):
    field: str  # path inside the item, e.g. ``order_amount.currency``
    message: str
    reason: str  # bounded vocabulary, used as a metric label


def item_errors(event_type: str, item: ProducerFields, *, now: datetime, max_skew: timedelta,
                regions: RegionCatalogue) -> list[Violation]:
    """Every business-rule violation of an already schema-valid item; empty when it may be accepted."""
    errors: list[Violation] = []
    try:
        currency = regions.get(item.region).currency
    except UnknownRegion:
        errors.append(Violation("region", f"unknown region {item.region!r}; see the region catalogue",
                                "unknown_region"))
    else:
        errors.extend(Violation(f"{path}.currency", f"must be {currency}, the currency of region {item.region}",
                                "currency")
                      for path, money in money_fields(item) if money.currency != currency)
    latest = now + max_skew
    timestamps = [("occurred_at", item.occurred_at)]
    timestamps += [(name, getattr(item, name)) for name in PAST_TIMESTAMPS.get(event_type, ())]
    errors.extend(Violation(name, f"lies in the future (more than {int(max_skew.total_seconds())} s ahead)",
                            "clock_skew")
                  for name, value in timestamps if value is not None and value > latest)
    return errors
