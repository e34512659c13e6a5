"""API keys of upstream systems: what a key may send, and where."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.regions import RegionCatalogue

ANY = "*"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    system_name: str
    key_hash: str
    regions: frozenset[str]
    event_types: frozenset[str]
    rate_limit_per_second: int
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class ScopeError(ValueError):
    pass


def parse_scope(raw: str, allowed: list[str] | tuple[str, ...], what: str) -> list[str]:
    """A comma-separated scope (``SG,US`` or ``*``), checked against what exists."""
    values = sorted({v.strip() for v in raw.split(",") if v.strip()})
    if not values:
        raise ScopeError(f"no {what} given")
    if ANY in values:
        if len(values) > 1:
            raise ScopeError(f"{what}: '*' means all and cannot be combined with others")
        return [ANY]
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ScopeError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(allowed)})")
    return values


def parse_regions(raw: str, regions: RegionCatalogue) -> list[str]:
    return parse_scope(raw, regions.codes(), "regions")
