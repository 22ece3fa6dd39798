"""Rebalances mid-stream: nothing is lost, duplicates keep their decision_id, and commits reach the end."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import consume, create_topics, decision_ids_by_event, produce
from worker.core import decode_event
from worker.commands.sample import generate


def where_missing(kafka: str, input_topic: str, count: int, missing: set[str]) -> dict[int, tuple[int, int, int]]:
    """Where the events without a decision sit in the input: (min, max, count) offsets by partition."""
    ranges: dict[int, list[int]] = defaultdict(list)
    for r in consume(kafka, input_topic, count):
        if orjson.loads(r.value)["event_id"] in missing:
            ranges[r.partition].append(r.offset)
    return {p: (min(o), max(o), len(o)) for p, o in sorted(ranges.items())}


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
        return WorkerProcess.on(kafka, topics, tmp_path / f"{name}.log")

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
        # Leave once the rebalance has settled (no rebalance or recovery under way), mid-stream: another rebalance.
        # A worker stopped while its table recovery after a rebalance is still running can commit past
        # records it never processed (seen under CPU load); docs/reliability.md tracks it as an open issue.
        first.wait_settled()
        assert first.stop() == 0, first.tail_log()
        produce(kafka, topics["input"], messages[20_000:])

        decisions = consume(kafka, topics["decisions"], len(expected), timeout=120)
        ids_by_event = decision_ids_by_event(decisions)
        missing = expected - set(ids_by_event)
        assert not missing, (
            f"{len(missing)} events without a decision, (min, max, count) offsets by partition: "
            f"{where_missing(kafka, topics['input'], len(messages), missing)}; logs in {tmp_path}"
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


def wait_settled(workers: list[WorkerProcess], partitions: int, timeout: float = 150.0) -> dict[str, list[int]]:
    """Until every worker is ready and settled and together they own each input partition exactly once: their assignments."""
    deadline = time.monotonic() + timeout
    seen: dict[str, object] = {}
    while time.monotonic() < deadline:
        assigned: dict[str, list[int]] = {}
        for worker in workers:
            assert worker.process is not None and worker.process.poll() is None, worker.tail_log()
            try:
                status, body = worker.get("/readyz")
            except OSError as error:
                seen[worker.log_path.stem] = repr(error)
                break
            seen[worker.log_path.stem] = body
            answer = orjson.loads(body) if status == 200 else None
            if answer is None or answer["rebalancing"] or answer["recovering"]:
                break
            assigned[worker.log_path.stem] = answer["assigned_partitions"]
        else:
            owned = sorted(p for parts in assigned.values() for p in parts)
            if owned == list(range(partitions)):
                return assigned
        time.sleep(0.25)
    raise AssertionError(f"the group did not settle within {timeout}s: {seen}")


class SteadyFeed(threading.Thread):
    """Produces ``messages`` in chunks of 200 about every 0.1 s (~2,000 events/s), so there is always work in flight."""

    def __init__(self, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
        super().__init__(name="steady-feed", daemon=True)
        self.bootstrap, self.topic, self.messages = bootstrap, topic, messages
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, len(self.messages), 200):
                began = time.monotonic()
                self.sent += produce(self.bootstrap, self.topic, self.messages[start:start + 200])
                time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            self.error = error


def test_three_workers_one_leaving_one_joining_lose_nothing_and_no_partition_stalls(
    kafka: str, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    partitions = 6
    suffix = uuid.uuid4().hex[:10]
    names = {"input": f"rb3-{suffix}.in", "decisions": f"rb3-{suffix}.decisions", "dead_letter": f"rb3-{suffix}.dl"}
    create_topics(kafka, list(names.values()), partitions=partitions)

    def new_worker(name: str) -> WorkerProcess:
        return WorkerProcess.on(kafka, names, tmp_path / f"{name}.log")

    messages = list(generate(60_000, seed=61, malformed_ratio=0.0))
    expected = {decode_event(value).event_id for _key, value in messages}
    a, b, c, d = (new_worker(name) for name in ("a", "b", "c", "d"))
    feed = SteadyFeed(kafka, names["input"], messages[15_000:])
    try:
        produce(kafka, names["input"], messages[:15_000])
        started = time.monotonic()
        for worker in (a, b, c):
            worker.start()
        first = wait_settled([a, b, c], partitions)
        settled_three = time.monotonic() - started
        feed.start()
        deadline = time.monotonic() + 60
        while feed.sent < 5_000 and feed.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert feed.is_alive(), "the feed must still be running when the group changes"
        # Stopped once the group has settled, mid-stream. Stopping a worker during its table recovery right after a
        # rebalance is test_stop_during_recovery.py's case.
        stopping = time.monotonic()
        assert b.stop() == 0, b.tail_log()
        stop_took = time.monotonic() - stopping
        d.start()  # joins while the others take over b's partitions
        fed_at_join = 15_000 + feed.sent
        second = wait_settled([a, c, d], partitions)
        resettled = time.monotonic() - stopping
        fed_at_settle = 15_000 + feed.sent
        feed.join(120)
        assert not feed.is_alive() and feed.error is None, feed.error
        fed_at = time.monotonic()

        decisions = consume(kafka, names["decisions"], len(expected), timeout=180)
        ids_by_event = decision_ids_by_event(decisions)
        missing = expected - set(ids_by_event)
        assert not missing, (
            f"{len(missing)} events without a decision, (min, max, count) offsets by partition: "
            f"{where_missing(kafka, names['input'], len(messages), missing)}; logs in {tmp_path}"
        )
        assert all(len(ids) == 1 for ids in ids_by_event.values()), "a repeated decision must keep its decision_id"

        # No partition stalls: each one's committed offset reaches its end.
        deadline = time.monotonic() + 90
        while True:
            committed, ends = committed_and_end_offsets(kafka, a.app_id, names["input"])
            if committed == ends or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        lag = {p: ends[p] - committed.get(p, 0) for p in ends}
        assert committed == ends, f"lag by partition {lag} 90 s after the feed ended; logs in {tmp_path}"
        caught_up = time.monotonic() - fed_at
        repeats = len(decisions) - len(ids_by_event)
    finally:
        feed.join(5)
        for worker in (a, b, c, d):
            worker.stop()
    record_property("rebalance3_settled_seconds", round(settled_three, 1))
    record_property("rebalance3_resettled_seconds", round(resettled, 1))
    record_property("rebalance3_repeated_decisions", repeats)
    print(
        f"\nthree workers on {partitions} partitions settled {settled_three:.1f}s after start {first}; b stopped in "
        f"{stop_took:.1f}s (exit 0) mid-stream and d joined ({fed_at_join} of {len(messages)} events fed): settled again "
        f"{resettled:.1f}s after the stop {second} ({fed_at_settle} fed); "
        f"{len(expected)} events, all decided, {repeats} repeated (same decision_id); every partition's lag 0 "
        f"{caught_up:.1f}s after the feed ended"
    )
