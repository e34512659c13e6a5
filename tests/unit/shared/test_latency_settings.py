"""Latency settings reach the Kafka clients: no producer linger by default (the relay queues whole batches
before it awaits), and the consumer's broker-side fetch wait is its own setting, not the poll timeout."""

import pytest

from shared.config import CommonSettings
from shared.kafka import ConsumerRunner, EventProducer

SECRET = "k" * 40


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> CommonSettings:
    monkeypatch.setenv("AUTH_TOKEN_SECRET", SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return CommonSettings()


async def test_the_producer_does_not_linger_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = EventProducer(settings(monkeypatch), "t")._build()
    assert producer._message_accumulator._linger_time == 0
    producer = EventProducer(settings(monkeypatch, KAFKA_LINGER_MS="5"), "t")._build()
    assert producer._message_accumulator._linger_time == 0.005


async def test_the_fetch_wait_is_its_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, CONSUMER_POLL_TIMEOUT_MS="200", CONSUMER_FETCH_MAX_WAIT_MS="15")
    runner = ConsumerRunner(settings=s, engine=None, group_id="g", topics=["t"],  # type: ignore[arg-type]
                            handler=None)  # type: ignore[arg-type]
    consumer = runner._build_consumer()
    assert consumer._fetch_max_wait_ms == 15
    assert s.consumer_kafka_commit_interval_ms == 1000


def test_latency_settings_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        settings(monkeypatch, CONSUMER_FETCH_MAX_WAIT_MS="0")
