"""Budget allowances through the ledger's real handler and PostgreSQL (ADR 0012): grants held at once, charges
from either consumer group in any order with the return, the database's own guards, the invariant checker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.ledger import invariants
from shared.kafka import PermanentError
from shared.periods import period_of
from shared.regions import region
from tests.integration.ledger.ledger_support import apply, rows, scalar, set_budget
from tests.unit.ledger.ledger_factories import allowance_request, allowance_return, issued_from, manual, redeemed

pytestmark = pytest.mark.integration

PERIOD = period_of(datetime.now(UTC), region("SG"))  # grants are for now: the handler's clock


def request(aid: str, seq: int = 1, **kw):
    return allowance_request(aid, seq, period=PERIOD, **kw)


def returned(aid: str, spent: int, count: int, **kw):
    return allowance_return(aid, spent, count, period=PERIOD, **kw)


async def budget_row(engine, region: str = "SG") -> tuple:
    [row] = await rows(engine, "SELECT allotted_minor, reserved_minor, posted_auto_minor, released_minor "
                               "FROM budgets WHERE region = :r AND period = :p", r=region, p=PERIOD)
    return row


async def answers(engine, allowance_id: str) -> list[dict]:
    import orjson

    out = []
    for (value,) in await rows(engine, "SELECT value FROM outbox WHERE topic = 'budget.grants.v1' ORDER BY id"):
        env = orjson.loads(value)
        if env["payload"]["allowance_id"] == allowance_id:
            out.append(env["payload"])
    return out


async def violations(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        found = await invariants.check(conn, datetime.now(UTC), 86_400)
    return {k: v for k, v in found.items() if v}


async def test_grant_charges_and_return_keep_every_unit_accounted(engine, settings):
    await set_budget(engine, "SG", PERIOD, 100_000, "SGD")
    await apply(engine, settings, [request("LA1", at_least=2_000, wanted=20_000)])
    [answer] = await answers(engine, "LA1")
    granted = answer["granted"]["amount_minor"]
    assert answer["outcome"] == "granted" and granted >= 2_000 and answer["expires_at"]
    assert answer["pace"]["limit"]["amount_minor"] == 100_000
    assert await budget_row(engine) == (granted, 0, 0, 0)  # held at once: usage shows it as allotted
    # charges come through the books group (delta mode): allotted -> held for the voucher, posted for credit
    await apply(engine, settings, [issued_from("LA1", "lc1", 1_500),
                                   issued_from("LA1", "lc2", 500, kind="store_credit")])
    assert await budget_row(engine) == (granted - 2_000, 1_500, 500, 0)
    assert await rows(engine, "SELECT charged_minor, charged_count, status FROM allowances "
                              "WHERE allowance_id = 'LA1'") == [(2_000, 2, "open")]
    await apply(engine, settings, [returned("LA1", 2_000, 2)])
    assert await budget_row(engine) == (0, 1_500, 500, granted - 2_000)
    await apply(engine, settings, [redeemed("lc1", 1_000)])
    assert await budget_row(engine) == (0, 0, 1_500, granted - 1_500)
    lineage = await rows(engine, "SELECT reservation_id, allowance_id, status FROM reservations "
                                 "WHERE compensation_id = 'lc1'")
    assert lineage == [("lc1", "LA1", "posted")]
    assert await violations(engine) == {}


async def test_charges_arriving_after_the_return_are_held_to_what_was_reported_spent(engine, settings):
    await set_budget(engine, "SG", PERIOD, 100_000, "SGD")
    await apply(engine, settings, [request("LA2", at_least=1_000, wanted=1_000)])
    await apply(engine, settings, [returned("LA2", 900, 2)])  # overtook both charges
    await apply(engine, settings, [issued_from("LA2", "ld1", 600)])
    with pytest.raises(PermanentError, match="beyond the 900 reported spent"):
        await apply(engine, settings, [issued_from("LA2", "ld2", 400)])
    await apply(engine, settings, [issued_from("LA2", "ld3", 300)])
    assert await rows(engine, "SELECT charged_minor, charged_count, released_minor FROM allowances "
                              "WHERE allowance_id = 'LA2'") == [(900, 2, 100)]
    assert await violations(engine) == {}


async def test_a_repeated_request_is_answered_again_and_allots_nothing_more(engine, settings):
    await set_budget(engine, "SG", PERIOD, 100_000, "SGD")
    before = (await budget_row(engine))[0]
    await apply(engine, settings, [request("LA3", 1, at_least=500, wanted=5_000)])
    await apply(engine, settings, [request("LA3", 1, at_least=500, wanted=5_000)])  # re-sent
    first, second = await answers(engine, "LA3")
    assert first == second
    assert (await budget_row(engine))[0] == before + first["granted"]["amount_minor"]
    assert await scalar(engine, "SELECT count(*) FROM allowance_grants WHERE allowance_id = 'LA3'") == 1


async def test_the_database_refuses_allotting_beyond_the_limit_and_unaccounted_allowances(engine):
    await set_budget(engine, "GB", PERIOD, 1_000, "GBP")
    with pytest.raises(DBAPIError, match="automatic_within_limit"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE budgets SET allotted_minor = 1001 WHERE region = 'GB' AND period = :p"),
                               {"p": PERIOD})
    with pytest.raises(DBAPIError, match="allowance_accounted"):
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO allowances (allowance_id, region, period, currency, pacing_percent, owner, status, "
                "granted_minor, charged_minor) VALUES ('LA-bad', 'GB', :p, 'GBP', 100, 'x', 'open', 10, 11)"),
                {"p": PERIOD})


async def test_parallel_grants_and_charges_never_exceed_the_limit(engine, settings):
    """Allowance requests of many partitions at once (budget group, several consumers) while charges and
    manual compensations arrive (books group): the hard limit holds and the counters agree throughout."""
    await set_budget(engine, "ID", PERIOD, 50_000_000, "IDR")
    requests = [request(f"LP{i}", at_least=2_000_000, wanted=20_000_000, region="ID") for i in range(12)]
    await asyncio.gather(*(apply(engine, settings, [r], stripe=i % 3) for i, r in enumerate(requests)),
                         apply(engine, settings, [manual("LPm1", 5_000_000, region="ID", at=datetime.now(UTC))],
                               stripe=1))
    granted = dict(await rows(engine, "SELECT allowance_id, granted_minor FROM allowances "
                                      "WHERE allowance_id LIKE 'LP%'"))
    allotted, reserved, posted, _ = await budget_row(engine, "ID")
    assert allotted + reserved + posted <= 50_000_000 and allotted == sum(granted.values())
    charges = [issued_from(aid, f"lpc-{aid}", 1_000_000, region="ID") for aid, g in granted.items() if g >= 1_000_000]
    await asyncio.gather(*(apply(engine, settings, [c], stripe=i % 3) for i, c in enumerate(charges)),
                         *(apply(engine, settings, [returned(aid, 1_000_000 if g >= 1_000_000 else 0,
                                                                     1 if g >= 1_000_000 else 0, region="ID")])
                           for aid, g in granted.items()))
    allotted, reserved, posted, released = await budget_row(engine, "ID")
    assert allotted == 0 and reserved == 1_000_000 * len(charges)
    assert released == sum(granted.values()) - reserved
    assert await violations(engine) == {}
