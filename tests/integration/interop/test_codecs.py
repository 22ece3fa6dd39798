"""Input as real producers compress it: every Kafka codec from librdkafka (kcat) and the Java client, and a topic
whose compression.type makes the broker recompress; the batch is checked on the broker's disk, so the test is real."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.conftest import Broker, WorkerProcess
from tests.integration.interop.clients import CODECS, codecs_on_disk, java_console_produce, kcat_produce, kcat_read
from worker.commands.sample import generate
from worker.core import classify, decode_event, load_bundled_policy

POLICY = load_bundled_policy()
EVENTS_PER_BATCH = 60
MALFORMED = "{not json"


def upserts(tag: str, count: int = EVENTS_PER_BATCH) -> list[tuple[str, str]]:
    """Sample upserts with ids of their own (``tag``-n), as `key<TAB>value` text, plus one malformed message."""
    messages = []
    for index, (_key, value) in enumerate(generate(count, seed=zlib.crc32(tag.encode()) % 10_000, malformed_ratio=0.0)):
        event = orjson.loads(value)
        event["event_id"] = f"{tag}-{index}"
        event["product"]["id"] = f"{tag}-P{index}"
        messages.append((event["product"]["id"], orjson.dumps(event).decode()))
    messages.append((f"{tag}-bad", MALFORMED))
    return messages


def expected_decisions(messages: Sequence[tuple[str, str]]) -> dict[str, tuple[str, str | None]]:
    """event_id -> (decision, cluster), as the core decides each valid message."""
    expected = {}
    for _key, value in messages:
        if value != MALFORMED:
            decision = classify(decode_event(value.encode()), POLICY)
            expected[decision.event_id] = (decision.decision, decision.cluster)
    return expected


def assert_all_decided(worker: WorkerProcess, messages: Sequence[tuple[str, str]]) -> None:
    """Every valid message has its decision (read back with kcat) and the malformed one its dead letter."""
    expected = expected_decisions(messages)
    deadline = time.monotonic() + 60
    while True:
        envelopes = kcat_read(worker.bootstrap, worker.decisions_topic, len(expected), timeout=5)
        bodies = [orjson.loads(envelope["payload"]) for envelope in envelopes]
        got = {body["event_id"]: (body["decision"], body["cluster"]) for body in bodies}
        if len(got) >= len(expected) or time.monotonic() > deadline:
            break
    assert worker.process is not None and worker.process.poll() is None, f"the worker died:\n{worker.tail_log()}"
    assert got == expected, worker.tail_log()
    assert len(envelopes) == len(expected), "a decision was published twice"
    [dead_letter] = kcat_read(worker.bootstrap, worker.dead_letter_topic, 1)
    body = orjson.loads(dead_letter["payload"])
    assert (body["error"]["code"], body["source"]["key"]) == ("INVALID_JSON", messages[-1][0])


def kcat_with(codec: str) -> Callable[[Broker, str, list[tuple[str, str]]], None]:
    return lambda broker, topic, messages: kcat_produce(broker.bootstrap, topic, messages, "-z", codec)


def java_with(codec: str) -> Callable[[Broker, str, list[tuple[str, str]]], None]:
    return lambda broker, topic, messages: java_console_produce(broker, topic, messages, codec)


PRODUCERS = {"kcat": kcat_with, "java": java_with}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client", sorted(PRODUCERS))
def test_batches_of_every_codec_are_decided(broker: Broker, worker: WorkerProcess, client: str, codec: str) -> None:
    messages = upserts(f"{client}-{codec}")
    PRODUCERS[client](codec)(broker, worker.input_topic, messages)
    assert codecs_on_disk(broker, worker.input_topic) == {codec}
    assert_all_decided(worker, messages)


def set_topic_config(bootstrap: str, topic: str, name: str, value: str) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: value})])
        finally:
            await admin.close()

    asyncio.run(run())


@pytest.mark.parametrize("topic_codec", ["zstd", "lz4"])
def test_a_topic_whose_compression_type_makes_the_broker_recompress(
    broker: Broker, kafka: str, topics: dict[str, str], tmp_path: Path, topic_codec: str,
) -> None:
    set_topic_config(kafka, topics["input"], "compression.type", topic_codec)
    worker = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    worker.start()
    try:
        worker.wait_ready()
        messages = upserts(f"topic-{topic_codec}")
        kcat_produce(kafka, topics["input"], messages, "-z", "gzip")  # the producer's own codec is not what is kept
        assert codecs_on_disk(broker, topics["input"]) == {topic_codec}
        assert_all_decided(worker, messages)
    finally:
        assert worker.stop() == 0, worker.tail_log()
