"""Corrective actions (issue 14): leads open them from a finding, a pattern, a root cause or a spike, track
owner, due date and status, and see each one's effect: the target's audited error rate before vs after
(``domain.actions``). Every change is published (``audit.corrective_action_recorded``) for insights, and
once an action is done and its after window has passed, its measured effect is published too
(``publish_effects``, a periodic chore).

The error rate counts sample audits of compensations *issued* in each window (the compensation's time, not
the audit's: an action changes how compensations are given); an overturned verdict counts as a pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.audit_sampler.domain import actions as domain
from services.audit_sampler.operations import announce
from services.audit_sampler.operations.access import region_scope, require_region, require_role
from services.audit_sampler.operations.errors import Invalid, NotFound
from services.audit_sampler.persistence import actions as store
from shared.auth import Principal
from shared.contracts import events as ev
from shared.outbox import Record, enqueue_records
from shared.regions import catalogue

LEAD_ROLES = ("lead", "ops_admin")
VIEW_ROLES = ("lead", "senior_auditor", "ops_admin")
def _record(row: Mapping[str, Any], at: datetime, effect: domain.Effect | None = None) -> Record:
    payload = ev.CorrectiveActionRecorded(
        action_id=row["id"], source=ev.ActionSource(row["source"]), source_ref=row["source_ref"],
        target_type=ev.ActionTargetType(row["target_type"]), target_id=row["target_id"], kind=row["kind"],
        owner=row["owner"], due_on=row["due_on"], status=ev.ActionStatus(row["status"]), opened_by=row["opened_by"],
        opened_at=row["opened_at"], updated_at=row["updated_at"], note=row["note"],
        effect=None if effect is None else ev.ActionEffect(
            window_days=effect.window_days, before_audits=effect.before_audits, before_errors=effect.before_errors,
            after_audits=effect.after_audits, after_errors=effect.after_errors, difference=effect.difference,
            difference_low=effect.low, difference_high=effect.high))
    step = "effect" if effect is not None else f"{int(at.timestamp() * 1_000_000)}"
    return announce.record("audit.corrective_action_recorded", payload, region=row["region"], at=at,
                           event_id=f"audit-action-{row['region']}-{row['id']}-{step}")


async def open_action(engine: AsyncEngine, principal: Principal, action: domain.ActionInput, *, opened_by: str,
                      now: datetime) -> dict[str, Any]:
    require_role(principal, *LEAD_ROLES)
    if action.region not in catalogue():
        raise Invalid(f"unknown region {action.region}",
                      errors=[{"field": "region", "message": "not in the region catalogue"}])
    require_region(principal, action.region)
    today = catalogue().get(action.region).local(now).date()
    errors = domain.action_errors(action, today)
    if errors:
        raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors,
                      title="Invalid corrective action")
    async with engine.begin() as conn:
        row = await store.insert_action(conn, {
            "region": action.region, "source": action.source, "source_ref": action.source_ref,
             "target_type": action.target_type, "target_id": action.target_id, "kind": action.kind,
             "owner": action.owner, "due_on": action.due_on, "note": action.note, "window_days": action.window_days,
             "opened_by": opened_by, "now": now})
        await enqueue_records(conn, [_record(row, now)])
    return row


async def update_action(engine: AsyncEngine, principal: Principal, action_id: int, *, status: str | None = None,
                        owner: str | None = None, due_on: date | None = None, note: str | None = None,
                        now: datetime) -> dict[str, Any]:
    require_role(principal, *LEAD_ROLES)
    async with engine.begin() as conn:
        row = await store.action(conn, action_id, for_update=True)
        if row is None:
            raise NotFound(f"corrective action {action_id} does not exist")
        require_region(principal, row["region"])
        errors: list[dict[str, str]] = []
        if status is not None and (why := domain.transition_error(row["status"], status)):
            errors.append({"field": "status", "message": why})
        probe = domain.ActionInput(row["region"], row["source"], row["source_ref"], row["target_type"],
                                   row["target_id"], row["kind"], owner or row["owner"], due_on or row["due_on"],
                                   row["window_days"], note)
        today = catalogue().get(row["region"]).local(now).date()
        errors += [e for e in domain.action_errors(probe, today) if e["field"] in ("owner", "note")
                   or (e["field"] == "due_on" and due_on is not None)]
        if errors:
            raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors,
                          title="Invalid change")
        new_status = status or row["status"]
        done_at = now if new_status == "done" and row["status"] != "done" else row["done_at"]
        updated = await store.update_action(conn, action_id, status=new_status, owner=owner or row["owner"],
                                            due_on=due_on or row["due_on"], note=note, done_at=done_at, now=now)
        await enqueue_records(conn, [_record(updated, now)])
    return updated


async def list_actions(engine: AsyncEngine, principal: Principal, region: str | None, *, now: datetime
                       ) -> list[dict[str, Any]]:
    """Open and in-progress actions of the viewer's regions, overdue first."""
    require_role(principal, *VIEW_ROLES)
    regions = region_scope(principal, region)
    async with engine.connect() as conn:
        out = await store.open_actions(conn, regions)
    for row in out:
        row["overdue"] = row["due_on"] < catalogue().get(row["region"]).local(now).date()
    out.sort(key=lambda r: (not r["overdue"], r["due_on"], r["id"]))
    return out


async def measure(conn: AsyncConnection, row: Mapping[str, Any], now: datetime) -> domain.Effect:
    w = domain.windows(opened_at=row["opened_at"], done_at=row["done_at"], window_days=row["window_days"], now=now)
    before_audits, before_errors, after_audits, after_errors = await store.error_counts(
        conn, row, before=(w.before_start, w.before_end), after=(w.after_start, w.after_end))
    return domain.effect(before_audits=before_audits, before_errors=before_errors, after_audits=after_audits,
                         after_errors=after_errors, window_days=row["window_days"], complete=w.complete)


async def get_action(engine: AsyncEngine, principal: Principal, action_id: int, *, now: datetime
                     ) -> tuple[dict[str, Any], domain.Effect]:
    require_role(principal, *VIEW_ROLES)
    async with engine.connect() as conn:
        row = await store.action(conn, action_id)
        if row is None:
            raise NotFound(f"corrective action {action_id} does not exist")
        require_region(principal, row["region"])
        return row, await measure(conn, row, now)


async def publish_effects(engine: AsyncEngine, now: datetime, *, limit: int = 200) -> int:
    """Publish the measured effect of done actions whose after window has passed (once each)."""
    async with engine.begin() as conn:
        rows = await store.effects_due(conn, now, limit)
        records = [_record(row, now, await measure(conn, row, now)) for row in rows]
        await enqueue_records(conn, records)
        if rows:
            await store.mark_effects_published(conn, [r["id"] for r in rows], now)
    return len(rows)
