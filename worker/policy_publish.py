"""`compliance-worker policy publish`: a policy file, validated, byte for byte onto the compacted policy topic."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from worker.core.errors import ComplianceError

POLICY_TOPIC_CONFIG = {"cleanup.policy": "compact"}
# Kafka's default max.message.bytes; a bigger document needs the topic (and producer) configured for it.
MAX_DOCUMENT_BYTES = 1_048_576 - 1_024


class PublishError(ComplianceError):
    """The broker could not be reached or did not acknowledge the document (may succeed on a retry)."""

    retriable = True


class Published(NamedTuple):
    topic: str
    partition: int
    offset: int
    created_topic: bool
    warnings: tuple[str, ...]


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


async def _ensure_topic(admin: AIOKafkaAdminClient, topic: str, replication_factor: int) -> tuple[bool, tuple[str, ...]]:
    if topic in set(await admin.list_topics()):
        return False, await _topic_warnings(admin, topic)
    try:
        response = await admin.create_topics([NewTopic(topic, 1, replication_factor, topic_configs=POLICY_TOPIC_CONFIG)])
    except TopicAlreadyExistsError:
        return False, await _topic_warnings(admin, topic)
    for topic_error in response.topic_errors:
        code = topic_error[1]
        if code == TopicAlreadyExistsError.errno:
            return False, await _topic_warnings(admin, topic)  # created by someone else meanwhile
        if code:
            message = topic_error[2] if len(topic_error) > 2 and topic_error[2] else for_code(code).__name__
            raise PublishError(f"cannot create topic {topic}: {message}")
    return True, ()


async def publish_policy(
    data: bytes, version: str, *, bootstrap: list[str], topic: str, replication_factor: int = 1, timeout: float = 30.0,
) -> Published:
    """Produce ``data`` unchanged, keyed by ``version`` (UTF-8), with acks=all; create the topic if it is missing.

    The caller has validated ``data`` already: this module only moves bytes.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise PublishError(f"the policy document is {len(data):,} bytes; the policy topic takes at most {MAX_DOCUMENT_BYTES:,}")
    where = ",".join(bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        created, warnings = await asyncio.wait_for(_ensure_topic(admin, topic, replication_factor), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise PublishError(f"cannot prepare topic {topic} at {where}: {_describe(exc)}") from None
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=int(timeout * 1000),
    )
    try:
        await asyncio.wait_for(producer.start(), timeout)
        metadata = await asyncio.wait_for(producer.send_and_wait(topic, data, key=version.encode("utf-8")), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise PublishError(f"cannot publish to {topic} at {where}: {_describe(exc)}") from None
    finally:
        await producer.stop()
    return Published(metadata.topic, metadata.partition, metadata.offset, created, warnings)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
