"""The policy topic: every worker reads all of it, the newest valid policy document is the one in force."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from worker.core import ComplianceError, InvalidPolicy, Policy
from worker.core.policy import parse_policy_bytes
from worker.kafka.whole_topic import TopicRecord, WholeTopic

log = logging.getLogger("worker.policy")

COMPACTED = {"cleanup.policy": "compact"}


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
        self._topic = WholeTopic(bootstrap, topic, security)

    @property
    def end_offsets(self) -> dict[int, int]:
        """Where reading stopped at start: following continues there."""
        return self._topic.end_offsets

    async def start(self, from_offsets: dict[int, int] | None = None) -> list[PolicyRecord]:
        """Every document to the current end, from the beginning or ``from_offsets``."""
        return [_parsed(record) for record in await self._topic.start(from_offsets)]

    async def follow(self, on_record: Callable[[PolicyRecord], Awaitable[None]]) -> None:
        """Hand every document published from now on to ``on_record``, until cancelled."""

        async def parsed(record: TopicRecord) -> None:
            await on_record(_parsed(record))

        await self._topic.follow(parsed)

    async def stop(self) -> None:
        await self._topic.stop()


def _parsed(record: TopicRecord) -> PolicyRecord:
    return parse_record(record.value, record.partition, record.offset, record.timestamp_ms)


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
