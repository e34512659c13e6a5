"""The approval stage and corrective actions in the report equal a recomputation from the raw events:
random requests (decided within the authority limits, or queued, escalated, decided by an approver, or
still awaiting), flagged manual compensations and corrective actions (state changes and measured effects)
around a month's edges in New York and Jakarta, applied through the real handler and database in a random
order and in random batches, with business duplicates (the same step resent under a new event id)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from services.insights.app import Compactor
from services.insights.domain.periods import month
from services.insights.domain.report import exact_percentile, rank_of
from services.insights.domain.rollups import TTC_EDGES
from services.insights.reports import report, report_csv
from shared.contracts import events as ev
from shared.regions import catalogue
from tests.integration.insights.insights_support import apply, delivered, insights_engine

pytestmark = pytest.mark.integration

REGIONS = {"US": "USD", "ID": "IDR"}
START = datetime(2026, 10, 30, 12, tzinfo=UTC)  # requests from here to ~2 days past November's end
SPAN_MINUTES = 33 * 24 * 60
MISMATCHES = [m.value for m in ev.IssueMismatch]
KINDS = ["coaching", "guideline_change", "seller_warning"]


@pytest.fixture(scope="module")
async def engine(fresh_database):
    engine = await insights_engine(fresh_database)
    yield engine
    await engine.dispose()


def _money(region: str, minor: int) -> ev.PositiveMoney:
    return ev.PositiveMoney(amount_minor=minor, currency=REGIONS[region])


def _request_events(rnd: random.Random, seed: int, i: int) -> list[tuple[str, ev.Payload, str, datetime, str]]:
    region = rnd.choice(list(REGIONS))
    requested_at = START + timedelta(minutes=rnd.randint(0, SPAN_MINUTES))
    amount = rnd.randint(100, 50_000)
    common: dict[str, Any] = dict(
        request_id=f"R{seed}-{i}", ticket_id=f"T{seed}-{i}", order_id=f"O{seed}-{i}", buyer_id=f"B{i}",
        agent_id=f"A{i % 4}", team="t1", reason_code=rnd.choice(["damaged_item", "late"]),
        kind=ev.CompensationKind.VOUCHER, requested_amount=_money(region, amount), reason="why",
        requested_at=requested_at)
    steps: list[tuple[str, bool, datetime]] = []
    at = requested_at
    path = rnd.choice(["auto", "queued", "escalated", "awaiting"])
    if path == "auto":
        steps.append((rnd.choice(["approved", "rejected"]), True, at))
    else:
        steps.append(("awaiting_approval", True, at))
        if path in ("escalated",) or (path == "awaiting" and rnd.random() < 0.5):
            at += timedelta(hours=rnd.randint(1, 30))
            steps.append(("escalated", False, at))
        if path != "awaiting":
            at += timedelta(seconds=rnd.randint(0, 3 * 86400))
            steps.append((rnd.choice(["approved", "rejected"]), False, at))
    out = []
    for k, (outcome, automatic, decided_at) in enumerate(steps):
        payload = ev.CompensationRequestDecided(
            **common, outcome=ev.RequestOutcome(outcome), automatic=automatic,
            decided_by="authority_limits" if automatic else "lead-1", decided_at=decided_at,
            approved_amount=_money(region, rnd.randint(1, amount)) if outcome == "approved" else None)
        for copy in range(rnd.choice([1, 1, 2])):  # a resend under a new event id: a business duplicate
            out.append(("compensation.request_decided", payload, region, decided_at, f"RQ{seed}-{i}-{k}-{copy}"))
    return out


def _flag_events(rnd: random.Random, seed: int, i: int) -> list[tuple[str, ev.Payload, str, datetime, str]]:
    region = rnd.choice(list(REGIONS))
    issued_at = START + timedelta(minutes=rnd.randint(0, SPAN_MINUTES))
    out = []
    for k in range(rnd.choice([1, 1, 2])):  # flagged again with other mismatches: one flagged compensation
        payload = ev.CompensationIssueFlagged(
            compensation_id=f"MC{seed}-{i}", ticket_id=f"T{i}", buyer_id=f"B{i}", agent_id="A1", team="t1",
            reason_code="damaged_item", issued_amount=_money(region, 700),
            mismatches=[ev.IssueMismatch(m) for m in rnd.sample(MISMATCHES, rnd.randint(1, 2))],
            finding="does not match", issued_at=issued_at)
        out.append(("compensation.issue_flagged", payload, region, issued_at, f"FL{seed}-{i}-{k}"))
    return out


def _action_events(rnd: random.Random, seed: int, i: int) -> list[tuple[str, ev.Payload, str, datetime, str]]:
    region = rnd.choice(list(REGIONS))
    opened_at = START + timedelta(minutes=rnd.randint(0, SPAN_MINUTES))
    base: dict[str, Any] = dict(
        action_id=i + 1, source=ev.ActionSource.FINDING, target_type=ev.ActionTargetType.AGENT, target_id="A1",
        kind=rnd.choice(KINDS), owner="lead-1", due_on=(opened_at + timedelta(days=rnd.randint(-5, 20))).date(),
        opened_by="lead-1", opened_at=opened_at)
    out = []
    at = opened_at
    statuses = ["open", *rnd.choice([[], ["in_progress"], ["in_progress", "done"], ["cancelled"], ["done"]])]
    for k, status in enumerate(statuses):
        payload = ev.CorrectiveActionRecorded(**base, status=ev.ActionStatus(status), updated_at=at)
        out.append(("audit.corrective_action_recorded", payload, region, at, f"AC{seed}-{i}-{k}"))
        at += timedelta(hours=rnd.randint(1, 48))
    if rnd.random() < 0.5:  # the effect, measured on its own step (with the state of that moment)
        low = rnd.uniform(-0.5, 0.2)
        effect = ev.ActionEffect(window_days=28, before_audits=20, before_errors=4, after_audits=20, after_errors=2,
                                 difference=round(low + 0.1, 4), difference_low=round(low, 4),
                                 difference_high=round(low + 0.2, 4))
        payload = ev.CorrectiveActionRecorded(**base, status=ev.ActionStatus(statuses[-1]), updated_at=at,
                                              effect=effect)
        out.append(("audit.corrective_action_recorded", payload, region, at, f"AC{seed}-{i}-effect"))
    return out


def _events(seed: int, n: int) -> list[tuple[str, ev.Payload, str, datetime, str]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        out += _request_events(rnd, seed, i)
        if rnd.random() < 0.5:
            out += _flag_events(rnd, seed, i)
        if rnd.random() < 0.5:
            out += _action_events(rnd, seed, i)
    return out


def _in_month(at: datetime, region: str) -> bool:
    local = at.astimezone(ZoneInfo(catalogue().get(region).timezone)).date()
    return date(2026, 11, 1) <= local <= date(2026, 11, 30)


def expected_approvals(events: list, region: str) -> dict[str, Any]:  # type: ignore[type-arg]
    """The approval section recomputed from the raw events, as docs/metrics.md defines it."""
    steps: dict[str, list[tuple[datetime, str, ev.CompensationRequestDecided]]] = {}
    flags: dict[str, list[ev.CompensationIssueFlagged]] = {}
    for event_type, p, r, _, event_id in events:
        if r != region:
            continue
        if event_type == "compensation.request_decided":
            steps.setdefault(p.request_id, []).append((p.decided_at, event_id, p))
        elif event_type == "compensation.issue_flagged":
            flags.setdefault(p.compensation_id, []).append(p)
    counts = dict.fromkeys(("requests", "queued", "escalated", "aa", "ap", "ra", "rp", "awaiting", "req", "appr",
                            "appr_req"), 0)
    seconds: list[int] = []
    for items in steps.values():
        first = min(items, key=lambda s: (s[0], s[1]))[2]
        if not _in_month(first.requested_at, region):
            continue
        finals = [s for s in items if s[2].outcome.value in ("approved", "rejected")]
        counts["requests"] += 1
        counts["req"] += first.requested_amount.amount_minor
        counts["queued"] += any(s[2].outcome.value in ("awaiting_approval", "escalated") or (
            s[2].outcome.value in ("approved", "rejected") and not s[2].automatic) for s in items)
        counts["escalated"] += any(s[2].outcome.value == "escalated" for s in items)
        if not finals:
            counts["awaiting"] += 1
            continue
        final = min(finals, key=lambda s: (s[0], s[1]))[2]
        key = ("a" if final.outcome.value == "approved" else "r") + ("a" if final.automatic else "p")
        counts[key] += 1
        if final.approved_amount is not None:
            counts["appr"] += final.approved_amount.amount_minor
            counts["appr_req"] += first.requested_amount.amount_minor
        if not final.automatic:
            seconds.append(max(0, int((final.decided_at - first.requested_at).total_seconds() // 1)))
    seconds.sort()

    def pct(p: Fraction) -> int | None:
        """The upper edge of the time-to-compensate bin holding the ceil(p*n)-th smallest duration."""
        if not seconds:
            return None
        value = seconds[rank_of(p, len(seconds)) - 1]
        return next((edge for edge in TTC_EDGES if value <= edge), None)

    approved, rejected = counts["aa"] + counts["ap"], counts["ra"] + counts["rp"]
    flagged = [f for f in flags.values() if _in_month(f[0].issued_at, region)]
    by_mismatch: dict[str, int] = {}
    for f in flagged:
        for m in {m.value for p in f for m in p.mismatches}:
            by_mismatch[m] = by_mismatch.get(m, 0) + 1
    return {
        "requests": counts["requests"], "within_authority": counts["requests"] - counts["queued"],
        "queued": counts["queued"], "escalated": counts["escalated"], "approved": approved,
        "approved_automatically": counts["aa"], "approved_by_approver": counts["ap"], "rejected": rejected,
        "rejected_automatically": counts["ra"], "rejected_by_approver": counts["rp"], "awaiting": counts["awaiting"],
        "approval_rate": None if approved + rejected == 0 else approved / (approved + rejected),
        "approver_approval_rate": (None if counts["ap"] + counts["rp"] == 0
                                   else counts["ap"] / (counts["ap"] + counts["rp"])),
        "escalation_share": None if counts["queued"] == 0 else counts["escalated"] / counts["queued"],
        "requested_minor": counts["req"], "approved_minor": counts["appr"],
        "approved_share_of_requested_amount": None if counts["appr_req"] == 0 else counts["appr"] / counts["appr_req"],
        "approval_time_seconds": {"decided_by_approver": counts["ap"] + counts["rp"], "p50": pct(Fraction(1, 2)),
                                  "p90": pct(Fraction(9, 10)), "open_bin_from_seconds": TTC_EDGES[-1]},
        "issues_flagged": {"count": len(flagged), "issued_minor": 700 * len(flagged),
                           "by_mismatch": dict(sorted(by_mismatch.items()))},
    }


def expected_actions(events: list, region: str) -> dict[str, Any]:  # type: ignore[type-arg]
    per: dict[int, list[tuple[datetime, str, ev.CorrectiveActionRecorded]]] = {}
    for event_type, p, r, _, event_id in events:
        if r == region and event_type == "audit.corrective_action_recorded":
            per.setdefault(p.action_id, []).append((p.updated_at, event_id, p))
    rows: dict[str, dict[str, int]] = {}
    for items in per.values():
        latest = max(items, key=lambda s: (s[0], s[1]))[2]
        opened_at = min(s[2].opened_at for s in items)
        if not _in_month(opened_at, region):
            continue
        effects = [s for s in items if s[2].effect is not None]
        effect = max(effects, key=lambda s: (s[0], s[1]))[2].effect if effects else None
        row = rows.setdefault(latest.kind, dict.fromkeys(("opened", "open", "in_progress", "done", "cancelled",
                                                          "open_due_by_period_end", "measured", "improved"), 0))
        row["opened"] += 1
        row[latest.status.value] += 1
        row["open_due_by_period_end"] += int(latest.status.value in ("open", "in_progress")
                                             and latest.due_on <= date(2026, 11, 30))
        row["measured"] += int(effect is not None)
        row["improved"] += int(effect is not None and effect.difference_high is not None
                               and effect.difference_high < 0)
    total = {k: sum(r[k] for r in rows.values()) for k in ("opened", "open", "in_progress", "done", "cancelled",
                                                             "open_due_by_period_end", "measured", "improved")}
    closed_base = total["opened"] - total["cancelled"]
    return {**total, "done_share": None if closed_base == 0 else total["done"] / closed_base,
            "improved_share_of_measured": None if total["measured"] == 0 else total["improved"] / total["measured"],
            "by_kind": [{"kind": k, **rows[k]} for k in sorted(rows)]}


async def _reset(engine) -> None:  # type: ignore[no-untyped-def]
    names = ["approval_requests", "issue_flags", "corrective_actions"]
    names += [f"{t}{suffix}" for t in ("approval_daily", "flag_daily", "action_daily") for suffix in ("", "_delta")]
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(names)}"))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6), n=st.integers(1, 30), batch=st.integers(1, 9), compact_every=st.integers(1, 4))
async def test_approvals_and_actions_equal_a_recomputation_from_the_raw_events(engine, seed, n, batch, compact_every):
    await _reset(engine)
    events = _events(seed, n)
    shuffled = events[:]
    random.Random(seed + 1).shuffle(shuffled)
    for k, i in enumerate(range(0, len(shuffled), batch)):
        await apply(engine, [delivered(t, p, region=r, at=at, event_id=e) for t, p, r, at, e in shuffled[i:i + batch]])
        if k % compact_every == 0:  # the report reads rollups half folded by the compactor, half in deltas
            await Compactor(type("Ctx", (), {"engine": engine})(), 1).run_once()  # type: ignore[arg-type]
    for region in REGIONS:
        result = await report(engine, catalogue().get(region), month(2026, 11))
        assert result["approvals"] == expected_approvals(events, region)
        assert result["corrective_actions"] == expected_actions(events, region)


async def test_the_same_events_again_change_nothing_and_the_csv_names_each_cell(engine):
    """Applying every event a second time (a redelivery after a crash, in another order and other batches)
    leaves both sections as they were; the CSV carries them cell by cell."""
    await _reset(engine)
    events = _events(7, 25)
    batches = [events[i:i + 4] for i in range(0, len(events), 4)]
    for part in batches:
        await apply(engine, [delivered(t, p, region=r, at=at, event_id=e) for t, p, r, at, e in part])
    first = await report(engine, catalogue().get("US"), month(2026, 11))
    again = events[::-1]
    for i in range(0, len(again), 7):
        await apply(engine, [delivered(t, p, region=r, at=at, event_id=e) for t, p, r, at, e in again[i:i + 7]])
    second = await report(engine, catalogue().get("US"), month(2026, 11))
    assert second["approvals"] == first["approvals"] == expected_approvals(events, "US")
    assert second["corrective_actions"] == first["corrective_actions"]
    csv = report_csv(second)
    assert f"approvals.requests,{first['approvals']['requests']}" in csv
    assert "approvals.approval_time_seconds.p90," in csv
    assert "corrective_actions.opened," in csv


def test_exact_percentile_is_the_nearest_rank_the_sql_groups_feed():
    assert exact_percentile([(30, 1), (10, 2), (20, 1)], Fraction(1, 2)) == 10
    assert exact_percentile([(30, 1), (10, 2), (20, 1)], Fraction(9, 10)) == 30
    assert exact_percentile([], Fraction(1, 2)) is None
