"""Budget allowances across both services' pure rules (ADR 0012): a hypothesis state machine over grants,
spends, expiries, returns, revocations, kills and duplicated or delayed messages, between auto_comp's
allowance rules (``services.auto_comp.domain.allowance``) and the ledger's book.

Messages travel as they do between the services: requests and returns of one allowance in order (one
partition of budget.allowances.v1), the ledger's answers of one allowance in order (budget.grants.v1), and
issued compensations in any order (compensations.issued.v1, keyed by buyer); any of them may be delivered
again. After every step: the budget's hard limit holds (automatic spend + outstanding allowances), the
ledger never charges an allowance beyond what it granted or what auto_comp reported spent, and no valid
message is ever refused. At the end, with everything delivered and every allowance closed: every allotted
unit was either spent (and charged) or returned, and nothing is outstanding."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from services.auto_comp.domain.allowance import Allowance, TakeKind, apply_answer, plan_request, take
from services.ledger.domain.allowance import GrantPolicy
from services.ledger.domain.book import Book
from services.ledger.domain.budget import BudgetState
from shared.contracts import events as ev
from shared.contracts.envelope import Envelope
from shared.contracts.registry import make_envelope, validate_payload
from shared.periods import period_bounds
from shared.regions import region

START = datetime(2026, 11, 15, 8, 0, tzinfo=UTC)
PERIOD = "2026-11"
END = period_bounds(PERIOD, region("SG"))[1]
LIMIT = 60_000
SAFETY = timedelta(seconds=5)
HORIZON = timedelta(seconds=30)
POLICY = GrantPolicy(lease=timedelta(seconds=60), share_percent=25, retry=timedelta(seconds=5))
PACING = {0: 100, 1: 100, 2: 10}  # partition -> pacing percent of the strategies spending there
_ids = itertools.count()


def _env(event_type: str, payload: ev.Payload, at: datetime) -> Envelope:
    return make_envelope(event_type, payload, source="auto_comp", region="SG", occurred_at=at,
                         event_id=f"e{next(_ids)}")


class AllowanceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.ledger = {"budgets": {("SG", PERIOD): BudgetState("SG", PERIOD, "SGD", LIMIT)}, "holds": {},
                       "compensations": {}, "corrections": {}, "allowances": {}}
        self.auto: dict[str, Allowance] = {}  # every allowance auto_comp ever opened
        self.owned: dict[int, Allowance] = {}  # the open one of each partition
        self.to_ledger: dict[str, list[Envelope]] = {}  # per allowance, in order
        self.to_auto: dict[str, list[ev.BudgetAllowanceDecided]] = {}  # per allowance, in order
        self.issued: list[Envelope] = []  # in flight, any order
        self.delivered: list[Envelope] = []  # to the ledger, for redelivery
        self.answered: list[ev.BudgetAllowanceDecided] = []  # to auto_comp, for redelivery
        self.spent_by_auto = 0

    # ---------------------------------------------------------------- auto_comp

    def _open(self, partition: int) -> Allowance:
        a = self.owned.get(partition)
        if a is not None and a.expired(self.now):
            self._close(a, "expired")
            a = None
        if a is None:
            a = Allowance(f"al-{partition}-{next(_ids)}", "SG", PERIOD, partition, PACING[partition], "SGD",
                          f"auto_comp.tickets:{partition}", close_at=END - SAFETY)
            self.auto[a.allowance_id] = a
            self.owned[partition] = a
        return a

    def _close(self, a: Allowance, reason: str) -> None:
        """Close (no spend after this) and return exactly what was spent, after its requests."""
        if not a.open:
            return
        a.open = False
        if self.owned.get(a.partition) is a:
            del self.owned[a.partition]
        returned = ev.BudgetAllowanceReturned(
            allowance_id=a.allowance_id, budget_period=PERIOD,
            spent=ev.MoneyTotal(amount_minor=a.spent, currency="SGD"), spent_count=a.count,
            reason=ev.AllowanceCloseReason(reason), closed_at=self.now)
        self.to_ledger.setdefault(a.allowance_id, []).append(_env("budget.allowance_returned", returned, self.now))

    def _ask(self, a: Allowance) -> None:
        if plan_request(a, self.now, horizon=HORIZON):
            self.to_ledger.setdefault(a.allowance_id, []).append(_env("budget.allowance_requested",
                                                                      ev.BudgetAllowanceRequested(
                allowance_id=a.allowance_id, request_seq=a.request_seq, budget_period=PERIOD,
                pacing_allowance_percent=a.pacing_percent,
                at_least=ev.MoneyTotal(amount_minor=a.request_at_least, currency="SGD"),
                wanted=ev.MoneyTotal(amount_minor=a.request_wanted, currency="SGD"), owner=a.owner), self.now))
        # a batch's own counters end with its transaction
        a.spent_now = a.count_now = a.shortfall = a.largest = 0
        a.request_now = a.answered_now = a.waiting = False

    @rule(partition=st.sampled_from(sorted(PACING)), tickets=st.lists(st.integers(1, 3_000), min_size=1, max_size=6))
    def spend(self, partition: int, tickets: list[int]) -> None:
        """A batch of tickets: each spent from the partition's allowance at once (or a lower tier), or it
        waits (and the batch asks) or is denied."""
        a = self._open(partition)
        for amount in tickets:
            tiers = [amount, amount // 2] if amount > 1 else [amount]
            self._take(a, tiers)
        self._ask(a)

    def _take(self, a: Allowance, tiers: list[int]) -> None:
        t = take(a, tiers, self.now)
        if t.kind is TakeKind.SPEND:
            assert t.amount in tiers and a.spent <= a.granted
            self.spent_by_auto += t.amount
            cid = f"c{next(_ids)}"
            self.issued.append(_env("compensation.issued", ev.CompensationIssued(
                compensation_id=cid, reservation_id=cid, ticket_id=f"T{cid}", order_id=f"O{cid}", buyer_id="B",
                strategy_id="s", strategy_version=1, reason=ev.TicketReason.LATE_DELIVERY,
                kind=ev.CompensationKind.STORE_CREDIT if len(tiers) % 2 else ev.CompensationKind.VOUCHER,
                amount=ev.PositiveMoney(amount_minor=t.amount, currency="SGD"),
                liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM), amount_minor=t.amount)],
                valid_until=self.now + timedelta(days=30), allowance_id=a.allowance_id), self.now))

    @rule(partition=st.sampled_from(sorted(PACING)))
    def crash_mid_batch(self, partition: int) -> None:
        """A consumer killed before its batch commits: nothing of the batch happened (the next owner redoes
        it from the same rows)."""
        a = self.owned.get(partition)
        if a is None:
            return
        before = (a.spent, a.count, a.request_seq, a.granted)
        ghost = Allowance(**{k: getattr(a, k) for k in a.__dataclass_fields__})
        take(ghost, [1], self.now)
        assert (a.spent, a.count, a.request_seq, a.granted) == before

    @rule(partition=st.sampled_from(sorted(PACING)), why=st.sampled_from(["revoked", "shutdown"]))
    def hand_over(self, partition: int, why: str) -> None:
        a = self.owned.get(partition)
        if a is not None:
            self._close(a, why)

    @rule()
    def keeper(self) -> None:
        """Any replica closes what is past its close_at (a killed owner's allowance comes back this way)."""
        for a in list(self.owned.values()):
            if a.expired(self.now):
                self._close(a, "expired")

    @rule(seconds=st.sampled_from([1, 2, 5, 10, 30, 70]))
    def time_passes(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: any(self.to_auto.values()))
    @rule(data=st.data())
    def answer_reaches_auto_comp(self, data: st.DataObject) -> None:
        aid = data.draw(st.sampled_from(sorted(k for k, v in self.to_auto.items() if v)))
        self._apply_answer(self.to_auto[aid].pop(0))

    @rule()
    def messages_flow(self) -> None:
        """A quiet moment: every request and return reaches the ledger, and every answer auto_comp."""
        for aid in sorted(self.to_ledger):
            while self.to_ledger[aid]:
                self._deliver(self.to_ledger[aid].pop(0))
        for aid in sorted(self.to_auto):
            while self.to_auto[aid]:
                self._apply_answer(self.to_auto[aid].pop(0))

    @precondition(lambda self: bool(self.answered))
    @rule(data=st.data())
    def answer_again(self, data: st.DataObject) -> None:
        self._apply_answer(data.draw(st.sampled_from(self.answered)), again=True)

    def _apply_answer(self, answer: ev.BudgetAllowanceDecided, again: bool = False) -> None:
        a = self.auto[answer.allowance_id]
        granted_before = a.granted
        applied = apply_answer(a, seq=answer.request_seq, granted=answer.granted.amount_minor,
                               granted_total=answer.granted_total.amount_minor, expires_at=answer.expires_at,
                               limited_by=answer.limited_by, retry_after=answer.retry_after, detail=answer.detail,
                               now=self.now, safety=SAFETY, period_end=END)
        if again:
            assert a.granted == granted_before  # a repeated answer grants nothing new
        else:
            self.answered.append(answer)
        if applied and a.granted and a.expired(self.now):
            self._close(a, "expired")
        elif a.open:
            self._ask(a)

    # ---------------------------------------------------------------- ledger

    def _book(self) -> Book:
        return Book(now=self.now, policy=POLICY, **self.ledger)  # type: ignore[arg-type]

    @precondition(lambda self: any(self.to_ledger.values()))
    @rule(data=st.data())
    def request_or_return_reaches_the_ledger(self, data: st.DataObject) -> None:
        aid = data.draw(st.sampled_from(sorted(k for k, v in self.to_ledger.items() if v)))
        self._deliver(self.to_ledger[aid].pop(0))

    @precondition(lambda self: bool(self.issued))
    @rule(data=st.data())
    def compensation_reaches_the_ledger(self, data: st.DataObject) -> None:
        self._deliver(self.issued.pop(data.draw(st.integers(0, len(self.issued) - 1))))

    @precondition(lambda self: bool(self.delivered))
    @rule(data=st.data())
    def delivered_again(self, data: st.DataObject) -> None:
        """A redelivered or re-sent message (the business-level duplicate: a new event id)."""
        env = data.draw(st.sampled_from(self.delivered))
        self._deliver(env.model_copy(update={"event_id": f"e{next(_ids)}"}), again=True)

    @rule(amount=st.integers(1, 8_000))
    def manual_compensation(self, amount: int) -> None:
        """Always charged: shrinks what later grants may give, never what was granted."""
        cid = f"m{next(_ids)}"
        self._deliver(make_envelope("compensation.manual_issued", ev.ManualCompensationIssued(
            compensation_id=cid, ticket_id=f"T{cid}", order_id=f"O{cid}", buyer_id="B", agent_id="a", team="t",
            kind=ev.CompensationKind.STORE_CREDIT, amount=ev.PositiveMoney(amount_minor=amount, currency="SGD"),
            reason_code="x", liability=[ev.LiabilityShare(party=ev.LiableParty(type=ev.PartyType.PLATFORM),
                                                          amount_minor=amount)]),
            source="intake", region="SG", occurred_at=self.now))

    def _deliver(self, env: Envelope, again: bool = False) -> None:
        book = self._book()
        book.apply(env, validate_payload(env))  # a valid message in a valid order is never refused
        for _, answer in book.out.allowance_answers:
            self.to_auto.setdefault(answer.allowance_id, []).append(answer)
        if not again:
            self.delivered.append(env)

    # ---------------------------------------------------------------- invariants

    @invariant()
    def budget_holds(self) -> None:
        b = self.ledger["budgets"][("SG", PERIOD)]
        assert b.automatic_committed <= LIMIT
        assert min(b.allotted, b.reserved, b.posted_auto) >= 0
        assert b.allotted == sum(a.outstanding for a in self.ledger["allowances"].values())

    @invariant()
    def allowances_account_for_every_unit(self) -> None:
        in_flight: dict[str, int] = {}
        for env in self.issued:
            aid = env.payload["allowance_id"]
            in_flight[aid] = in_flight.get(aid, 0) + env.payload["amount"]["amount_minor"]
        for aid, a in self.ledger["allowances"].items():
            mine = self.auto[aid]
            assert a.charged + a.released <= a.granted and a.outstanding >= 0
            assert mine.spent <= mine.granted <= a.granted  # never spent beyond what the ledger granted
            assert a.charged + in_flight.get(aid, 0) == mine.spent  # every spend charged or on its way
            if a.returned:
                # the return reported exactly what was spent; the rest was released
                assert a.spent_reported == mine.spent and a.released == a.granted - mine.spent
                assert not mine.open

    def teardown(self) -> None:
        """Everything closed and delivered: every allotted unit was spent and charged, or returned."""
        for a in list(self.owned.values()):
            self._close(a, "shutdown")
        while any(self.to_ledger.values()) or any(self.to_auto.values()) or self.issued:
            for aid in sorted(self.to_ledger):
                while self.to_ledger[aid]:
                    self._deliver(self.to_ledger[aid].pop(0))
            for aid in sorted(self.to_auto):
                while self.to_auto[aid]:
                    self._apply_answer(self.to_auto[aid].pop(0))
            for a in list(self.owned.values()):
                self._close(a, "shutdown")
            while self.issued:
                self._deliver(self.issued.pop())
        b = self.ledger["budgets"][("SG", PERIOD)]
        assert b.allotted == 0
        assert b.reserved + b.posted_auto == self.spent_by_auto
        for aid, a in self.ledger["allowances"].items():
            assert a.returned and a.settled and a.charged == self.auto[aid].spent
            assert a.granted == a.charged + a.released


TestAllowances = AllowanceMachine.TestCase
TestAllowances.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
