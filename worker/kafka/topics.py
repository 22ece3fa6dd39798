"""Create the worker's topics when they are missing (existing topics are never altered)."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from worker.core.errors import ComplianceError
from worker.kafka.security import KafkaSecurityError, client_options, security_problem
from worker.settings import Settings


class BrokerUnavailable(ComplianceError):
    retriable = True


class EnsuredTopics(NamedTuple):
    partitions: dict[str, int]  # per topic (the changelog's too, when it exists)
    created: list[str]
    dead_letter_max_bytes: int  # the dead-letter topic's max.message.bytes, as the broker applies it


class PartitionsMismatch(ComplianceError):
    """The state changelog and the input have different partition counts: state would be looked for in the wrong place."""


async def ensure_topics(
    settings: Settings, dead_letter_max_bytes: int, timeout: float = 30.0, changelog: str | None = None,
) -> EnsuredTopics:
    """Create the input, decisions and dead-letter topics if absent (the last with ``dead_letter_max_bytes`` as its
    max.message.bytes); what they are like, and which were created. The ``changelog`` topic is not created here
    (Faust does, as the input's copy), but its partitions are counted when it exists."""
    wanted = [settings.input_topic, settings.decisions_topic, settings.dead_letter_topic]
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=int(timeout * 1000), **client_options(settings)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        await admin.close()
        problem = await security_problem(settings)
        if problem is not None:
            raise KafkaSecurityError(f"cannot connect to Kafka: {problem}") from None
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} ({exc.__class__.__name__}; waited at most {timeout:.0f}s)"
        ) from None
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            # Dead letters carry the original bytes base64-encoded: larger than the input they come from.
            dead_letter_configs = {"max.message.bytes": str(dead_letter_max_bytes)}
            new_topics = [
                NewTopic(
                    name, settings.topic_partitions, settings.topic_replication_factor,
                    topic_configs=dead_letter_configs if name == settings.dead_letter_topic else {},
                )
                for name in missing
            ]
            try:
                await admin.create_topics(new_topics)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
        partitions = await partition_counts(admin, wanted, timeout)
        repartition = settings.repartition_topic
        if repartition is not None:
            if repartition not in existing:
                # As many partitions as the input had when it was made; the input may grow later, this one never does.
                try:
                    await admin.create_topics([
                        NewTopic(repartition, partitions[settings.input_topic], settings.topic_replication_factor)
                    ])
                except TopicAlreadyExistsError:
                    pass
                missing.append(repartition)
            partitions.update(await partition_counts(admin, [repartition], timeout))
        if changelog is not None and changelog in existing:
            partitions.update(await partition_counts(admin, [changelog], timeout))
        return EnsuredTopics(partitions, missing, await max_message_bytes(admin, settings.dead_letter_topic, timeout))
    finally:
        await admin.close()


async def partition_counts(admin: AIOKafkaAdminClient, topics: list[str], timeout: float) -> dict[str, int]:
    """Partitions per topic, waiting (up to ``timeout``) for just-created topics to reach the broker asked."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        # On a cluster the admin client may ask a broker whose metadata does not have a new topic yet.
        partitions = {topic["topic"]: len(topic["partitions"]) for topic in await admin.describe_topics(topics)}
        unknown = [name for name in topics if not partitions.get(name)]
        if not unknown:
            return partitions
        if loop.time() > deadline:
            raise BrokerUnavailable(f"topic {unknown[0]} has no partitions in the broker's metadata after {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def max_message_bytes(admin: AIOKafkaAdminClient, topic: str, timeout: float = 30.0) -> int:
    """The largest record batch the broker accepts on ``topic`` (its own setting, else the broker's)."""
    wanted = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        responses = await admin.describe_configs([wanted])
        # (error code, error message, type, name, entries) per resource. On a cluster the broker asked may not
        # know a topic created a moment ago: it answers UNKNOWN_TOPIC_OR_PARTITION with no entries.
        resources = [resource for response in responses for resource in response.resources]
        values = {entry[0]: entry[1] for resource in resources if resource[0] == 0 for entry in resource[4]}
        if "max.message.bytes" in values:
            return int(values["max.message.bytes"])
        if loop.time() > deadline:
            errors = ", ".join(f"{resource[0]} {resource[1] or ''}".strip() for resource in resources) or "no answer"
            raise BrokerUnavailable(f"cannot read max.message.bytes of topic {topic} after {timeout:.0f}s: {errors}")
        await asyncio.sleep(0.2)


async def ensure_compacted_topic(
    admin: AIOKafkaAdminClient, topic: str, partitions: int, replication_factor: int,
) -> bool:
    """Create a compacted topic if it is missing (keyed state such as overrides); True when this call created it."""
    if topic in set(await admin.list_topics()):
        return False
    try:
        response = await admin.create_topics([
            NewTopic(topic, partitions, replication_factor, topic_configs={"cleanup.policy": "compact"})
        ])
    except TopicAlreadyExistsError:
        return False
    for topic_error in response.topic_errors:  # the broker answers per topic, not with an exception
        code = topic_error[1]
        if code == TopicAlreadyExistsError.errno:
            return False
        if code:
            message = topic_error[2] if len(topic_error) > 2 and topic_error[2] else for_code(code).__name__
            raise BrokerUnavailable(f"cannot create topic {topic}: {message}")
    return True
