"""Rebalances mid-stream: nothing is lost, duplicates keep their decision_id, and commits reach the end."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.conftest import WorkerProcess, free_port
from tests.integration.kafka import consume, produce
from worker.core import decode_event
from worker.sample import generate


def committed_and_end_offsets(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    async def run() -> tuple[dict[int, int], dict[int, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            if not partitions:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - first look at a new topic
                partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            ends = await consumer.end_offsets(partitions)
            return (
                {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic},
                {tp.partition: offset for tp, offset in ends.items()},
            )
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(run())


def test_workers_joining_and_leaving_lose_nothing(kafka: str, topics: dict[str, str], tmp_path: Path) -> None:
    def new_worker(name: str) -> WorkerProcess:
        return WorkerProcess(
            kafka, topics["input"], topics["decisions"], topics["dead_letter"], free_port(), tmp_path / f"{name}.log"
        )

    messages = list(generate(30_000, seed=31, malformed_ratio=0.0))
    expected = {decode_event(value).event_id for _key, value in messages}
    first, second = new_worker("first"), new_worker("second")
    try:
        produce(kafka, topics["input"], messages[:10_000])
        first.start()
        first.wait_ready()
        second.start()  # joins while the first is busy: a rebalance mid-stream
        produce(kafka, topics["input"], messages[10_000:20_000])
        second.wait_ready()
        # Leave once the rebalance has settled (both ready again), mid-stream: another rebalance.
        # A worker stopped while its table recovery after a rebalance is still running can commit past
        # records it never processed (seen under CPU load); docs/reliability.md tracks it as an open issue.
        first.wait_ready()
        assert first.stop() == 0, first.tail_log()
        produce(kafka, topics["input"], messages[20_000:])

        decisions = consume(kafka, topics["decisions"], len(expected), timeout=120)
        ids_by_event: dict[str, set[str]] = defaultdict(set)
        for record in decisions:
            body = orjson.loads(record.value)
            ids_by_event[body["event_id"]].add(body["decision_id"])
        missing = expected - set(ids_by_event)
        if missing:
            inputs = consume(kafka, topics["input"], len(messages))
            where = sorted(
                (r.partition, r.offset) for r in inputs if orjson.loads(r.value)["event_id"] in missing
            )
            ranges = defaultdict(list)
            for partition, offset in where:
                ranges[partition].append(offset)
            summary = {p: (min(o), max(o), len(o)) for p, o in ranges.items()}
            raise AssertionError(
                f"{len(missing)} events without a decision, (min, max, count) offsets by partition: {summary}; "
                f"logs in {tmp_path}"
            )
        assert all(len(ids) == 1 for ids in ids_by_event.values()), "a repeated decision must keep its decision_id"

        deadline = time.monotonic() + 60
        while True:
            committed, ends = committed_and_end_offsets(kafka, first.app_id, topics["input"])
            if committed == ends or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert committed == ends, "every partition's committed offset must reach its end (lag back to zero)"
    finally:
        first.stop()
        second.stop()
