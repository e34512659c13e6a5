"""From raw JSON items to per-item outcomes: validate, check, fingerprint, then settle against what
the database already holds. One bad item never affects the others."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from services.intake.domain.checks import Violation, item_errors
from services.intake.domain.fingerprint import fingerprint
from services.intake.domain.items import ITEM_MODELS, ProducerFields
from shared.regions import RegionCatalogue


class Status(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Candidate:
    """An item that passed every check and still has to be settled against stored event ids."""

    index: int
    item: ProducerFields
    data: dict[str, Any]  # the item as JSON, dumped once: fingerprinted, then carried as the payload
    fingerprint: str


@dataclass
class Outcome:
    index: int
    event_id: str | None
    status: Status
    region: str  # metric label: a catalogue code or "unknown"
    errors: list[Violation] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.errors[0].reason if self.errors else ""


@dataclass
class Screened:
    event_type: str
    rejected: list[Outcome]
    candidates: list[Candidate]  # first occurrence of each event id, in request order
    repeats: list[Candidate]  # later items reusing an event id seen earlier in the same request


WHOLE_ITEM = "(item)"  # field of an error about the item as a whole (e.g. a contract's cross-field rule)


def _schema_violations(exc: ValidationError) -> list[Violation]:
    return [Violation(".".join(str(p) for p in err["loc"]) or WHOLE_ITEM, err["msg"], "schema")
            for err in exc.errors(include_url=False)]


def _region_label(raw: Any, regions: RegionCatalogue) -> str:
    value = raw.get("region") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and value in regions else "unknown"


def _event_id_of(raw: Any) -> str | None:
    value = raw.get("event_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and len(value) <= 128 else None


def screen(event_type: str, raw_items: Sequence[Any], *, now: datetime, max_skew: timedelta,
           regions: RegionCatalogue, may_send_to: Callable[[str], bool]) -> Screened:
    model = ITEM_MODELS[event_type]
    result = Screened(event_type, [], [], [])
    seen: set[str] = set()
    for index, raw in enumerate(raw_items):
        region = _region_label(raw, regions)
        try:
            item = model.model_validate(raw)
        except ValidationError as exc:
            result.rejected.append(Outcome(index, _event_id_of(raw), Status.REJECTED, region,
                                           _schema_violations(exc)))
            continue
        errors = item_errors(event_type, item, now=now, max_skew=max_skew, regions=regions)
        if not errors and not may_send_to(item.region):
            errors = [Violation("region", f"this credential may not send events for region {item.region}",
                                "forbidden_region")]
        if errors:
            result.rejected.append(Outcome(index, item.event_id, Status.REJECTED, region, errors))
            continue
        data = item.model_dump(mode="json")
        candidate = Candidate(index, item, data, fingerprint(event_type, data))
        if item.event_id in seen:
            result.repeats.append(candidate)
        else:
            seen.add(item.event_id)
            result.candidates.append(candidate)
    return result


def _conflict(candidate: Candidate, region: str) -> Outcome:
    return Outcome(candidate.index, candidate.item.event_id, Status.CONFLICT, region, [Violation(
        "event_id", f"event id {candidate.item.event_id} was already received with different content",
        "conflict")])


def settle(screened: Screened, stored: Mapping[str, str | None]) -> list[Outcome]:
    """Outcomes of every item, in request order. ``stored`` maps each candidate's event id to the
    fingerprint already on record, or None when this request stored it."""
    outcomes = list(screened.rejected)
    on_record: dict[str, str] = {}
    for c in screened.candidates:
        region = c.item.region
        previous = stored[c.item.event_id]
        if previous is None:
            on_record[c.item.event_id] = c.fingerprint
            outcomes.append(Outcome(c.index, c.item.event_id, Status.ACCEPTED, region))
        else:
            on_record[c.item.event_id] = previous
            outcomes.append(Outcome(c.index, c.item.event_id, Status.DUPLICATE, region)
                            if previous == c.fingerprint else _conflict(c, region))
    for c in screened.repeats:
        outcomes.append(Outcome(c.index, c.item.event_id, Status.DUPLICATE, c.item.region)
                        if on_record[c.item.event_id] == c.fingerprint else _conflict(c, c.item.region))
    outcomes.sort(key=lambda o: o.index)
    return outcomes
