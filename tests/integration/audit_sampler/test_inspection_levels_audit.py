"""Inspection levels on the real PostgreSQL, through the consumer and the workflow: the field case of an
agent that went tightened -> normal -> reduced after one audit under normal inspection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml
from sqlalchemy import text

from services.audit_sampler.domain.policy import PolicySet
from services.audit_sampler.domain.verdicts import ATTRIBUTES, VerdictInput
from services.audit_sampler.handlers import ManualCompensationHandler
from services.audit_sampler.operations import claims
from services.audit_sampler.operations import verdicts as scoring
from services.audit_sampler.operations.runtime import Runtime
from shared.auth import Principal
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope, validate_payload
from shared.db import make_engine
from shared.kafka import Delivered

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
PASS = VerdictInput(dict.fromkeys(ATTRIBUTES, True), True)
FAIL = VerdictInput({**dict.fromkeys(ATTRIBUTES, True), "evidence_sufficient": False}, False,
                    error_category="missing_evidence")
AUDITOR = Principal(subject="ines", kind="token", roles=frozenset({"auditor"}), regions=frozenset({"US"}))


@pytest.fixture(scope="module")
async def env(audit_database, tmp_path_factory):
    engine = make_engine(audit_database, "audit_sampler", pool_size=5)
    folder = tmp_path_factory.mktemp("policies")
    # Every compensation is sampled, so each one becomes an audit of the agent. The run back from tightened
    # is as long as the run to reduced: the configuration of the field case.
    (folder / "default.yaml").write_text(yaml.safe_dump({
        "region": "default", "seed": "levels-seed-0001", "baseline_rate": 1.0, "agent_weekly_minimum": 0,
        "calibration_share": 0.0,
        "switching": {"to_tightened_failures": 2, "to_tightened_window": 5, "tightened_to_normal_passes": 10,
                      "to_reduced_passes": 10, "reduced_to_normal_failures": 1}}))
    policies = PolicySet.load(folder)
    runtime = Runtime(policies)
    clock = {"now": NOW}
    handler = ManualCompensationHandler(lambda: policies, lambda: clock["now"])
    yield engine, runtime, handler, clock
    await engine.dispose()


class Agent:
    """Sends the agent's manual compensations through the consumer and audits each one in turn."""

    def __init__(self, env) -> None:
        self.engine, self.runtime, self.handler, self.clock = env
        self.count = 0

    async def compensate(self) -> str:
        self.count += 1
        cid = f"lvl-{self.count}"
        self.clock["now"] = NOW + timedelta(minutes=self.count)
        payload = ev.ManualCompensationIssued(
            compensation_id=cid, ticket_id=f"T-{cid}", order_id=f"O-{cid}", buyer_id=f"B-{cid}",
            agent_id="agent-levels", team="team-1", kind=ev.CompensationKind.VOUCHER,
            amount=ev.PositiveMoney(amount_minor=700, currency="USD"), reason_code="damaged",
            liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=700)])
        envelope = make_envelope("compensation.manual_issued", payload, source="test", region="US",
                                 occurred_at=self.clock["now"])
        async with self.engine.begin() as conn:
            await self.handler(conn, [Delivered(envelope, validate_payload(envelope), "manual", 0, self.count,
                                                None, 0)])
        return cid

    async def audit(self, *verdicts: VerdictInput) -> None:
        for verdict in verdicts:
            cid = await self.compensate()
            item = await claims.claim_next(self.engine, AUDITOR, "US", runtime=self.runtime, now=self.clock["now"])
            assert item is not None and item["compensation_id"] == cid
            await scoring.submit_verdict(self.engine, AUDITOR, item["id"], verdict, runtime=self.runtime,
                                          now=self.clock["now"])

    async def level(self) -> tuple[str, int]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT sampling_state, audits_at_level FROM agents WHERE region = 'US' "
                "AND agent_id = 'agent-levels'"))).one()
        return row[0], int(row[1])

    async def sampled_under(self, cid: str) -> tuple[str, list[str]]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT agent_state, reasons FROM population WHERE compensation_id = :c"), {"c": cid})).one()
        return row[0], list(row[1])


async def test_passes_under_tightened_inspection_do_not_buy_reduced_inspection(env):
    agent = Agent(env)
    await agent.audit(FAIL, FAIL)
    assert await agent.level() == ("tightened", 0)
    await agent.audit(*[PASS] * 10)
    state, reasons = await agent.sampled_under("lvl-3")
    assert state == "tightened" and "agent_tightened" in reasons
    assert await agent.level() == ("normal", 0)  # ten passes under tightened: back to normal, a new run
    await agent.audit(PASS)
    assert await agent.level() == ("normal", 1)  # the field case went to reduced here
    cid = await agent.compensate()
    state, reasons = await agent.sampled_under(cid)
    assert state == "normal" and "agent_reduced" not in reasons
    # the queued one is audited too, then eight more: nine passes under normal, still normal
    item = await claims.claim_next(agent.engine, AUDITOR, "US", runtime=agent.runtime, now=agent.clock["now"])
    await scoring.submit_verdict(agent.engine, AUDITOR, item["id"], PASS, runtime=agent.runtime,
                                  now=agent.clock["now"])
    await agent.audit(*[PASS] * 7)
    assert await agent.level() == ("normal", 9)
    await agent.audit(PASS)
    assert await agent.level() == ("reduced", 0)  # the tenth pass under normal
    cid = await agent.compensate()
    state, reasons = await agent.sampled_under(cid)
    assert state == "reduced" and "agent_reduced" in reasons
