"""What became of an issued voucher, on the decision record (real PostgreSQL, the real handlers and API):
an expiry reported weeks before the voucher's validity ends shows the compensation as expired, early."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from prometheus_client import REGISTRY

from services.auto_comp.app import build_app
from services.auto_comp.config import Settings
from services.auto_comp.handlers import GrantHandler, TicketHandler
from services.auto_comp.vouchers import VoucherLifecycleHandler
from shared.auth import TokenService
from shared.contracts import events as ev
from shared.contracts.registry import make_envelope
from tests.integration.auto_comp.autocomp_support import (
    NOW,
    RULES,
    allowance_requests,
    apply,
    autocomp_engine,
    grant,
    late_ticket,
    rows,
    write_strategies,
)

pytestmark = pytest.mark.integration


def lifecycle(kind: str, cid: str, *, at, buyer: str = "B-v") -> ev.Payload:
    payloads = {"voucher.expired": ev.VoucherExpired(compensation_id=cid, buyer_id=buyer),
                "voucher.revoked": ev.VoucherRevoked(compensation_id=cid, buyer_id=buyer, reason="fraud"),
                "voucher.redeemed": ev.VoucherRedeemed(compensation_id=cid, buyer_id=buyer, order_id="O-later",
                                                       discount=ev.PositiveMoney(amount_minor=300, currency="SGD"))}
    return make_envelope(kind, payloads[kind], source="promotions", region="SG", occurred_at=at)


def counted(state: str, early: str) -> float:
    return REGISTRY.get_sample_value("auto_comp_voucher_lifecycle_total",
                                     {"region": "SG", "state": state, "early": early}) or 0.0


@pytest.fixture(scope="module")
async def setup(fresh_database, tmp_path_factory):
    folder = write_strategies(tmp_path_factory.mktemp("voucher-strategies"))
    settings = Settings(database_url=fresh_database, strategies_dir=folder)
    engine = await autocomp_engine(fresh_database)
    app = build_app(settings, manage_lifecycle=False)
    tickets = TicketHandler(app.state.store, RULES)
    await apply(engine, tickets, [late_ticket(t, f"B-{t}", days_late=4) for t in ("V-1", "V-2", "V-3")])
    # The tickets wait for their partition's first allowance: the ledger grants it, and they are issued.
    [request] = await allowance_requests(engine)
    await apply(engine, GrantHandler(RULES), [grant(request["payload"], 100_000)])
    ids = {r["ticket_id"]: r["compensation_id"] for r in await rows(
        engine, "SELECT ticket_id, compensation_id FROM compensations")}
    tokens = TokenService(settings.auth_token_secret.get_secret_value(), settings.auth_token_issuer)
    headers = {"Authorization": f"Bearer {tokens.issue('ops', ['ops_admin'], ['SG'])}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://auto-comp") as client:
        yield engine, client, headers, ids
    await app.state.ctx.engine.dispose()
    await engine.dispose()


async def test_an_early_expiry_shows_the_compensation_expired_and_says_how_early(setup):
    engine, client, headers, ids = setup
    before = counted("expired", "true"), counted("redeemed", "false"), counted("expired", "false")
    [valid_until] = [r["expires_at"] for r in await rows(
        engine, "SELECT expires_at FROM compensations WHERE compensation_id = :c", c=ids["V-1"])]
    early = lifecycle("voucher.expired", ids["V-1"], at=valid_until - timedelta(days=21))
    on_time = lifecycle("voucher.expired", ids["V-3"], at=valid_until + timedelta(minutes=1))
    used = lifecycle("voucher.redeemed", ids["V-2"], at=NOW + timedelta(days=2))
    manual = lifecycle("voucher.expired", "MC-not-ours", at=NOW)
    await apply(engine, VoucherLifecycleHandler(), [early, used, on_time, manual])

    body = (await client.get("/v1/decisions/V-1", headers=headers)).json()
    assert body["outcome"] == "issued"  # the decision stands: a voucher was issued ...
    comp = body["compensation"]
    assert comp["status"] == "expired"  # ... and it is no longer shown as still issued
    life = comp["voucher_lifecycle"]
    assert life["state"] == "expired" and life["event_id"] == early.event_id and life["expired_early"] is True
    assert life["expired_early_by_seconds"] == 21 * 86_400
    second = (await client.get("/v1/decisions/V-2", headers=headers)).json()["compensation"]
    assert second["status"] == "redeemed" and second["voucher_lifecycle"]["expired_early"] is False
    third = (await client.get("/v1/decisions/V-3", headers=headers)).json()["compensation"]
    assert third["status"] == "expired" and third["voucher_lifecycle"]["expired_early_by_seconds"] is None
    assert (counted("expired", "true"), counted("redeemed", "false"), counted("expired", "false")) == (
        before[0] + 1, before[1] + 1, before[2] + 1)
    assert await rows(engine, "SELECT * FROM voucher_lifecycle WHERE compensation_id = 'MC-not-ours'") == []

    # a voucher closes once: a later revocation or a redelivered expiry changes nothing
    await apply(engine, VoucherLifecycleHandler(), [lifecycle("voucher.revoked", ids["V-1"], at=NOW),
                                                    lifecycle("voucher.expired", ids["V-1"], at=NOW)])
    again = (await client.get("/v1/decisions/V-1", headers=headers)).json()["compensation"]
    assert again["voucher_lifecycle"]["event_id"] == early.event_id
    assert counted("expired", "true") == before[0] + 1
