"""`compliance-worker policy publish`: a policy file, validated, byte for byte onto the compacted policy topic."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.stream.policy_source import PolicyTopicError, ensure_policy_topic

# Kafka's default max.message.bytes; a bigger document needs the topic (and producer) configured for it.
MAX_DOCUMENT_BYTES = 1_048_576 - 1_024


class PublishError(PolicyTopicError):
    """The broker could not be reached or did not acknowledge the document (may succeed on a retry)."""


class Published(NamedTuple):
    topic: str
    partition: int
    offset: int
    created_topic: bool
    warnings: tuple[str, ...]


async def publish_policy(
    data: bytes, version: str, *, bootstrap: list[str], topic: str, replication_factor: int = 1, timeout: float = 30.0,
    security: Mapping[str, Any] | None = None,
) -> Published:
    """Produce ``data`` unchanged, keyed by ``version`` (UTF-8), with acks=all; create the topic if it is missing.

    The caller has validated ``data`` already: this module only moves bytes.
    ``security`` is ``security.client_options(settings)``, for TLS and SASL.
    """
    security = dict(security or {})
    if len(data) > MAX_DOCUMENT_BYTES:
        raise PublishError(f"the policy document is {len(data):,} bytes; the policy topic takes at most {MAX_DOCUMENT_BYTES:,}")
    where = ",".join(bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **security)
    try:
        await asyncio.wait_for(admin.start(), timeout)
        created, warnings = await asyncio.wait_for(ensure_policy_topic(admin, topic, replication_factor), timeout)
    except PolicyTopicError as exc:
        raise PublishError(exc.message) from None
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise PublishError(f"cannot prepare topic {topic} at {where}: {_describe(exc)}") from None
    finally:
        await admin.close()

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=int(timeout * 1000),
        **security,
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
