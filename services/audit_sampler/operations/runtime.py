"""What the audit operations need besides the database: the policies and limits in force (reloaded in
place by the app's periodic tasks) and the corrections topic. Built once by ``app.build_app`` and handed to
the JSON API, the workbench and the periodic chores; there is no process-wide default, so a test or a second
app in one process runs on exactly the runtime it built."""

from __future__ import annotations

from dataclasses import dataclass

from services.audit_sampler.domain.authority import LimitsSet
from services.audit_sampler.domain.policy import PolicySet
from shared.contracts.topics import Topic


@dataclass
class Runtime:
    policies: PolicySet
    corrections_topic: str = Topic.AUDIT_CORRECTIONS.value
    limits: LimitsSet | None = None  # authority limits (approvals); None where no approval step runs

    def authority_limits(self) -> LimitsSet:
        if self.limits is None:
            raise RuntimeError("this runtime has no authority limits (approvals need them)")
        return self.limits
