"""The one envelope every event travels in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@\-]+$")]
RegionCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,3}$")]


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (e.g. 2026-11-22T08:00:00Z)")
    return value.astimezone(UTC)


AwareDatetime = Annotated[datetime, AfterValidator(_aware_utc)]


def new_event_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """Metadata common to every event; ``payload`` is validated by the registered payload model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId = Field(description="Producer-chosen unique id; consumers deduplicate on it.")
    event_type: str = Field(pattern=r"^[a-z_]+\.[a-z_]+$", description="e.g. ticket.opened")
    schema_version: int = Field(ge=1, description="Version of the payload schema for event_type.")
    occurred_at: AwareDatetime = Field(description="When the business fact happened (UTC).")
    produced_at: AwareDatetime = Field(default_factory=utcnow, description="When this envelope was made.")
    source: str = Field(min_length=1, max_length=64, description="Producing system or service.")
    region: RegionCode
    correlation_id: str = Field(default_factory=new_event_id, max_length=128)
    causation_id: str | None = Field(default=None, max_length=128, description="Event id that caused this one.")
    traceparent: str | None = Field(default=None, max_length=55, description="W3C trace context.")
    payload: dict[str, Any]

    def caused(self, **fields: Any) -> dict[str, Any]:
        """Envelope fields for an event caused by this one (same correlation, causation = this id)."""
        return {"correlation_id": self.correlation_id, "causation_id": self.event_id,
                "traceparent": self.traceparent, "region": self.region, **fields}
