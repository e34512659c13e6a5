"""Consumer of manual compensations: record every one in the population, sample, enqueue for audit.

A batch costs a fixed handful of statements whatever its size: known ids, agents and buyers are read with
array binds, decisions are pure, and the writes are ``unnest`` inserts. Only a queue-day over its daily
capacity costs one more read (its lowest-risk queued items).

Capacity is enforced under a row lock of each capped queue-day (``queue_days``), taken before counting and
held to commit, so consumers of different partitions never both fill the last slots of a queue-day.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncConnection

from services.audit_sampler import metrics
from services.audit_sampler import persistence as db
from services.audit_sampler.contracts import ManualCompensationIssued
from services.audit_sampler.domain import authority
from services.audit_sampler.domain import queues as q
from services.audit_sampler.domain.authority import IssueCheck, LimitsSet
from services.audit_sampler.domain.policy import PolicySet, SamplingState
from services.audit_sampler.domain.sampling import (
    AgentProfile,
    ManualCompensation,
    SamplingDecision,
    decide,
    week_start,
)
from services.audit_sampler.operations import announce, approvals
from services.audit_sampler.persistence import approvals as requests_db
from shared.contracts import events as ev
from shared.contracts.events import CompensationRequested
from shared.kafka import Delivered
from shared.outbox import enqueue_records
from shared.regions import catalogue

log = logging.getLogger(__name__)

GroupKey = tuple[str, str, date]  # region, queue, local day


@dataclass
class _Agent:
    """In-batch view of an agent: the stored row plus what earlier events of this batch added."""

    first_seen_at: datetime | None
    seen: int
    state: SamplingState
    results: tuple[bool, ...]
    week: date | None
    sampled_week: int
    added_seen: int = 0
    added_sampled: int = 0
    team: str = ""
    first_in_batch: datetime | None = None


@dataclass
class _Sampled:
    comp: ManualCompensation
    decision: SamplingDecision
    day: date
    payload: dict[str, Any]
    event_id: str
    now: datetime


class ManualCompensationHandler:
    """``limits`` given: each compensation is also checked against its request (issued vs approved); a
    mismatch makes it a mandatory audit item with the finding filled in, a metric and an event."""

    consumes = frozenset({"compensation.manual_issued"})

    def __init__(self, policies: Callable[[], PolicySet], clock: Callable[[], datetime],
                 limits: Callable[[], LimitsSet] | None = None) -> None:
        self._policies = policies
        self._clock = clock
        self._limits = limits

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        comps: list[tuple[Delivered, ManualCompensationIssued]] = []
        for d in events:  # the runner lets only ``consumes`` through
            comps.append((d, cast(ManualCompensationIssued, d.payload)))
        known = await db.known_compensations(conn, [p.compensation_id for _, p in comps])
        fresh: dict[str, tuple[Delivered, ManualCompensationIssued]] = {}
        for d, p in comps:
            # A replay under a new event id (or a duplicate inside the batch) is the same compensation.
            if p.compensation_id not in known and p.compensation_id not in fresh:
                fresh[p.compensation_id] = (d, p)
        if not fresh:
            return
        policies = self._policies()
        now = self._clock()
        ordered = sorted(fresh.values(), key=lambda dp: (dp[0].envelope.occurred_at, dp[1].compensation_id))
        agents_raw = await db.load_agents(conn, {(d.envelope.region, p.agent_id) for d, p in ordered})
        buyers = await db.last_buyer_compensations(conn, {(d.envelope.region, p.buyer_id) for d, p in ordered})
        agents: dict[tuple[str, str], _Agent] = {}
        for key, row in agents_raw.items():
            agents[key] = _Agent(row.first_seen_at, row.compensations_seen, row.state, row.recent_results,
                                 row.week_start, row.sampled_this_week)
        population: list[dict[str, Any]] = []
        sampled: list[_Sampled] = []
        limits = self._limits() if self._limits is not None else None
        requests = {} if limits is None else await requests_db.requests_by_id(
            conn, sorted({p.request_id for _, p in ordered if p.request_id}))
        checks: list[dict[str, Any]] = []
        flagged: dict[str, tuple[dict[str, Any], IssueCheck]] = {}
        for d, p in ordered:
            region = catalogue().get(d.envelope.region)
            policy = policies.for_region(region.code)
            occurred = d.envelope.occurred_at
            day = q.local_day(region, occurred)
            week = week_start(day)
            agent = agents.setdefault((region.code, p.agent_id), _Agent(None, 0, SamplingState.NORMAL, (), None, 0))
            sampled_week = agent.sampled_week if agent.week == week else 0
            if agent.week is not None and agent.week > week:
                sampled_week = policy.agent_weekly_minimum  # a late event of a past week: no forcing
            comp = ManualCompensation(
                compensation_id=p.compensation_id, region=region.code, buyer_id=p.buyer_id, agent_id=p.agent_id,
                team=p.team, reason_code=p.reason_code, kind=p.kind.value, amount_minor=p.amount.amount_minor,
                currency=p.amount.currency,
                order_amount_minor=p.order_amount.amount_minor if p.order_amount else None, occurred_at=occurred)
            profile = AgentProfile(first_seen_at=agent.first_seen_at, compensations_before=agent.seen,
                                   recent_results=agent.results, state=agent.state, sampled_this_week=sampled_week)
            decision = decide(policy, comp, profile, buyers.get((region.code, p.buyer_id)))
            if limits is not None:
                as_json = {**p.model_dump(mode="json"), "region": region.code, "occurred_at": occurred.isoformat(),
                           "event_id": d.envelope.event_id}
                check = approvals.judge_issue(as_json, region.code, requests, limits)
                checks.append({"compensation_id": p.compensation_id, "request_id": p.request_id,
                               "region": region.code,
                               "status": "awaiting_request" if check is None else (
                                   "flagged" if check.flagged else "ok"),
                               "mismatches": [] if check is None else list(check.mismatches),
                               "finding": check.finding if check is not None and check.flagged else None,
                               # Kept while the check waits for its request: it is judged when that arrives.
                               "compensation": as_json if check is None else None})
                if check is not None and check.flagged:
                    # Flagged at once: audited with certainty, in the first queue, the finding on the item.
                    flagged[p.compensation_id] = (as_json, check)
                    decision = replace(decision, sampled=True, mandatory=True, probability=1.0,
                                       reasons=(*decision.reasons, "issue_check"),
                                       queue=policy.queue_for(decision.risk, True).name)
            # Later events of the batch see this one, exactly as if they had arrived in separate batches.
            agent.seen += 1
            agent.added_seen += 1
            agent.team = p.team
            if agent.first_seen_at is None or occurred < agent.first_seen_at:
                agent.first_seen_at = occurred
            agent.first_in_batch = min(filter(None, (agent.first_in_batch, occurred)))
            if agent.week is None or week > agent.week:
                agent.week, agent.sampled_week, agent.added_sampled = week, 0, 0
            if week == agent.week and decision.sampled:
                agent.sampled_week += 1
                agent.added_sampled += 1
            buyer_key = (region.code, p.buyer_id)
            if buyers.get(buyer_key) is None or occurred > buyers[buyer_key]:
                buyers[buyer_key] = occurred
            population.append({
                "compensation_id": p.compensation_id, "event_id": d.envelope.event_id, "region": region.code,
                "buyer_id": p.buyer_id, "agent_id": p.agent_id, "team": p.team, "reason_code": p.reason_code,
                "kind": p.kind.value, "currency": p.amount.currency, "amount_minor": p.amount.amount_minor,
                "order_amount_minor": comp.order_amount_minor, "occurred_at": occurred, "local_day": day,
                "inclusion_probability": decision.probability, "effective_probability": decision.probability,
                "draw": decision.draw, "sampled": decision.sampled, "mandatory": decision.mandatory,
                "capacity_dropped": False, "risk_score": decision.risk, "reasons": ",".join(decision.reasons),
                "queue": decision.queue, "agent_state": decision.state.value, "policy_version": policy.version})
            if decision.sampled:
                sampled.append(_Sampled(comp, decision, day, p.model_dump(mode="json"), d.envelope.event_id, now))
        kept, dropped, evicted = await self._apply_capacity(conn, policies, sampled)
        dropped_ids = {s.comp.compensation_id for s in dropped}
        for entry in population:
            if entry["compensation_id"] in dropped_ids:
                entry["sampled"], entry["capacity_dropped"] = False, True
        inserted = await db.insert_population(conn, population)
        if len(inserted) < len(population):
            # Another consumer recorded some of these compensations after our "known" read (a replay under
            # new event ids on another partition): counting them here too would add them twice to the
            # agents' counts and the queue-days' selections. Roll back and run the batch again; it then
            # finds them known and skips them.
            lost = sorted({p["compensation_id"] for p in population} - inserted)
            log.info("compensations recorded concurrently by another consumer; the batch will be retried",
                     extra={"compensation_ids": lost[:20], "count": len(lost)})
            await db.abort_as_serialization_failure(conn)
        gone = await db.evict(conn, [item_id for item_id, _ in evicted])
        items = [self._item(policies, s) for s in kept]
        for item in items:
            if item["compensation_id"] in flagged:
                item["finding"] = flagged[item["compensation_id"]][1].finding
        queued = await db.insert_sample_items(conn, items)
        await requests_db.record_checks(conn, checks)
        flags = []
        for cid, (as_json, check) in flagged.items():
            request = requests.get(as_json.get("request_id") or "")
            flags.append(approvals.flagged_record(as_json, check, region=as_json["region"], item_id=queued.get(cid),
                                                  approved_minor=request["approved_amount_minor"] if request else None,
                                                  at=now))
            approvals.count_flag(as_json["region"], as_json, check)
        # The read side (insights) learns of each draw and eviction in this transaction; the CS tools and
        # insights of each flagged issue.
        await enqueue_records(conn, announce.evicted(gone, now) + announce.sampled(items, queued) + flags)
        await db.record_drops(conn, [
            {"region": s.comp.region, "queue": s.decision.queue, "local_day": s.day,
             "compensation_id": s.comp.compensation_id, "risk_score": s.decision.risk,
             "inclusion_probability": s.decision.probability, "evicted_item_id": None} for s in dropped
        ] + [{"region": g[0], "queue": g[1], "local_day": g[2], "compensation_id": cid, "risk_score": risk,
              "inclusion_probability": prob, "evicted_item_id": item_id}
             for item_id, (g, cid, risk, prob) in evicted])
        await db.count_queue_days(conn, self._queue_day_counts(kept, dropped, evicted))
        await db.bump_agents(conn, [
            {"region": key[0], "agent_id": key[1], "team": a.team, "first_seen_at": a.first_in_batch,
             "seen": a.added_seen, "week_start": a.week, "sampled": a.added_sampled}
            # Sorted, so concurrent consumers lock agent rows in the same order and never deadlock.
            for key, a in sorted(agents.items()) if a.added_seen])
        self._count(population, kept, dropped, evicted)

    async def _apply_capacity(self, conn: AsyncConnection, policies: PolicySet, sampled: list[_Sampled]
                              ) -> tuple[list[_Sampled], list[_Sampled],
                                         list[tuple[int, tuple[GroupKey, str, float, float]]]]:
        by_group: dict[GroupKey, list[_Sampled]] = defaultdict(list)
        kept: list[_Sampled] = []
        for s in sampled:
            if s.decision.mandatory:
                kept.append(s)
            else:
                by_group[(s.comp.region, s.decision.queue, s.day)].append(s)
        if not by_group:
            return kept, [], []
        # Count and fill each capped queue-day under its row lock (held to commit): concurrent consumers
        # take turns per queue-day, so its capacity holds. Unbounded queues need no turn.
        await db.lock_queue_days(conn, [g for g in by_group if self._capacity(policies, g) is not None])
        counts = await db.queue_day_counts(conn, by_group)
        dropped: list[_Sampled] = []
        evicted: list[tuple[int, tuple[GroupKey, str, float, float]]] = []
        for group, arrivals in by_group.items():
            capacity = self._capacity(policies, group)
            fixed, queued = counts.get(group, (0, 0))
            if capacity is None or fixed + queued + len(arrivals) <= capacity:
                kept.extend(arrivals)
                continue
            existing = await db.evictable_items(conn, *group, limit=len(arrivals))
            # Queued items beyond the weakest few cannot lose to this batch's arrivals: count them fixed.
            fixed += queued - len(existing)
            by_key = {s.comp.compensation_id: s for s in arrivals}
            candidates = [q.Candidate(cid, risk, True) for _, cid, risk in existing] + [
                q.Candidate(s.comp.compensation_id, s.decision.risk, False) for s in arrivals]
            keep, drop = q.fill_queue_day(capacity, fixed, candidates)
            kept.extend(by_key[c.key] for c in keep if not c.existing)
            dropped.extend(by_key[c.key] for c in drop if not c.existing)
            ids = {cid: (item_id, risk) for item_id, cid, risk in existing}
            for c in drop:
                if c.existing:
                    item_id, risk = ids[c.key]
                    evicted.append((item_id, (group, c.key, risk, 0.0)))
        if evicted:
            probs = await db.inclusion_probabilities(conn, [e[1][1] for e in evicted])
            evicted = [(item_id, (g, cid, risk, probs.get(cid, 0.0))) for item_id, (g, cid, risk, _) in evicted]
        return kept, dropped, evicted

    @staticmethod
    def _capacity(policies: PolicySet, group: GroupKey) -> int | None:
        rule = policies.for_region(group[0]).queue(group[1])
        return rule.daily_capacity if rule else None

    @staticmethod
    def _queue_day_counts(kept: list[_Sampled], dropped: list[_Sampled],
                          evicted: list[tuple[int, tuple[GroupKey, str, float, float]]]
                          ) -> dict[GroupKey, tuple[int, int]]:
        """(selected, kept) added per queue-day by this batch, over droppable samples only."""
        counts: dict[GroupKey, list[int]] = defaultdict(lambda: [0, 0])
        for s in kept:
            if not s.decision.mandatory:
                c = counts[(s.comp.region, s.decision.queue, s.day)]
                c[0] += 1
                c[1] += 1
        for s in dropped:
            counts[(s.comp.region, s.decision.queue, s.day)][0] += 1
        for _, (group, *_rest) in evicted:
            counts[group][1] -= 1
        return {k: (v[0], v[1]) for k, v in counts.items()}

    def _item(self, policies: PolicySet, s: _Sampled) -> dict[str, Any]:
        rule = policies.for_region(s.comp.region).queue(s.decision.queue)
        sla_hours = rule.sla_hours if rule else 72
        return {"region": s.comp.region, "queue": s.decision.queue, "compensation_id": s.comp.compensation_id,
                "agent_id": s.comp.agent_id, "team": s.comp.team,
                "compensation": {**s.payload, "region": s.comp.region,
                                 "occurred_at": s.comp.occurred_at.isoformat(), "event_id": s.event_id},
                "risk_score": s.decision.risk, "inclusion_probability": s.decision.probability,
                "reasons": ",".join(s.decision.reasons), "mandatory": s.decision.mandatory, "local_day": s.day,
                "enqueued_at": s.now, "sla_due_at": q.sla_due(s.now, sla_hours)}

    @staticmethod
    def _count(population: list[dict[str, Any]], kept: list[_Sampled], dropped: list[_Sampled],
               evicted: list[Any]) -> None:
        for row in population:
            metrics.POPULATION.labels(row["region"]).inc()
        for s in kept:
            for reason in s.decision.reasons:
                metrics.SAMPLED.labels(s.comp.region, reason).inc()
        for s in dropped:
            metrics.CAPACITY_DROPPED.labels(s.comp.region, s.decision.queue).inc()
        for _, (group, *_rest) in evicted:
            metrics.CAPACITY_DROPPED.labels(group[0], group[1]).inc()


@dataclass
class _Fresh:
    delivered: Delivered
    payload: CompensationRequested
    region: str
    day: Any


class RequestHandler:
    """Consumer of ``compensation.requested``: judge against the region's authority limits, record, approve
    at once within them or queue for an approver, publish the decision (``operations.approvals``)."""

    consumes = frozenset({"compensation.requested"})

    def __init__(self, limits: Callable[[], LimitsSet], policies: Callable[[], PolicySet],
                 clock: Callable[[], datetime]) -> None:
        self._limits = limits
        self._policies = policies
        self._clock = clock

    async def __call__(self, conn: AsyncConnection, events: Sequence[Delivered]) -> None:
        incoming: list[tuple[Delivered, CompensationRequested]] = []
        for d in events:  # the runner lets only ``consumes`` through
            incoming.append((d, cast(CompensationRequested, d.payload)))
        known = await requests_db.known_requests(conn, [p.request_id for _, p in incoming])
        fresh: dict[str, _Fresh] = {}
        for d, p in incoming:
            if p.request_id not in known and p.request_id not in fresh:
                region = catalogue().get(d.envelope.region)
                fresh[p.request_id] = _Fresh(d, p, region.code, q.local_day(region, d.envelope.occurred_at))
        if not fresh:
            return
        limits_set = self._limits()
        now = self._clock()
        ordered = sorted(fresh.values(), key=lambda f: (f.delivered.envelope.occurred_at, f.payload.request_id))
        windows = {}
        for f in ordered:
            limits = limits_set.for_region(f.region)
            windows[f.payload.request_id] = limits.window(f.day) if limits else (f.day, f.day)
        await requests_db.lock_keys(
            conn, [requests_db.agent_day_key(f.region, f.payload.agent_id, f.day) for f in ordered]
            + [requests_db.buyer_key(f.region, f.payload.buyer_id) for f in ordered])
        agent_totals = await requests_db.agent_day_totals(
            conn, sorted({(f.region, f.payload.agent_id, f.day) for f in ordered}))
        buyer_totals = await requests_db.buyer_window_totals(
            conn, sorted({(f.region, f.payload.buyer_id, *windows[f.payload.request_id]) for f in ordered}))
        # Approvals earlier in this batch count for later requests, as if they had come one by one.
        batch_approved: list[tuple[str, str, str, Any, int]] = []  # region, agent, buyer, day, amount
        rows: list[dict[str, Any]] = []
        for f in ordered:
            p = f.payload
            limits = limits_set.for_region(f.region)
            first, last = windows[p.request_id]
            agent_total = agent_totals.get((f.region, p.agent_id, f.day), 0) + sum(
                a for r, ag, _, d, a in batch_approved if (r, ag, d) == (f.region, p.agent_id, f.day))
            buyer_total = buyer_totals.get((f.region, p.buyer_id, first, last), 0) + sum(
                a for r, _, b, d, a in batch_approved if r == f.region and b == p.buyer_id and first <= d <= last)
            judgement = authority.judge(limits, team=p.team, tier=p.agent_tier, reason=p.reason_code,
                              amount_minor=p.amount.amount_minor, agent_day_total_minor=agent_total,
                              buyer_window_total_minor=buyer_total)
            requested_at = f.delivered.envelope.occurred_at
            sla_hours = limits.approval_sla_hours if limits else 4
            if judgement.within:
                batch_approved.append((f.region, p.agent_id, p.buyer_id, f.day, p.amount.amount_minor))
            rows.append({
                "request_id": p.request_id, "event_id": f.delivered.envelope.event_id, "region": f.region,
                "agent_id": p.agent_id, "team": p.team, "agent_tier": p.agent_tier, "buyer_id": p.buyer_id,
                "order_id": p.order_id, "ticket_id": p.ticket_id, "reason_code": p.reason_code,
                "kind": p.kind.value, "currency": p.amount.currency, "amount_minor": p.amount.amount_minor,
                "request": p.model_dump(mode="json"), "requested_at": requested_at, "local_day": f.day,
                "status": "approved" if judgement.within else "awaiting_approval", "automatic": judgement.within,
                "approved_amount_minor": p.amount.amount_minor if judgement.within else None,
                "rule": judgement.rule, "limits_version": limits.version if limits else None,
                "exceeded": list(judgement.exceeded), "judgement": judgement.detail,
                # The SLA runs from when the request reached the queue, not from the agent's clock.
                "due_at": None if judgement.within else authority.due(max(now, requested_at), sla_hours),
                "decided_by": approvals.SYSTEM if judgement.within else None,
                "decision_reason": judgement.detail if judgement.within else None,
                "decided_at": now if judgement.within else None})
        inserted = await requests_db.insert_requests(conn, rows)
        if len(inserted) < len(rows):
            # Another consumer recorded some of these requests after our read (a replay under a new event id
            # on another partition): its approvals are not in our totals. Run the batch again.
            log.info("compensation requests recorded concurrently; the batch will be retried",
                     extra={"count": len(rows) - len(inserted)})
            await db.abort_as_serialization_failure(conn)
        steps = []
        for row in rows:
            steps.append({"request_id": row["request_id"], "action": "requested", "actor": row["agent_id"],
                          "reason": row["request"].get("note") or "-", "amount_minor": row["amount_minor"],
                          "at": row["requested_at"]})
            steps.append({"request_id": row["request_id"], "action": "auto_approved" if row["automatic"] else "queued",
                          "actor": approvals.SYSTEM, "reason": row["judgement"],
                          "amount_minor": row["approved_amount_minor"], "at": now})
        ids = await requests_db.add_trail(conn, steps)
        records = []
        for i, row in enumerate(rows):
            outcome = ev.RequestOutcome.APPROVED if row["automatic"] else ev.RequestOutcome.AWAITING_APPROVAL
            records.append(approvals.decided_record(row, trail_id=ids[2 * i + 1], outcome=outcome,
                                                    actor=approvals.SYSTEM, automatic=True, reason=row["judgement"],
                                                    at=now, due_at=row["due_at"]))
        await enqueue_records(conn, records)
        await approvals.settle_awaiting_checks(conn, self._policies(), limits_set, [r["request_id"] for r in rows], now)
        for row in rows:
            labels = (row["region"], row["team"], row["reason_code"])
            metrics.REQUESTS.labels(*labels, "auto_approved" if row["automatic"] else "queued").inc()
            if row["automatic"]:
                metrics.REQUEST_DECISION_SECONDS.labels(row["region"]).observe(
                    max(0.0, (now - row["requested_at"]).total_seconds()))
