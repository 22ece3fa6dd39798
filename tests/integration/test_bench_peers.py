"""`make bench`'s peers write what the worker's Processor decides: the same records and state, keyed and partitioned alike.

A peer that lost its per-product state, routed a record to the wrong topic or keyed it otherwise would make its
throughput figure one of different work; the numbers themselves are `make bench`'s business, not this test's.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from bench import procs
from bench.compat import DEAD_LETTER, MemoryStateStore, Processor, generate
from bench.kafka_io import Topics
from tests.integration.kafka import Record, consume, create_topics, produce
from worker.core import InvalidEvent, decode_event, load_bundled_policy

PARTITIONS = 4
TIME_FIELDS = ("decided_at", "failed_at")  # the processing time: the peers' clocks, not the reference's


def peer(name: str, bootstrap: str, topics: Topics, tmp_path: Path) -> procs.Proc:
    group = f"test-{name}-{uuid.uuid4().hex[:8]}"
    log = tmp_path / f"{name}.log"
    if name == "confluent_raw":
        return procs.confluent_raw(bootstrap, topics, group, log, max_records=50)
    if name == "quix_streams":
        return procs.quix_streams(bootstrap, topics, group, log, tmp_path / "quix-state")
    return procs.raw_aiokafka(bootstrap, topics, group, log, max_records=50)


def valid(value: bytes | None) -> bool:
    try:
        decode_event(value)
    except InvalidEvent:
        return False
    return True


def comparable(record: Record | Any) -> tuple[str, bytes | None, dict[str, Any] | None]:
    body = None if record.value is None else orjson.loads(record.value)
    for field in TIME_FIELDS:
        if body is not None:
            body.pop(field, None)
    return record.topic, record.key, body


@pytest.mark.parametrize("name", ["confluent_raw", "quix_streams", "raw_aiokafka"])
def test_a_peer_writes_the_processors_records_with_its_state_keys_and_partitions(
    kafka: str, tmp_path: Path, name: str
) -> None:
    topics = Topics.fresh(uuid.uuid4().hex[:8], name, PARTITIONS, PARTITIONS)
    create_topics(kafka, [topics.input, topics.decisions, topics.dead_letter], partitions=PARTITIONS)
    # Few products, many versions each: most decisions depend on the state the product's earlier events left.
    messages = list(generate(400, seed=11, malformed_ratio=0.05, products=30))
    first = next(message for message in messages if valid(message[1]))
    messages.append((first[0], None))  # a tombstone: the product's state is dropped and the tombstone forwarded ...
    messages.append(first)  # ... so its first event, again, is decided afresh
    produce(kafka, topics.input, messages)
    sent = sorted(consume(kafka, topics.input, len(messages)), key=lambda r: (r.partition, r.offset))
    assert len(sent) == len(messages)

    reference = Processor(load_bundled_policy(), MemoryStateStore())
    expected: list[tuple[str, bytes | None, dict[str, Any] | None]] = []
    for record in sent:
        outcome = reference.process(record.key, record.value, record.topic, record.partition, record.offset, 0.0)
        topic = topics.dead_letter if outcome.kind is DEAD_LETTER else topics.decisions
        expected.append(comparable(Record(topic, -1, -1, outcome.key, outcome.value, 0)))
    dead_letters = sum(1 for topic, _, _ in expected if topic == topics.dead_letter)
    assert dead_letters and any(body is None for _, _, body in expected)

    proc = peer(name, kafka, topics, tmp_path).start()
    try:
        decided = consume(kafka, topics.decisions, len(expected) - dead_letters, timeout=120)
        dead = consume(kafka, topics.dead_letter, dead_letters, timeout=60)
    finally:
        exit_code = proc.stop()
    assert exit_code == 0, proc.tail()

    def order(item: tuple[str, bytes | None, dict[str, Any] | None]) -> tuple[int, int, bytes]:
        topic, key, body = item
        if body is None:  # a tombstone says nothing of its source: after every record of its key
            return 1 << 30, 1 << 30, key or b""
        return body["source"]["partition"], body["source"]["offset"], b""

    outputs = decided + dead
    assert sorted(map(comparable, outputs), key=order) == sorted(expected, key=order)
    partition_of = DefaultPartitioner()
    for record in outputs:
        if record.key is not None:  # keyed as the worker's producer (Kafka's murmur2) puts it
            assert record.partition == partition_of(record.key, list(range(PARTITIONS)), None), record
