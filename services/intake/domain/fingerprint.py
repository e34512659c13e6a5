"""Content fingerprint of an item: the same event id must always carry the same content."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def fingerprint(event_type: str, item_json: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the validated item (its ``model_dump(mode="json")``), so equal
    facts written differently (key order, ``Z`` vs ``+00:00``, omitted vs null optional fields) are the
    same content."""
    canonical = orjson.dumps({"event_type": event_type, "item": item_json}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
