"""Region catalogue: code, currency, ISO 4217 exponent and IANA time zone.

Regions are data. The default catalogue ships as ``regions.yaml`` next to this module; ``REGIONS_FILE``
names a replacement file, so a marketplace adds a region by configuration alone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

_DEFAULT_FILE = Path(__file__).with_name("regions.yaml")
_CODE = re.compile(r"^[A-Z]{2,3}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class RegionConfigError(ValueError):
    """The region catalogue file is malformed; the message names the file, entry and field."""


class UnknownRegion(KeyError):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return f"unknown region {self.code!r}"


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    name: str
    currency: str
    exponent: int
    timezone: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local(self, instant: datetime) -> datetime:
        """The instant on the region's wall clock (instant must be timezone-aware)."""
        if instant.tzinfo is None:
            raise ValueError("naive datetime: timestamps must be timezone-aware")
        return instant.astimezone(self.tz)


@dataclass(frozen=True, slots=True)
class RegionCatalogue:
    regions: dict[str, Region]

    def get(self, code: str) -> Region:
        try:
            return self.regions[code]
        except KeyError:
            raise UnknownRegion(code) from None

    def __contains__(self, code: object) -> bool:
        return code in self.regions

    def codes(self) -> list[str]:
        return sorted(self.regions)


def load_catalogue(path: str | Path) -> RegionCatalogue:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RegionConfigError(f"{path}: cannot read region catalogue: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("regions"), list):
        raise RegionConfigError(f"{path}: expected a mapping with a 'regions' list")
    regions: dict[str, Region] = {}
    for index, entry in enumerate(raw["regions"]):
        where = f"{path}: regions[{index}]"
        if not isinstance(entry, dict):
            raise RegionConfigError(f"{where}: expected a mapping")
        missing = {"code", "currency", "exponent", "timezone"} - entry.keys()
        if missing:
            raise RegionConfigError(f"{where}: missing field(s) {', '.join(sorted(missing))}")
        code, currency, exponent, tz = entry["code"], entry["currency"], entry["exponent"], entry["timezone"]
        if not isinstance(code, str) or not _CODE.match(code):
            raise RegionConfigError(f"{where}.code: {code!r} is not 2-3 upper-case letters")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise RegionConfigError(f"{where}.currency: {currency!r} is not an ISO 4217 code")
        if isinstance(exponent, bool) or not isinstance(exponent, int) or not 0 <= exponent <= 4:
            raise RegionConfigError(f"{where}.exponent: {exponent!r} must be an integer 0..4")
        try:
            ZoneInfo(str(tz))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise RegionConfigError(f"{where}.timezone: {tz!r} is not an IANA time zone") from exc
        if code in regions:
            raise RegionConfigError(f"{where}.code: duplicate region {code}")
        regions[code] = Region(code, str(entry.get("name", code)), currency, exponent, str(tz))
    if not regions:
        raise RegionConfigError(f"{path}: no regions defined")
    return RegionCatalogue(regions)


@lru_cache(maxsize=1)
def catalogue() -> RegionCatalogue:
    """The process-wide catalogue (REGIONS_FILE or the shipped default), loaded once."""
    return load_catalogue(os.environ.get("REGIONS_FILE") or _DEFAULT_FILE)


def region(code: str) -> Region:
    return catalogue().get(code)
