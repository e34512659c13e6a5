"""Market comparison (issue 15 part 6): what other marketplaces give a buyer per scenario, and where each
active strategy's effective compensation sits against that range.

A region's reference file lists other marketplaces' published policies per scenario (ticket reason): a
fixed amount (minor units of the region's currency) or a percentage of the order value (optionally capped),
with its source and the date it was read. ``load_references`` validates it and names the offending field
(``references[2].amount_minor``). ``place`` puts a strategy's median amount against the scenario's
reference range: below the lowest reference, at (inside the range), or above the highest; a percentage
reference is turned into an amount at the period's average order value. A region *trails the best
reference* in a scenario when a strategy's median there is below the highest reference amount.

Pure: no I/O besides parsing the text it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.contracts.events import TicketReason

MAX_FILE_BYTES = 256 * 1024


class MarketFileError(ValueError):
    """A reference file that cannot be used; ``field`` is the path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


class Reference(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    marketplace: str = Field(min_length=1, max_length=80)
    policy: str = Field(min_length=1, max_length=120)
    scenario: TicketReason
    amount_minor: int | None = Field(default=None, gt=0, le=10**12,
                                     description="A fixed amount, in minor units of the region's currency.")
    percent_of_order: Decimal | None = Field(default=None, gt=0, le=100, max_digits=6, decimal_places=2)
    cap_minor: int | None = Field(default=None, gt=0, le=10**12, description="Upper bound of a percentage.")
    what: str = Field(min_length=1, max_length=300, description="What the buyer gets, in words.")
    source: str = Field(min_length=1, max_length=500, description="Where the policy is published.")
    as_of: date = Field(description="When the policy was read at its source.")
    status: Literal["example", "verified"] = Field(
        description="example: a plausible reference to be checked before relying on it; verified: checked "
                    "against the source on as_of.")

    @model_validator(mode="after")
    def _one_measure(self) -> Reference:
        if (self.amount_minor is None) == (self.percent_of_order is None):
            raise ValueError("give exactly one of amount_minor and percent_of_order")
        if self.cap_minor is not None and self.percent_of_order is None:
            raise ValueError("cap_minor applies to a percent_of_order reference only")
        return self

    def amount_at(self, order_minor: int | None) -> int | None:
        """The reference as an amount for an order of ``order_minor`` (None: a percentage without an order
        value). Half up to a whole minor unit."""
        if self.amount_minor is not None:
            return self.amount_minor
        if order_minor is None:
            return None
        assert self.percent_of_order is not None
        value = int((self.percent_of_order * order_minor / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        return min(value, self.cap_minor) if self.cap_minor is not None else value


class ReferenceFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str = Field(min_length=2, max_length=8)
    currency: str = Field(min_length=3, max_length=3)
    references: list[Reference] = Field(max_length=500)


def _field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "file"


def load_references(text: str | bytes, *, region: str, currency: str, today: date) -> ReferenceFile:
    """Parse and validate a region's reference file; ``MarketFileError`` names the field at fault."""
    if len(text) > MAX_FILE_BYTES:
        raise MarketFileError("file", f"larger than {MAX_FILE_BYTES} bytes")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MarketFileError("file", f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise MarketFileError("file", "expected a mapping with region, currency and references")
    try:
        parsed = ReferenceFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        raise MarketFileError(_field_path(loc), first["msg"]) from None
    if parsed.region != region:
        raise MarketFileError("region", f"the file is for {parsed.region!r}, not {region!r}")
    if parsed.currency != currency:
        raise MarketFileError("currency", f"{region} pays in {currency}, not {parsed.currency}")
    for i, ref in enumerate(parsed.references):
        if ref.as_of > today:
            raise MarketFileError(f"references[{i}].as_of", f"{ref.as_of} is in the future")
    return parsed


@dataclass(frozen=True, slots=True)
class Effective:
    """What a strategy gives in one scenario over the period: its live issued decisions (or, in shadow,
    would-issue ones) of its newest version there."""

    strategy: str
    scenario: str
    count: int
    median_minor: int
    version: int = 0
    shadow: bool = False
    median_share_bp: int | None = None  # of the decisions that carried the order value
    with_order_value: int = 0


def weighted_median(counts: Sequence[tuple[int, int]]) -> int | None:
    """Nearest-rank (lower) median of values given as (value, how many): the value of rank ceil(n / 2)."""
    n = sum(c for _, c in counts)
    if n <= 0:
        return None
    rank, seen = (n + 1) // 2, 0
    for value, c in sorted(counts):
        seen += c
        if seen >= rank:
            return value
    return None  # pragma: no cover - unreachable: seen reaches n


def place(effective: Sequence[Effective], references: Sequence[Reference], average_order_minor: int | None
          ) -> dict[str, Any]:
    """Each strategy and scenario against the scenario's reference range, and the scenarios where the
    region trails the best reference."""
    by_scenario: dict[str, list[tuple[Reference, int | None]]] = {}
    for ref in references:
        by_scenario.setdefault(ref.scenario.value, []).append((ref, ref.amount_at(average_order_minor)))
    rows = []
    trailing: dict[str, dict[str, Any]] = {}
    for e in sorted(effective, key=lambda x: (x.scenario, x.shadow, x.strategy)):
        refs = by_scenario.get(e.scenario, [])
        amounts = [a for _, a in refs if a is not None]
        low, high = (min(amounts), max(amounts)) if amounts else (None, None)
        if low is None or high is None:
            position = "no reference"
        elif e.median_minor < low:
            position = "below"
        elif e.median_minor > high:
            position = "above"
        else:
            position = "at"
        best = max(((r, a) for r, a in refs if a is not None), key=lambda x: x[1], default=None)
        row = {
            "strategy": e.strategy, "version": e.version, "shadow": e.shadow, "scenario": e.scenario,
            "decisions": e.count, "median_minor": e.median_minor,
            "median_pct_of_order": None if e.median_share_bp is None else e.median_share_bp / 100,
            "with_order_value": e.with_order_value,
            "median_pct_of_average_order": (None if not average_order_minor else
                                            round(100 * e.median_minor / average_order_minor, 2)),
            "reference_low_minor": low, "reference_high_minor": high, "position": position,
            "best_reference": None if best is None else f"{best[0].marketplace}: {best[0].policy}",
            "gap_to_best_minor": None if best is None else best[1] - e.median_minor,
        }
        rows.append(row)
        if best is not None and e.median_minor < best[1] and not e.shadow:  # a shadow strategy gives nothing yet
            t = trailing.setdefault(e.scenario, {"scenario": e.scenario, "best_minor": best[1],
                                                 "best_reference": row["best_reference"], "strategies": []})
            t["strategies"].append(e.strategy)
    unplaced = sorted(set(by_scenario) - {e.scenario for e in effective if not e.shadow})
    return {"strategies": rows, "trails_best_reference": bool(trailing),
            "trailing": [trailing[k] for k in sorted(trailing)], "scenarios_without_strategy": unplaced}


def reference_rows(references: Sequence[Reference], average_order_minor: int | None) -> list[dict[str, Any]]:
    return [{"marketplace": r.marketplace, "policy": r.policy, "scenario": r.scenario.value,
             "amount_minor": r.amount_minor,
             "percent_of_order": None if r.percent_of_order is None else str(r.percent_of_order),
             "cap_minor": r.cap_minor, "amount_at_average_order_minor": r.amount_at(average_order_minor),
             "what": r.what, "source": r.source, "as_of": r.as_of.isoformat(), "status": r.status}
            for r in references]
