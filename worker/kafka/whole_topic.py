"""A whole topic read by every worker, without a consumer group: to its end at start, then followed live."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.core import ComplianceError

log = logging.getLogger("worker.topics")

METADATA_WAIT_SECONDS = 30.0


class TopicMissing(ComplianceError):
    """The topic has no partitions in the broker's metadata (may succeed on a retry)."""

    retriable = True


class TopicRecord(NamedTuple):
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class WholeTopic:
    """Reads every partition of ``topic`` (each worker must see every record: policies, overrides)."""

    def __init__(self, bootstrap: list[str], topic: str, security: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.security = dict(security or {})  # security.client_options(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self.end_offsets: dict[int, int] = {}

    async def start(self, from_offsets: dict[int, int] | None = None) -> list[TopicRecord]:
        """Assign every partition and read to the current end, from the beginning or ``from_offsets``.

        Returns what was read; ``end_offsets`` then says where following will continue.
        """
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed", **self.security,
        )
        await consumer.start()
        partitions = consumer.partitions_for_topic(self.topic)
        # A topic created a moment ago may take a while to reach the broker's metadata (seen: > 1 s under load).
        deadline = time.monotonic() + METADATA_WAIT_SECONDS
        while not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
            partitions = consumer.partitions_for_topic(self.topic) or set()
            if not partitions and time.monotonic() > deadline:
                raise TopicMissing(f"topic {self.topic} has no partitions in the broker's metadata after "
                                   f"{METADATA_WAIT_SECONDS:.0f}s")
            if not partitions:
                await asyncio.sleep(0.1)
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_offsets is None:
            await consumer.seek_to_beginning(*assigned)
        else:
            for tp in assigned:
                consumer.seek(tp, from_offsets.get(tp.partition, 0))
        ends = await consumer.end_offsets(assigned)
        self.end_offsets = {tp.partition: offset for tp, offset in ends.items()}
        records: list[TopicRecord] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                records.extend(TopicRecord(tp.partition, m.offset, m.timestamp, m.key, m.value) for m in messages)
        return records

    async def follow(self, on_record: Callable[[TopicRecord], Awaitable[None]]) -> None:
        """Hand every record published from now on to ``on_record``, until cancelled."""
        assert self._consumer is not None, "start() first"
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:  # the broker is away: aiokafka reconnects, we keep asking
                log.warning("reading %s failed: %s", self.topic, exc, extra={"event": "topic_read_failed"})
                await asyncio.sleep(1)
                continue
            for tp, messages in batches.items():
                for m in messages:
                    await on_record(TopicRecord(tp.partition, m.offset, m.timestamp, m.key, m.value))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
