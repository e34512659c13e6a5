"""Gold items (calibration of auditors): a lead seeds a known-answer item into a queue; auditors see it as an
ordinary audit and their verdict is scored against the answer. ``gold_item_errors`` lists every mistake
without writing, for the workbench form; ``seed_gold_item`` checks the same again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.audit_sampler import persistence as db
from services.audit_sampler.contracts import ManualCompensationIssued
from services.audit_sampler.domain import queues as q
from services.audit_sampler.domain.policy import QueueRule
from services.audit_sampler.domain.verdicts import VerdictError, parse_expected
from services.audit_sampler.operations.access import LEAD_ROLES, check_region_code, require_region, require_role
from services.audit_sampler.operations.claims import now_or, present_item
from services.audit_sampler.operations.errors import Invalid
from services.audit_sampler.operations.runtime import Runtime
from shared.auth import Principal
from shared.contracts.registry import region_currency_errors
from shared.regions import catalogue


@dataclass(frozen=True)
class GoldItemInput:
    """A known-answer item: a compensation as an agent issued it, and the verdict it deserves."""

    region: str
    compensation: Mapping[str, Any]  # ManualCompensationIssued fields
    expected: Mapping[str, bool]  # every attribute
    queue: str | None = None


def gold_item_errors(gold: GoldItemInput, *, runtime: Runtime) -> list[dict[str, str]]:
    """Every problem with a gold item's known answer, compensation and queue, as {field, message}; empty
    when ``seed_gold_item`` would accept it. No I/O, no role or region check (the caller's job, and
    ``seed_gold_item`` does both again). The workbench form lists them all next to its fields."""
    return _check_gold(gold, runtime)[0]


def _check_gold(gold: GoldItemInput, runtime: Runtime
                ) -> tuple[list[dict[str, str]], tuple[ManualCompensationIssued, dict[str, bool], QueueRule] | None]:
    # Every group is checked (not only up to the first failure), so a form shows all its mistakes at once.
    errors: list[dict[str, str]] = []
    expected: dict[str, bool] = {}
    try:
        expected = parse_expected(gold.expected)
    except VerdictError as exc:
        errors += [{"field": f, "message": m} for f, m in exc.errors]
    comp: ManualCompensationIssued | None = None
    try:
        comp = ManualCompensationIssued.model_validate(dict(gold.compensation))
    except ValidationError as exc:
        errors += [{"field": ".".join(["compensation", *(str(p) for p in e["loc"])]), "message": e["msg"]}
                   for e in exc.errors()]
    else:
        errors += [{"field": f.replace("payload.", "compensation."), "message": m}
                   for f, m in region_currency_errors(gold.region, comp)]
    policy = runtime.policies.for_region(gold.region)
    rule = policy.queue(gold.queue) if gold.queue else policy.queues[-1]
    if rule is None:
        errors.append({"field": "queue", "message": f"no queue {gold.queue} in region {gold.region}"})
    if errors or comp is None or rule is None:
        return errors, None
    return errors, (comp, expected, rule)


async def seed_gold_item(engine: AsyncEngine, principal: Principal, gold: GoldItemInput, *,
                         runtime: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """A lead seeds a known-answer item; auditors see it as an ordinary audit."""
    require_role(principal, *LEAD_ROLES)
    check_region_code(gold.region)
    require_region(principal, gold.region)
    errors, checked = _check_gold(gold, runtime)
    if checked is None:
        raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]), errors=errors,
                      title="Invalid gold item")
    comp, expected, rule = checked
    at = now_or(now)
    region = catalogue().get(gold.region)
    async with engine.begin() as conn:
        item_id = await db.insert_gold_item(conn, {
            "region": gold.region, "queue": rule.name, "compensation_id": comp.compensation_id,
            "agent_id": comp.agent_id, "team": comp.team, "compensation": comp.model_dump(mode="json"),
            "local_day": q.local_day(region, at), "now": at, "due": q.sla_due(at, rule.sla_hours),
            "expected": expected, "created_by": principal.subject})
        created = await db.item(conn, item_id)
    assert created is not None
    return present_item(created, principal)
