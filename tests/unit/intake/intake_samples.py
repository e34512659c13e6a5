"""Valid sample items for every intake event type (one per type, in region SG, money in SGD)."""

from __future__ import annotations

import copy
from typing import Any

from services.intake.domain.items import ITEM_MODELS


def sample(event_type: str, **overrides: Any) -> dict[str, Any]:
    """The OpenAPI example of ``event_type`` (so the examples are proven valid), with overrides."""
    extra: Any = ITEM_MODELS[event_type].model_config.get("json_schema_extra")
    item = copy.deepcopy(extra["examples"][0])
    item.update(overrides)
    return item
