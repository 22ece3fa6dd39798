"""Create the worker's topics when they are missing (existing topics are never altered)."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from worker.core.errors import ComplianceError
from worker.security import KafkaSecurityError, client_options, security_problem
from worker.settings import Settings


class BrokerUnavailable(ComplianceError):
    retriable = True


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> tuple[dict[str, int], list[str]]:
    """Create the input, decisions and dead-letter topics if absent; return each one's partition count, and those created."""
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
            new_topics = [
                NewTopic(name, settings.topic_partitions, settings.topic_replication_factor) for name in missing
            ]
            try:
                await admin.create_topics(new_topics)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
        described = await admin.describe_topics(wanted)
        return {topic["topic"]: len(topic["partitions"]) for topic in described}, missing
    finally:
        await admin.close()
