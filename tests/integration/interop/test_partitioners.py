"""Where real clients put keyed records, as worker/core/partitioning.py predicts it (`state migrate` relies on it):
kcat (librdkafka) with each of its hashing partitioners, confluent-kafka, aiokafka and Kafka's Java console producer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import Broker
from tests.integration.interop.clients import java_console_produce, kcat_envelopes, kcat_produce
from tests.integration.kafka import create_topics
from worker.core.partitioning import partition_for

PARTITIONS = 7  # not a power of two: the modulo of every hash bit counts

# Product ids as upstreams write them, of every length a 4-byte block hash can end on, with multi-byte UTF-8 among
# them; no tab or newline (the line-based producers split on them).
KEYS = [
    *(f"PRD-{n:07d}" for n in range(120)),
    *("x" * length for length in range(1, 17)),
    *(f"sku/{n}-é-{'ü' * (n % 5)}" for n in range(40)),
    *(f"товар-{n}" for n in range(24)),
    "零售-42", "a", "ab", "abc", "abcd",
]


Produce = Callable[[Broker, str, Sequence[tuple[str, str]]], None]


def aiokafka_produce(broker: Broker, topic: str, messages: Sequence[tuple[str, str]]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topic, v.encode(), key=k.encode()) for k, v in messages])
        finally:
            await producer.stop()

    asyncio.run(run())


def confluent_produce(broker: Broker, topic: str, messages: Sequence[tuple[str, str]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})  # librdkafka's default partitioner
    failed: list[str] = []
    for key, value in messages:
        producer.produce(topic, value.encode(), key.encode(), on_delivery=lambda err, _msg: failed.append(str(err)) if err else None)
    assert producer.flush(60) == 0 and failed == []


def kcat(*extra: str) -> Produce:
    return lambda broker, topic, messages: kcat_produce(broker.bootstrap, topic, messages, *extra)


@pytest.mark.parametrize(
    ("produce", "partitioner"),
    [
        pytest.param(kcat(), "crc32", id="kcat-default-consistent_random"),
        pytest.param(kcat("-X", "partitioner=consistent"), "crc32", id="kcat-consistent"),
        pytest.param(kcat("-X", "partitioner=murmur2"), "murmur2", id="kcat-murmur2"),
        pytest.param(kcat("-X", "partitioner=murmur2_random"), "murmur2", id="kcat-murmur2_random"),
        pytest.param(kcat("-X", "partitioner=fnv1a"), "fnv1a", id="kcat-fnv1a"),
        pytest.param(kcat("-X", "partitioner=fnv1a_random"), "fnv1a", id="kcat-fnv1a_random"),
        pytest.param(confluent_produce, "crc32", id="confluent-kafka-default"),
        pytest.param(aiokafka_produce, "murmur2", id="aiokafka-default"),
        pytest.param(java_console_produce, "murmur2", id="java-console-producer"),
    ],
)
def test_each_client_puts_each_key_where_its_partitioner_says(broker: Broker, produce: Produce, partitioner: str) -> None:
    topic = f"it-{uuid.uuid4().hex[:10]}.partitioners"
    create_topics(broker.bootstrap, [topic], partitions=PARTITIONS)
    produce(broker, topic, [(key, f"v-{n}") for n, key in enumerate(KEYS)])
    placed = {envelope["key"]: envelope["partition"] for envelope in kcat_envelopes(broker.bootstrap, topic)}
    assert sorted(placed) == sorted(KEYS)
    wrong = {key: (partition, partition_for(partitioner, key.encode(), PARTITIONS))
             for key, partition in placed.items() if partition != partition_for(partitioner, key.encode(), PARTITIONS)}
    assert wrong == {}, f"{len(wrong)} of {len(KEYS)} keys not where {partitioner} puts them: (actual, predicted) {wrong}"
    assert len(set(placed.values())) == PARTITIONS  # every partition used: the keys do tell partitioners apart
