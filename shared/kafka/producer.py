"""Producer helper: acks=all, keyed, compressed, contract headers on every record."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from shared.config import CommonSettings
from shared.contracts.envelope import Envelope
from shared.contracts.registry import encode_envelope, partition_key, spec_for, validate_payload

Headers = list[tuple[str, bytes]]


def envelope_headers(envelope: Envelope) -> Headers:
    headers = [
        ("event_type", envelope.event_type.encode()),
        ("schema_version", str(envelope.schema_version).encode()),
        ("event_id", envelope.event_id.encode()),
        ("correlation_id", envelope.correlation_id.encode()),
        ("region", envelope.region.encode()),
        ("content-type", b"application/json"),
    ]
    if envelope.traceparent:
        headers.append(("traceparent", envelope.traceparent.encode()))
    return headers


def record_for(envelope: Envelope) -> tuple[str, bytes, bytes, Headers]:
    """(topic, key, value, headers) of an envelope, as the contracts define them."""
    payload = validate_payload(envelope)
    return (spec_for(envelope).topic.value, partition_key(envelope, payload).encode(),
            encode_envelope(envelope), envelope_headers(envelope))


class EventProducer:
    """Thin wrapper over AIOKafkaProducer with the platform's defaults.

    ``enable_idempotence`` follows settings (off by default: correctness never depends on it, and the
    embedded broker does not implement InitProducerId).
    """

    def __init__(self, settings: CommonSettings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None

    def _build(self) -> AIOKafkaProducer:
        compression = None if self._settings.kafka_compression == "none" else self._settings.kafka_compression
        return AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=f"{self._settings.kafka_client_id_prefix}-{self._client_id}",
            acks="all",
            enable_idempotence=self._settings.kafka_enable_idempotence,
            compression_type=compression,
            linger_ms=self._settings.kafka_linger_ms,
            max_batch_size=256 * 1024,
            request_timeout_ms=15_000,
        )

    async def start(self) -> None:
        self._producer = self._build()
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("producer not started")
        return self._producer

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: Headers | None = None) -> asyncio.Future[Any]:
        """Queue a record; await the returned future for the broker's acknowledgement."""
        return await self.producer.send(topic, value=value, key=key, headers=headers or [])

    async def publish(self, envelope: Envelope) -> None:
        topic, key, value, headers = record_for(envelope)
        await (await self.send(topic, value, key, headers))

    async def ready(self) -> None:
        """Raise if no broker answers metadata (used by /readyz)."""
        await asyncio.wait_for(self.producer.client.fetch_all_metadata(), timeout=3)
