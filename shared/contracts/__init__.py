"""Versioned event contracts shared by every service.

Every message on the bus is an :class:`Envelope` whose ``payload`` validates against the payload model
registered for ``(event_type, schema_version)``. The JSON Schemas in the repository's ``contracts/``
folder are generated from these models (``python -m shared.contracts export``) and a test fails when a
change breaks compatibility with them.
"""

from shared.contracts.envelope import Envelope, new_event_id
from shared.contracts.events import *  # noqa: F403
from shared.contracts.registry import REGISTRY, EventSpec, decode_envelope, payload_model
from shared.contracts.topics import Topic

__all__ = ["REGISTRY", "Envelope", "EventSpec", "Topic", "decode_envelope", "new_event_id", "payload_model"]
