"""The one region filter of every listing query (audit core, approvals, corrective actions, workbench):
``operations.access.region_scope`` decides which regions a caller sees; this turns that into a bound
parameter and a predicate, so no query spells the "all regions" case its own way."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_COLUMN = re.compile(r"^(?:[a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class RegionFilter:
    sql: str  # a predicate to AND into a WHERE clause
    params: dict[str, Any]  # its bound parameter

    def bind(self, **params: Any) -> dict[str, Any]:
        """The query's other parameters with the filter's added."""
        return {**params, **self.params}


def region_filter(column: str, regions: Sequence[str] | None, *, param: str = "regions") -> RegionFilter:
    """``column`` in ``regions``; None means every region (no filter). ``column`` is an identifier written in
    the code (never user input): it is checked, and the regions are a bound array parameter."""
    if not _COLUMN.match(column) or not _COLUMN.match(param):
        raise ValueError(f"not a column name: {column!r}")
    return RegionFilter(f"(CAST(:{param} AS text[]) IS NULL OR {column} = ANY(CAST(:{param} AS text[])))",
                        {param: None if regions is None else list(regions)})
