"""Corrective actions on the real PostgreSQL (issue 14): a lead opens one from a finding, moves it through its
statuses (each change published), the open/overdue list, and the measured effect on a fixture with a known
change in the agent's error rate: 8 of 20 audits failed in the 28 days before, 1 of 20 after."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import orjson
import pytest
from sqlalchemy import text

from services.audit_sampler.domain.actions import ActionInput
from services.audit_sampler.operations import corrective_actions as actions
from services.audit_sampler.operations.errors import AuditError
from services.audit_sampler.problems import problem_for
from shared.auth import Principal
from shared.db import make_engine
from shared.outbox import decode_headers

pytestmark = pytest.mark.integration

OPENED = datetime(2026, 10, 1, 2, 0, tzinfo=UTC)
LEAD = Principal(subject="lee", kind="token", roles=frozenset({"lead"}), regions=frozenset({"SG"}))


@pytest.fixture(scope="module")
async def engine(audit_database):
    eng = make_engine(audit_database, "audit_sampler", pool_size=4)
    yield eng
    await eng.dispose()


async def audited(engine, agent: str, at: datetime, passed: bool, n: int, *, status: str = "final") -> None:
    """``n`` sample audits of compensations ``agent`` issued at ``at``."""
    async with engine.begin() as conn:
        for _ in range(n):
            comp = {"compensation_id": f"MC-{agent}-{at.isoformat()}-{passed}", "occurred_at": at.isoformat(),
                    "reason_code": "late_delivery", "seller_id": "S-1", "carrier_id": "C-ninja",
                    "amount": {"amount_minor": 500, "currency": "SGD"}}
            item_id = (await conn.execute(text(
                "INSERT INTO audit_items (region, queue, item_kind, compensation_id, agent_id, team, compensation, "
                "risk_score, inclusion_probability, reasons, local_day, status, sla_due_at) VALUES ('SG', 'normal', "
                "'calibration', :cid, :agent, 'sg-tier1', CAST(:comp AS jsonb), 1, 0.5, '{}', :day, 'done', :at) "
                "RETURNING id"), {"cid": comp["compensation_id"], "agent": agent, "comp": orjson.dumps(comp).decode(),
                                  "day": at.date(), "at": at})).scalar()
            # The items are stored as calibration rows to dodge the one-sample-per-compensation index; the
            # verdicts are sample verdicts, which is what the effect counts.
            await conn.execute(text(
                "INSERT INTO verdicts (item_id, item_kind, region, compensation_id, agent_id, team, reason_code, "
                "currency, amount_minor, auditor_id, attributes, passed, status, created_at) VALUES (:item, 'sample', "
                "'SG', :cid, :agent, 'sg-tier1', 'late_delivery', 'SGD', 500, 'ada', '{}', :passed, :status, :at)"),
                {"item": item_id, "cid": comp["compensation_id"], "agent": agent, "passed": passed, "status": status,
                 "at": at + timedelta(days=1)})


def new_action(**changes) -> ActionInput:
    base = dict(region="SG", source="finding", source_ref="item 12", target_type="agent", target_id="A-known",
                kind="coaching", owner="lee", due_on=date(2026, 10, 15), window_days=28, note="coach on evidence")
    return ActionInput(**{**base, **changes})


async def action_events(engine, action_id: int) -> list[dict]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT value, headers FROM outbox ORDER BY id"))).all()
    out = []
    for value, headers in rows:
        if dict(decode_headers(headers)).get("event_type") == b"audit.corrective_action_recorded":
            payload = orjson.loads(value)["payload"]
            if payload["action_id"] == action_id:
                out.append(payload)
    return out


async def test_the_effect_of_a_known_change_in_error_rate(engine):
    before, after = OPENED - timedelta(days=10), OPENED + timedelta(days=10)
    await audited(engine, "A-known", before, False, 8)
    await audited(engine, "A-known", before, True, 12)
    await audited(engine, "A-known", after, False, 1)
    await audited(engine, "A-known", after, True, 19)
    await audited(engine, "A-known", after, False, 2, status="overturned")  # overturned on dispute: passes
    await audited(engine, "A-known", OPENED - timedelta(days=40), False, 30)  # outside the window
    await audited(engine, "A-other", after, False, 10)  # another agent
    row = await actions.open_action(engine, LEAD, new_action(), opened_by="lee", now=OPENED)
    _, effect = await actions.get_action(engine, LEAD, row["id"], now=OPENED + timedelta(days=30))
    assert (effect.before_errors, effect.before_audits) == (8, 20)
    assert (effect.after_errors, effect.after_audits) == (1, 22)
    assert effect.difference == pytest.approx(1 / 22 - 0.4)
    assert effect.high is not None and effect.high < 0 and effect.reading.startswith("error rate fell")


async def test_a_seller_target_and_no_change(engine):
    await audited(engine, "A-s1", OPENED - timedelta(days=5), False, 2)
    await audited(engine, "A-s2", OPENED + timedelta(days=5), False, 2)
    row = await actions.open_action(engine, LEAD, new_action(target_type="carrier", target_id="C-ninja",
                                                            kind="carrier_claim", source="spike"),
                                    opened_by="lee", now=OPENED)
    _, effect = await actions.get_action(engine, LEAD, row["id"], now=OPENED + timedelta(days=30))
    assert effect.before_audits > 0 and effect.after_audits > 0


async def test_statuses_owners_and_events(engine):
    row = await actions.open_action(engine, LEAD, new_action(target_id="A-st"), opened_by="lee", now=OPENED)
    with pytest.raises(AuditError) as info:
        await actions.open_action(engine, LEAD, new_action(due_on=date(2026, 9, 1)), opened_by="lee", now=OPENED)
    assert problem_for(info.value).status == 422 and info.value.errors[0]["field"] == "due_on"
    gb_lead = Principal(subject="gil", kind="token", roles=frozenset({"lead"}), regions=frozenset({"GB"}))
    with pytest.raises(AuditError) as info:
        await actions.update_action(engine, gb_lead, row["id"], status="done", now=OPENED)
    assert problem_for(info.value).status == 403
    auditor = Principal(subject="ada", kind="token", roles=frozenset({"auditor"}), regions=frozenset({"SG"}))
    with pytest.raises(AuditError) as info:
        await actions.open_action(engine, auditor, new_action(), opened_by="ada", now=OPENED)
    assert problem_for(info.value).status == 403

    listed = await actions.list_actions(engine, LEAD, "SG", now=datetime(2026, 10, 20, tzinfo=UTC))
    mine = next(a for a in listed if a["id"] == row["id"])
    assert mine["overdue"] and listed[0]["overdue"]  # due 2026-10-15: overdue, listed first

    await actions.update_action(engine, LEAD, row["id"], status="in_progress", owner="mia", now=OPENED)
    done_at = OPENED + timedelta(days=2)
    await actions.update_action(engine, LEAD, row["id"], status="done", now=done_at)
    with pytest.raises(AuditError) as info:
        await actions.update_action(engine, LEAD, row["id"], status="open", now=done_at)
    assert problem_for(info.value).status == 422 and info.value.errors[0]["field"] == "status"
    assert not any(a["id"] == row["id"] for a in await actions.list_actions(engine, LEAD, "SG", now=done_at))
    # The effect is published once, when the after window (28 days from done) has passed.
    assert await actions.publish_effects(engine, done_at + timedelta(days=27)) == 0
    assert await actions.publish_effects(engine, done_at + timedelta(days=28)) >= 1
    assert await actions.publish_effects(engine, done_at + timedelta(days=29)) == 0
    events = await action_events(engine, row["id"])
    assert [(e["status"], e["owner"]) for e in events] == [
        ("open", "lee"), ("in_progress", "mia"), ("done", "mia"), ("done", "mia")]
    assert events[-1]["effect"]["window_days"] == 28 and events[0]["effect"] is None
