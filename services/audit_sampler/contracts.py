"""What audit_sampler consumes and produces."""

from __future__ import annotations

from shared.contracts.events import (
    AuditCorrectionIssued,
    LiabilityShare,
    LiableParty,
    ManualCompensationIssued,
    NonNegativeMoney,
    PartyType,
)
from shared.contracts.topics import Topic

CONSUMES = (Topic.MANUAL_COMPENSATIONS,)
PRODUCES = (Topic.AUDIT_CORRECTIONS,)
CORRECTION_EVENT = "audit.correction_issued"
SOURCE = "audit_sampler"

__all__ = ["CONSUMES", "CORRECTION_EVENT", "PRODUCES", "SOURCE", "AuditCorrectionIssued", "LiabilityShare",
           "LiableParty", "ManualCompensationIssued", "NonNegativeMoney", "PartyType"]
