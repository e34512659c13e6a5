"""Checks a schema alone cannot make: region in the catalogue, money in its currency, clock skew."""

from __future__ import annotations

import types
import typing
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from pydantic import BaseModel

from services.intake.domain.items import PAST_TIMESTAMPS, ProducerFields
from shared.contracts.events import MoneyAmount
from shared.contracts.registry import money_fields
from shared.regions import RegionCatalogue, UnknownRegion


class Violation(NamedTuple):
    field: str  # path inside the item, e.g. ``order_amount.currency``
    message: str
    reason: str  # bounded vocabulary, used as a metric label


def _classes(annotation: Any) -> list[type]:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return [annotation]
    found: list[type] = []
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and origin is not types.UnionType:
        found.append(origin)
    for arg in typing.get_args(annotation):
        found.extend(_classes(arg))
    return found


@cache
def _money_layout(model: type[BaseModel]) -> tuple[str, ...] | None:
    """Names of the top-level money fields of ``model``; None when money also sits deeper (then the
    generic, slower walk is needed). Worked out once per model: the batch path checks thousands of items."""
    direct: list[str] = []
    for name, info in model.model_fields.items():
        for cls in _classes(info.annotation):
            if issubclass(cls, MoneyAmount):
                direct.append(name)
            elif issubclass(cls, BaseModel) and (_money_layout(cls) is None or _money_layout(cls)):
                return None
    return tuple(direct)


def money_of(item: BaseModel) -> list[tuple[str, MoneyAmount]]:
    layout = _money_layout(type(item))
    if layout is None:
        return money_fields(item)
    return [(name, value) for name in layout if (value := getattr(item, name)) is not None]


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
                      for path, money in money_of(item) if money.currency != currency)
    latest = now + max_skew
    timestamps = [("occurred_at", item.occurred_at)]
    timestamps += [(name, _at_path(item, name)) for name in PAST_TIMESTAMPS.get(event_type, ())]
    errors.extend(Violation(name, f"lies in the future (more than {int(max_skew.total_seconds())} s ahead)",
                            "clock_skew")
                  for name, value in timestamps if value is not None and value > latest)
    day = getattr(item, "day", None) if event_type == "order.volume_reported" else None
    if day is not None and not any(e.field == "region" for e in errors):
        # A day's volume can only be reported once the day has begun on the region's wall clock.
        today = regions.get(item.region).local(latest).date()
        if day > today:
            errors.append(Violation("day", f"{day} has not begun yet in region {item.region}", "clock_skew"))
    return errors


def _at_path(item: Any, path: str) -> Any:
    """``case.delivered_at`` -> item.case.delivered_at (None when a step is absent)."""
    value = item
    for step in path.split("."):
        value = getattr(value, step, None)
        if value is None:
            return None
    return value
