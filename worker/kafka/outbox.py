"""A batch's output records written straight into aiokafka's batch builders: one delivery future per producer batch."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from worker.core.partitioning import murmur2

NO_HEADERS: list[tuple[str, bytes]] = []  # never mutated: what BatchBuilder.append takes for none
PARTITION_CACHE_SIZE = 65_536  # keys whose partition is remembered, per topic


def murmur2_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's ``DefaultPartitioner`` (Java's for keyed records) with the core's murmur2, which is faster."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]


class Outbox:
    """Collects records per topic and partition in aiokafka ``BatchBuilder``s and sends each as one batch.

    ``AIOKafkaProducer.send`` costs ~10 us of Python per record (metadata and
    transaction checks, the partitioner, a future per record); appending to a
    builder costs ~1 us. The records, their partitions (the producer's partitioner
    for keyed records, as ``send`` would pick) and their order within a partition
    are what ``send`` would have produced. A full builder is sent at once
    (``send_batch`` waits, as ``send`` does, while the partition's previous batch is
    still queued); ``flush`` sends the rest and returns every delivery future of
    the batch, which the caller awaits before it acks the input.

    Not for transactional producers: under exactly_once the agent sends through
    Faust, which serialises sends with its transaction commits.
    """

    def __init__(
        self, producer: Callable[[], AIOKafkaProducer], partitioner: Callable[..., int] | None = None
    ) -> None:
        self._producer = producer  # looked up per batch: Faust replaces its producer when it restarts it
        self._partitioner = partitioner or murmur2_partitioner
        self._builders: dict[tuple[str, int], Any] = {}
        self._deliveries: list[asyncio.Future[Any]] = []
        # What the last flush sent: (topic, partition, delivery future, records), for callers that need the offsets.
        self.sent: list[tuple[str, int, asyncio.Future[Any], int]] = []
        self._sending: list[tuple[str, int, asyncio.Future[Any], int]] = []
        self._partitions: dict[str, tuple[list[int], dict[bytes, int]]] = {}
        self._checked: set[str] = set()  # topics whose partitions were looked up for this batch

    def append(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> bool:
        """Add a record when that needs no wait: False (nothing added) when the caller must ``await add`` instead.

        That is when the record's builder is full, or when the topic's partitions are not yet looked up for this
        batch. Per record a coroutine costs about as much as the append itself; most records need none.
        """
        if partition is None:
            if topic not in self._checked:
                return False
            partition = self._partition_for_key(topic, key)
        builders = self._builders
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[(topic, partition)] = self._producer().create_batch()
        return builder.append(timestamp=None, key=key, value=value, headers=headers or NO_HEADERS) is not None

    async def add(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        if partition is None:
            partition = await self._partition_of(topic, key)
        builders = self._builders
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[(topic, partition)] = self._producer().create_batch()
        headers = headers or NO_HEADERS
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is not None:
            return
        await self._send(topic, partition, builder)
        builder = builders[(topic, partition)] = self._producer().create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:  # pragma: no cover
            raise AssertionError("an empty aiokafka batch refused a record")

    async def flush(self) -> list[asyncio.Future[Any]]:
        """Send what is still collected; the delivery futures of everything added since the last flush."""
        builders, self._builders = self._builders, {}
        for (topic, partition), builder in builders.items():
            if builder.record_count():
                builder.close()  # complete: aiokafka sends a closed batch without waiting for producer_linger
                await self._send(topic, partition, builder)
        deliveries, self._deliveries = self._deliveries, []
        self.sent, self._sending = self._sending, []
        self._checked.clear()
        return deliveries

    def discard(self) -> None:
        """Forget what a failed batch left unsent: its input is not acked, and a state change sent later than a
        newer one of the same product would make the changelog restore the older."""
        self._builders.clear()
        self._deliveries.clear()
        self._sending.clear()
        self._checked.clear()

    async def _send(self, topic: str, partition: int, builder: Any) -> None:
        delivery = await self._producer().send_batch(builder, topic, partition=partition)
        self._deliveries.append(delivery)
        self._sending.append((topic, partition, delivery, builder.record_count()))

    async def _partition_of(self, topic: str, key: bytes | None) -> int:
        known = self._partitions.get(topic)
        if topic not in self._checked:  # once per batch, as partitions may be added to a topic while we run
            partitions = sorted(await self._producer().partitions_for(topic))
            if known is None or known[0] != partitions:
                known = self._partitions[topic] = (partitions, {})
            self._checked.add(topic)
        return self._partition_for_key(topic, key)

    def _partition_for_key(self, topic: str, key: bytes | None) -> int:
        partitions, by_key = self._partitions[topic]
        if key is None:
            return int(self._partitioner(key, partitions, partitions))
        partition = by_key.get(key)
        if partition is None:
            if len(by_key) >= PARTITION_CACHE_SIZE:
                by_key.clear()
            partition = by_key[key] = self._partitioner(key, partitions, partitions)
        return partition
