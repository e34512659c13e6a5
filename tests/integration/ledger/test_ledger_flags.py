"""On the real PostgreSQL, through the ledger's batch handler: a voucher expiry reported weeks before the
voucher's validity ends is applied (budget released) and flagged (metric, WARNING log with its ids, the
compensation's lineage); a dispute's reversal names the people behind it in the lineage."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from services.ledger import queries
from tests.integration.ledger.ledger_support import apply, set_budget
from tests.unit.ledger.ledger_factories import NOW, carrier, correction, expired, issued, manual, request, seller

pytestmark = pytest.mark.integration


def early_count(region: str) -> float:
    return REGISTRY.get_sample_value("ledger_voucher_early_expiries_total", {"region": region}) or 0.0


async def test_an_early_expiry_is_applied_and_flagged_on_the_lineage(engine, settings, caplog):
    await set_budget(engine, "SG", "2026-11", 100_000, "SGD")
    await apply(engine, settings, [request("FL1", 700, at=NOW), request("FL2", 700, at=NOW)])
    await apply(engine, settings, [issued("FL1", 700, at=NOW), issued("FL2", 700, at=NOW)])
    before = early_count("SG")
    early_at = NOW + timedelta(days=9)  # valid for 30 days: reported 21 days early
    on_time = NOW + timedelta(days=30)
    caplog.set_level(logging.WARNING, logger="services.ledger.handlers")
    early_event, on_time_event = expired("comp-FL1", at=early_at), expired("comp-FL2", at=on_time)
    await apply(engine, settings, [early_event, on_time_event])
    assert early_count("SG") == before + 1
    [record] = [r for r in caplog.records if "expired before its validity ended" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert (record.compensation_id, record.reservation_id, record.event_id) == ("comp-FL1", "FL1",
                                                                                early_event.event_id)
    assert record.correlation_id == early_event.correlation_id and record.early_by_seconds == 21 * 86_400
    async with engine.connect() as conn:
        lineage = await queries.lineage(conn, "comp-FL1")
        on_time_lineage = await queries.lineage(conn, "comp-FL2")
        budget = await queries.get_budget(conn, "SG", "2026-11")
    # applied: the reservation is closed, its value released as breakage, the charge settled to 0
    assert lineage["reservations"][0]["status"] == "voided" and lineage["reservations"][0]["closed_by"] == "expired"
    assert budget.reserved == 0 and budget.breakage == 1_400
    [flag] = lineage["flags"]
    assert flag["flag"] == "expired_early" and flag["event_id"] == early_event.event_id
    assert flag["valid_until"] == NOW + timedelta(days=30) and flag["reported_at"] == early_at
    assert flag["early_by_seconds"] == 21 * 86_400
    assert on_time_lineage["flags"] == []
    # a redelivery under a new event id changes nothing and flags nothing again
    await apply(engine, settings, [expired("comp-FL1", at=early_at)])
    assert early_count("SG") == before + 1
    async with engine.connect() as conn:
        assert len((await queries.lineage(conn, "comp-FL1"))["flags"]) == 1


async def test_a_dispute_reversal_names_the_people_behind_it(engine, settings):
    await apply(engine, settings, [manual("FL-M1", 1_000, shares=[(seller(), 1_000)])])
    await apply(engine, settings, [correction("FL-K1", "FL-M1", 1_000, shares=[(carrier(), 1_000)],
                                              auditor="ada")])
    await apply(engine, settings, [correction("FL-K1-reversal", "FL-M1", 1_000, shares=[(seller(), 1_000)],
                                              corrects="FL-K1", auditor="sam", raised_by="lin",
                                              disputed_auditor="ada")])
    async with engine.connect() as conn:
        lineage = await queries.lineage(conn, "FL-M1")
    people = [(c["correction_id"], c["auditor_id"], c["dispute_raised_by"], c["disputed_auditor_id"])
              for c in lineage["corrections"]]
    assert people == [("FL-K1", "ada", None, None), ("FL-K1-reversal", "sam", "lin", "ada")]
    assert lineage["corrections"][1]["corrects_correction_id"] == "FL-K1"
