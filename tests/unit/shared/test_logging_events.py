"""LOG_EVENTS_PERCENT: event lines sampled by correlation id, the same choice in every process."""

from __future__ import annotations

import logging

import pytest

from shared import logging as shared_logging


@pytest.fixture
def percent():
    def set_to(value: float) -> None:
        shared_logging.set_events_percent(value)
    yield set_to
    set_to(100.0)


def test_sampling_keeps_or_drops_all_lines_of_a_correlation_id(percent):
    percent(10)
    cids = [f"corr-{n}" for n in range(20_000)]
    kept = [c for c in cids if shared_logging.traced(c)]
    assert 1_600 < len(kept) < 2_400  # about a tenth
    assert all(shared_logging.traced(c) for c in kept)  # deterministic: the same answer every time
    percent(20)
    assert set(kept) <= {c for c in cids if shared_logging.traced(c)}  # raising the share only adds tickets


def test_zero_and_hundred(percent):
    percent(0)
    assert not any(shared_logging.traced(f"c{n}") for n in range(1000))
    percent(100)
    assert all(shared_logging.traced(f"c{n}") for n in range(1000)) and shared_logging.traced(None)


def test_log_event_uses_the_given_correlation_id(percent, caplog):
    percent(100)
    log = logging.getLogger("test.events")
    with caplog.at_level(logging.INFO, logger="test.events"):
        shared_logging.log_event(log, "ticket decided", "corr-x", ticket_id="T1", outcome="issued")
    (record,) = caplog.records
    assert record.correlation_id == "corr-x" and record.ticket_id == "T1" and record.levelno == logging.INFO
    line = shared_logging.JsonFormatter("svc").format(record)
    assert '"correlation_id":"corr-x"' in line and '"outcome":"issued"' in line
