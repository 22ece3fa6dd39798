"""The policy topic: every worker reads all of it, the newest valid policy document is the one in force."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from worker.core import ComplianceError, InvalidPolicy, Policy
from worker.core.policy import parse_policy_bytes

log = logging.getLogger("worker.policy")

COMPACTED = {"cleanup.policy": "compact"}
METADATA_WAIT_SECONDS = 30.0


class PolicyTopicError(ComplianceError):
    """The policy topic could not be created (may succeed on a retry)."""

    retriable = True


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


async def _topic_warnings(admin: AIOKafkaAdminClient, topic: str) -> tuple[str, ...]:
    """What is off about an existing policy topic (it is never altered: that is an operator's call)."""
    warnings = []
    described = await admin.describe_topics([topic])
    partitions = len(described[0]["partitions"]) if described else 0
    if partitions != 1:
        warnings.append(
            f"topic {topic} has {partitions} partitions, not 1: documents of different versions are not in one order"
        )
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": None})])
    values = {entry[0]: entry[1] for response in responses for resource in response.resources for entry in resource[4]}
    cleanup = values.get("cleanup.policy")
    if cleanup is not None and "compact" not in cleanup.split(","):
        warnings.append(f"topic {topic} has cleanup.policy={cleanup}, not compact: old policies expire with retention")
    return tuple(warnings)


async def ensure_policy_topic(
    admin: AIOKafkaAdminClient, topic: str, replication_factor: int
) -> tuple[bool, tuple[str, ...]]:
    """Create the policy topic (compacted, one partition: one total order) if missing; (created, what is off)."""
    if topic in set(await admin.list_topics()):
        return False, await _topic_warnings(admin, topic)
    try:
        response = await admin.create_topics([NewTopic(topic, 1, replication_factor, topic_configs=COMPACTED)])
    except TopicAlreadyExistsError:
        return False, await _topic_warnings(admin, topic)
    for topic_error in response.topic_errors:
        code = topic_error[1]
        if code == TopicAlreadyExistsError.errno:
            return False, await _topic_warnings(admin, topic)  # created by someone else meanwhile
        if code:
            message = topic_error[2] if len(topic_error) > 2 and topic_error[2] else for_code(code).__name__
            raise PolicyTopicError(f"cannot create topic {topic}: {message}")
    return True, ()


class PolicySource:
    """Reads the whole policy topic without a consumer group (each worker must see every document)."""

    def __init__(self, bootstrap: list[str], topic: str, security: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.security = dict(security or {})  # security.client_options(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self.end_offsets: dict[int, int] = {}

    async def start(self, from_offsets: dict[int, int] | None = None) -> list[PolicyRecord]:
        """Assign every partition and read to the current end, from the beginning or ``from_offsets``.

        Returns what was read; ``end_offsets`` then says where following will continue.
        """
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", **self.security,
        )
        await consumer.start()
        partitions = consumer.partitions_for_topic(self.topic)
        # A topic created a moment ago may take a while to reach the broker's metadata (seen: > 1 s under load).
        deadline = time.monotonic() + METADATA_WAIT_SECONDS
        while not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
            partitions = consumer.partitions_for_topic(self.topic) or set()
            if not partitions and time.monotonic() > deadline:
                raise PolicyTopicError(f"topic {self.topic} has no partitions in the broker's metadata after "
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


class Verdict(NamedTuple):
    """What a policy document does to the policy in force."""

    policy: Policy  # in force afterwards
    changed: bool
    rejection: str | None  # None, "invalid" or "version_reused"


def judge(current: Policy, record: PolicyRecord) -> Verdict:
    """The rule every worker applies to each document, in topic order, at start and live alike.

    An invalid document changes nothing. A document that reuses the version in
    force with other content changes nothing either: one version, one content.
    Any other valid document is put in force.
    """
    new = record.policy
    if new is None:
        return Verdict(current, False, "invalid")
    if new.version == current.version:
        return Verdict(current, False, None if new.digest == current.digest else "version_reused")
    return Verdict(new, True, None)


def replay(records: list[PolicyRecord], fallback: Policy) -> tuple[Policy, list[tuple[PolicyRecord, str]]]:
    """The policy in force after the whole topic, starting from ``fallback``, and the documents rejected on the way."""
    policy = fallback
    rejected = []
    for record in sorted(records, key=lambda r: (r.timestamp_ms, r.partition, r.offset)):
        verdict = judge(policy, record)
        policy = verdict.policy
        if verdict.rejection is not None:
            rejected.append((record, verdict.rejection))
    return policy, rejected
