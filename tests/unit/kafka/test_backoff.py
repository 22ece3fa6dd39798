"""The metadata-retry backoff that keeps a worker quiet while its broker is away."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.client import AIOKafkaClient

from worker.kafka import backoff as kafka_backoff


def test_backoff_doubles_up_to_the_cap() -> None:
    waits = [kafka_backoff.backoff_seconds(failures, 0.1) for failures in range(1, 8)]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert kafka_backoff.backoff_seconds(10_000, 0.1) == kafka_backoff.MAX_BACKOFF_SECONDS


def test_failed_metadata_updates_back_off_and_a_success_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AIOKafkaClient, "_metadata_update", AIOKafkaClient._metadata_update)  # restored afterwards
    outcomes = iter([False, False, False, True, False])

    async def upstream(client: AIOKafkaClient, cluster_metadata: object, topics: object) -> bool:
        return next(outcomes)

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(kafka_backoff, "_original_metadata_update", upstream)
    monkeypatch.setattr(kafka_backoff.asyncio, "sleep", sleep)
    kafka_backoff.install()

    async def run() -> list[bool]:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9", retry_backoff_ms=100)
        try:
            return [await client._metadata_update(client.cluster, set()) for _ in range(5)]  # noqa: SLF001
        finally:
            await client.close()

    assert asyncio.run(run()) == [False, False, False, True, False]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.1])  # nothing after the success, then from the start again
