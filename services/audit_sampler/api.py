"""JSON API of the audit workbench: queues, claims, verdicts, disputes, gold items (bearer tokens)."""


from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from services.audit_sampler.domain.verdicts import ATTRIBUTES, Share, VerdictInput
from services.audit_sampler.operations import claims, verdicts
from services.audit_sampler.operations import disputes as dispute_ops
from services.audit_sampler.operations import gold as gold_ops
from services.audit_sampler.operations.runtime import Runtime
from services.audit_sampler.problems import AuditErrorRoute
from shared.auth import Authenticator, Principal
from shared.contracts.envelope import Identifier, NoNul, OneLine, text_schema
from shared.contracts.events import ManualCompensationIssued, NonNegativeAmountMinor
from shared.http import JsonBodyRoute, Problem, problems
from shared.regions import catalogue
from shared.service import ServiceContext

ItemId = Annotated[int, Path(ge=1, le=2**62)]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")]
RegionCode = Annotated[str, Path(pattern=r"^[A-Z]{2,3}$")]
Note = Annotated[str, StringConstraints(max_length=2000), NoNul, text_schema(2000)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000), NoNul, text_schema(2000, min_length=1)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128), OneLine,
                   text_schema(128, min_length=1, one_line=True)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Party(_Body):
    type: Literal["seller", "carrier", "platform"]
    id: Identifier | None = None


class ShareBody(_Body):
    party: Party
    amount_minor: NonNegativeAmountMinor


class Attributes(_Body):
    warranted: StrictBool
    amount_correct: StrictBool
    kind_correct: StrictBool
    liable_party_correct: StrictBool
    evidence_sufficient: StrictBool
    policy_compliant: StrictBool
    not_duplicate: StrictBool


class VerdictBody(_Body):
    attributes: Attributes
    passed: StrictBool = Field(description="True exactly when every attribute is true.")
    error_category: Code | None = None
    note: Note | None = None
    corrected_amount_minor: NonNegativeAmountMinor | None = Field(
        default=None, description="Required when amount_correct is false (integer minor units).")
    corrected_liability: list[ShareBody] | None = Field(
        default=None, max_length=10, description="Required when liable_party_correct is false.")

    def to_input(self) -> VerdictInput:
        shares = None if self.corrected_liability is None else tuple(
            Share(s.party.type, s.party.id, s.amount_minor) for s in self.corrected_liability)
        return VerdictInput(attributes=self.attributes.model_dump(), passed=self.passed,
                            error_category=self.error_category, note=self.note,
                            corrected_amount_minor=self.corrected_amount_minor, corrected_liability=shares)


class ReassignBody(_Body):
    auditor_id: UserId


class DisputeBody(_Body):
    reason: Reason


class ResolveBody(_Body):
    outcome: Literal["uphold", "overturn"]
    note: Note | None = None


class GoldBody(_Body):
    region: Annotated[str, Field(pattern=r"^[A-Z]{2,3}$")]
    queue: Code | None = None
    compensation: ManualCompensationIssued = Field(
        description="A manual compensation (compensations.manual.v1 payload) in the region's currency.")
    expected: Attributes = Field(description="The known answer: how each attribute must be scored.")


class AuditApiRoute(JsonBodyRoute, AuditErrorRoute):
    """JSON bodies only (JsonBodyRoute); audit refusals answered as problem details (AuditErrorRoute)."""


def build_api_router(ctx: ServiceContext, runtime: Runtime) -> APIRouter:
    auth = Authenticator(ctx.tokens)
    engine = ctx.engine
    router = APIRouter(prefix="/v1", tags=["audit"], route_class=AuditApiRoute)
    Caller = Annotated[Principal, Depends(auth)]

    @router.get("/queues", summary="Depth, oldest age and SLA of every queue in the caller's regions",
                responses=problems(404, described={404: "Unknown region."}))
    async def queues(principal: Caller,
                     region: Annotated[str | None, Query(pattern=r"^[A-Z]{2,3}$")] = None) -> dict[str, Any]:
        return {"queues": await claims.queue_overview(engine, principal, region, runtime=runtime)}

    @router.post("/queues/{region}/claim", summary="Lease the next item of a region (204 when none waits)",
                 responses={204: {"description": "nothing waiting"},
                            **problems(404, described={404: "Unknown region, or no such queue in it."})})
    async def claim(principal: Caller, region: RegionCode,
                    queue: Annotated[str | None, Query(pattern=r"^[a-z0-9_]+$")] = None) -> Any:
        item = await claims.claim_next(engine, principal, region, queue, runtime=runtime)
        if item is None:
            return Response(status_code=204)
        return item

    @router.get("/items/{item_id}", summary="An audit item with its verdict and the agent's recent history",
                responses=problems(404))
    async def get_item(principal: Caller, item_id: ItemId) -> dict[str, Any]:
        return await claims.get_item(engine, principal, item_id)

    @router.post("/items/{item_id}/verdict", status_code=201, summary="Score a claimed item",
                 responses=problems(404, 409))
    async def verdict(principal: Caller, item_id: ItemId, body: VerdictBody) -> dict[str, Any]:
        return await verdicts.submit_verdict(engine, principal, item_id, body.to_input(), runtime=runtime)

    @router.post("/items/{item_id}/release", summary="Give a claimed item back to its queue",
                 responses=problems(404, 409))
    async def release(principal: Caller, item_id: ItemId) -> dict[str, Any]:
        return await claims.release_item(engine, principal, item_id)

    @router.post("/items/{item_id}/reassign", summary="Lead: hand an open item to a named auditor",
                 responses=problems(404, 409))
    async def reassign(principal: Caller, item_id: ItemId, body: ReassignBody) -> dict[str, Any]:
        return await claims.reassign_item(engine, principal, item_id, body.auditor_id, runtime=runtime)

    @router.post("/verdicts/{verdict_id}/dispute", status_code=201, summary="Lead: dispute a failed verdict",
                 responses=problems(404, 409))
    async def dispute(principal: Caller, verdict_id: ItemId, body: DisputeBody) -> dict[str, Any]:
        return await dispute_ops.dispute_verdict(engine, principal, verdict_id, body.reason)

    @router.get("/disputes", summary="Disputes in the caller's regions",
                responses=problems(404, described={404: "Unknown region."}))
    async def disputes(principal: Caller,
                       region: Annotated[str | None, Query(pattern=r"^[A-Z]{2,3}$")] = None,
                       status: Literal["open", "upheld", "overturned"] | None = "open") -> dict[str, Any]:
        if region is not None and region not in catalogue():
            raise Problem(404, "Not Found", f"unknown region {region}",
                          errors=[{"field": "region", "message": "not in the region catalogue"}])
        return {"disputes": await dispute_ops.list_disputes(engine, principal, region, status)}

    @router.post("/disputes/{dispute_id}/resolve", summary="Senior auditor: uphold or overturn a dispute",
                 responses=problems(404, 409))
    async def resolve(principal: Caller, dispute_id: ItemId, body: ResolveBody) -> dict[str, Any]:
        return await dispute_ops.resolve_dispute(engine, principal, dispute_id, body.outcome, body.note,
                                              runtime=runtime)

    @router.post("/gold-items", status_code=201, summary="Lead: seed a known-answer item into a queue",
                 responses=problems(404, described={404: "Unknown region."}))
    async def gold(principal: Caller, body: GoldBody) -> dict[str, Any]:
        return await gold_ops.seed_gold_item(engine, principal, gold_ops.GoldItemInput(
            region=body.region, compensation=body.compensation.model_dump(mode="json"),
            expected=body.expected.model_dump(),
            queue=body.queue), runtime=runtime)

    assert set(Attributes.model_fields) == set(ATTRIBUTES)
    return router
