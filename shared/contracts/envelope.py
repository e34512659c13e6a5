"""The one envelope every event travels in, and the bounds every contract shares (ADR 0006, "Bounds").

What a contract accepts, every consumer can store and process: a timestamp is an RFC 3339 string whose
instant lies in [1970-01-01T00:00:00Z, 2200-01-01T00:00:00Z), so that no consumer's arithmetic on it (a
period cut in a region's time zone, an expiry plus a grace) leaves the range of Python and PostgreSQL; no
string holds a NUL (PostgreSQL ``text`` and ``jsonb`` cannot), and one-line strings (ids, sources) hold
no control character at all.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

# The span of instants the platform accepts anywhere (events, query parameters, periods). Far wider than any
# business fact (orders, deliveries, vouchers valid for years) and far inside what every store and every
# date computation can hold: a local day, month or period in the span, plus or minus days of grace or
# windows, never leaves years 1..9999.
EARLIEST_YEAR = 1970
LATEST_YEAR = 2199
EARLIEST = datetime(EARLIEST_YEAR, 1, 1, tzinfo=UTC)
END = datetime(LATEST_YEAR + 1, 1, 1, tzinfo=UTC)  # excluded

# JSON Schema patterns (ECMA 262 and Python alike) of the string rules: NO_NUL for free text, ONE_LINE for
# ids and names that travel in Kafka headers and logs. Checked by the NoNul and OneLine validators (clearer
# messages than a pattern's), published as patterns by ``text_schema``.
NO_NUL = r"^[^\u0000]*$"
ONE_LINE = r"^[^\u0000-\u001f\u007f]*$"

_MD = r"(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_TIME = r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
_HHMM = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
_ANY_OFFSET = rf"(?:[Zz]|[+-]{_HHMM})"
# RFC 3339 date-time (``T`` or ``t`` between date and time, seconds required, an offset required, leap
# seconds refused: no store can hold them; fractions beyond microseconds are truncated), with the instant
# inside the span. That is the written date in 1970..2199, except that on the span's first day the offset
# may not be ahead of UTC and on its last day not behind it (either would put the instant outside).
_INSIDE = (r"(?:(?:197[1-9]|19[89][0-9]|20[0-9]{2}|21[0-8][0-9]|219[0-8])-" + _MD
           + r"|1970-(?:(?:0[2-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])|01-(?:0[2-9]|[12][0-9]|3[01]))"
           + r"|2199-(?:(?:0[1-9]|1[01])-(?:0[1-9]|[12][0-9]|3[01])|12-(?:0[1-9]|[12][0-9]|30)))")
TIMESTAMP_PATTERN = (rf"^(?:{_INSIDE}{_TIME}{_ANY_OFFSET}"
                     rf"|1970-01-01{_TIME}(?:[Zz]|[+-]00:00|-{_HHMM})"
                     rf"|2199-12-31{_TIME}(?:[Zz]|[+-]00:00|\+{_HHMM}))$")
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
_RFC3339 = re.compile(rf"[0-9]{{4}}-{_MD}{_TIME}{_ANY_OFFSET}")
DATE_PATTERN = rf"^(?:19[7-9][0-9]|2[01][0-9]{{2}})-{_MD}$"
MONTH_PATTERN = r"^(?:19[7-9][0-9]|2[01][0-9]{2})-(?:0[1-9]|1[0-2])$"

TIMESTAMP_EXAMPLE = "2026-11-22T08:00:00Z"
_SYNTAX = f"must be an RFC 3339 date-time string with an offset (e.g. {TIMESTAMP_EXAMPLE})"
_RANGE = ("must lie between 1970-01-01T00:00:00Z and 2199-12-31T23:59:59Z (on those two days, written in UTC "
          "or with an offset that keeps it inside)")


def _timestamp(value: Any) -> datetime:
    """An RFC 3339 string inside the span (exactly: no numbers, no naive or date-only forms), or from Python
    a timezone-aware datetime inside the span; normalised to UTC. One regex and the C parser: intake runs
    this for every timestamp of every item."""
    if isinstance(value, datetime):
        return _aware_utc(value)
    if not isinstance(value, str):
        raise ValueError(_SYNTAX)
    if _TIMESTAMP.match(value) is None:
        raise ValueError(_RANGE if _RFC3339.fullmatch(value) else _SYNTAX)
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:  # a day the month does not have
        raise ValueError(f"{_SYNTAX}; {value!r} is not a calendar date and time") from None
    return parsed.astimezone(UTC)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamp must be timezone-aware (e.g. {TIMESTAMP_EXAMPLE})")
    if not EARLIEST_YEAR - 1 <= value.year <= LATEST_YEAR + 1:
        raise ValueError(_RANGE)  # before converting: a year at the ends of datetime's range overflows
    utc = value.astimezone(UTC)
    if not EARLIEST <= utc < END:
        raise ValueError(_RANGE)
    return utc


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (U+0000)")
    return value


def _one_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (U+0000 to U+001F, U+007F)")
    return value


NoNul = AfterValidator(_no_nul)
OneLine = AfterValidator(_one_line)


def text_schema(max_length: int, *, min_length: int = 0, one_line: bool = False) -> WithJsonSchema:
    """The JSON Schema of a string type checked by ``NoNul`` or ``OneLine``: the same rule as a pattern.
    Use as ``Annotated[str, StringConstraints(max_length=...), NoNul, text_schema(...)]``."""
    schema: dict[str, Any] = {"type": "string", "maxLength": max_length, "pattern": ONE_LINE if one_line else NO_NUL}
    if min_length:
        schema["minLength"] = min_length
    return WithJsonSchema(schema)


def check_date(value: date) -> date:
    """A calendar date (query parameter, period) in the platform's span of years; ValueError otherwise."""
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"must lie in the years {EARLIEST_YEAR} to {LATEST_YEAR}")
    return value


_TIMESTAMP_SCHEMA = {"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN,
                     "examples": [TIMESTAMP_EXAMPLE]}

# A timezone-aware instant normalised to UTC: an RFC 3339 string in JSON, a datetime from Python.
AwareDatetime = Annotated[datetime, BeforeValidator(_timestamp), WithJsonSchema(_TIMESTAMP_SCHEMA)]
# A calendar date (``YYYY-MM-DD``) in the same span of years, for query parameters.
BoundedDate = Annotated[date, AfterValidator(check_date),
                        WithJsonSchema({"type": "string", "format": "date", "pattern": DATE_PATTERN})]

EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@\-]+$")]
RegionCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,3}$")]
# Correlation and causation ids: opaque, one line (they become Kafka headers and log fields).
TraceId = Annotated[str, StringConstraints(min_length=1, max_length=128), OneLine,
                    text_schema(128, min_length=1, one_line=True)]
# W3C trace context, passed on as a Kafka header. Intake takes only the W3C form (``W3C_TRACEPARENT``);
# consumers take any one-line value, so events published before that rule still decode.
W3C_TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
TraceParent = Annotated[str, StringConstraints(min_length=1, max_length=55), OneLine,
                        text_schema(55, min_length=1, one_line=True)]
SourceName = Annotated[str, StringConstraints(min_length=1, max_length=64), OneLine,
                       text_schema(64, min_length=1, one_line=True)]


def new_event_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """Metadata common to every event; ``payload`` is validated by the registered payload model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId = Field(description="Producer-chosen unique id; consumers deduplicate on it.")
    event_type: str = Field(pattern=r"^[a-z_]+\.[a-z_]+$", max_length=64, description="e.g. ticket.opened")
    schema_version: int = Field(ge=1, le=1000, description="Version of the payload schema for event_type.")
    occurred_at: AwareDatetime = Field(description="When the business fact happened (UTC).")
    produced_at: AwareDatetime = Field(default_factory=utcnow, description="When this envelope was made.")
    source: SourceName = Field(description="Producing system or service.")
    region: RegionCode
    correlation_id: TraceId = Field(default_factory=new_event_id)
    causation_id: TraceId | None = Field(default=None, description="Event id that caused this one.")
    traceparent: TraceParent | None = Field(default=None, description="W3C trace context.")
    payload: dict[str, Any]

    def caused(self, **fields: Any) -> dict[str, Any]:
        """Envelope fields for an event caused by this one (same correlation, causation = this id)."""
        return {"correlation_id": self.correlation_id, "causation_id": self.event_id,
                "traceparent": self.traceparent, "region": self.region, **fields}
