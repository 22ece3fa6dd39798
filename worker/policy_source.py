"""The policy topic: every worker reads all of it, the newest valid policy document is the one in force."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from worker.core import InvalidPolicy, Policy
from worker.core.policy import parse_policy_bytes

log = logging.getLogger("worker.policy")

COMPACTED = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class PolicyRecord:
    """One document read from the topic, valid (``policy``) or not (``error``)."""

    offset: int
    partition: int
    timestamp_ms: int
    policy: Policy | None
    error: str | None


def parse_record(value: bytes | None, partition: int, offset: int, timestamp_ms: int) -> PolicyRecord:
    if value is None:
        return PolicyRecord(offset, partition, timestamp_ms, None, "empty record (tombstone)")
    try:
        return PolicyRecord(offset, partition, timestamp_ms, parse_policy_bytes(value, source="policy document"), None)
    except InvalidPolicy as exc:
        return PolicyRecord(offset, partition, timestamp_ms, None, exc.message)


async def ensure_policy_topic(bootstrap: list[str], topic: str, replication: int) -> None:
    """A compacted, single-partition topic: one total order of policy documents."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            try:
                await admin.create_topics([NewTopic(topic, 1, replication, topic_configs=COMPACTED)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


class PolicySource:
    """Reads the whole policy topic without a consumer group (each worker must see every document)."""

    def __init__(self, bootstrap: list[str], topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> list[PolicyRecord]:
        """Assign every partition, read from the beginning to the current end; return what was there."""
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        )
        await consumer.start()
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
            partitions = consumer.partitions_for_topic(self.topic) or set()
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        records: list[PolicyRecord] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                records.extend(parse_record(m.value, tp.partition, m.offset, m.timestamp) for m in messages)
        return records

    async def follow(self, on_record: Callable[[PolicyRecord], Awaitable[None]]) -> None:
        """Hand every document published from now on to ``on_record``, until cancelled."""
        assert self._consumer is not None, "start() first"
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:  # the broker is away: aiokafka reconnects, we keep asking
                log.warning("policy topic read failed: %s", exc, extra={"event": "policy_read_failed"})
                await asyncio.sleep(1)
                continue
            for tp, messages in batches.items():
                for message in messages:
                    await on_record(parse_record(message.value, tp.partition, message.offset, message.timestamp))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


def newest_valid(records: list[PolicyRecord]) -> Policy | None:
    """The newest valid document: the last by (timestamp, partition, offset) that parsed."""
    valid = [r for r in records if r.policy is not None]
    if not valid:
        return None
    return max(valid, key=lambda r: (r.timestamp_ms, r.partition, r.offset)).policy
