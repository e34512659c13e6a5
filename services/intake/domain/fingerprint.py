"""Content fingerprint of an item: the same event id must always carry the same content."""

from __future__ import annotations

import hashlib

import orjson

from services.intake.domain.items import ProducerFields


def fingerprint(event_type: str, item: ProducerFields) -> str:
    """SHA-256 of the canonical JSON of the validated item, so equal facts written differently
    (key order, ``Z`` vs ``+00:00``, omitted vs null optional fields) are the same content."""
    canonical = orjson.dumps({"event_type": event_type, "item": item.model_dump(mode="json")},
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
