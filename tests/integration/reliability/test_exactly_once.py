"""Exactly-once on a 3-broker cluster: a worker SIGKILLed mid-stream and restarted leaves one committed decision per event."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import Record, produce, valid_and_malformed
from tests.integration.reliability.cluster import KafkaCluster, read_to_end, uncommitted_records
from tests.integration.reliability.test_crash import wait_for_decisions, wait_until_caught_up
from tests.integration.test_state_and_policy import (
    SNACKS, new_version, publish_policy, rescreened, upsert, wait_for, write_policy,
)
from worker.kafka import stable_offsets
from worker.commands.sample import generate

# 30,000 rather than test_crash's 100,000: three brokers and transactions on 2 cores; still several
# commits (every 1 s or 10,000 events) before the kill and thousands of events after it.
EVENTS = 30_000
EXACTLY_ONCE = {"PROCESSING_GUARANTEE": "exactly_once", "TOPIC_REPLICATION_FACTOR": "3"}


def new_topics(cluster: KafkaCluster) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {"input": f"eo-{suffix}.product-upserts", "decisions": f"eo-{suffix}.decisions",
             "dead_letter": f"eo-{suffix}.dead-letter"}
    cluster.create_topics(list(names.values()), partitions=4)
    return names


def new_worker(cluster: KafkaCluster, topics: dict[str, str], log: Path) -> WorkerProcess:
    return WorkerProcess.on(cluster.bootstrap, topics, log)


def sources(records: list[Record]) -> Counter[tuple[int, int]]:
    """How often each input (partition, offset) is the source of a record."""
    return Counter(
        (body["source"]["partition"], body["source"]["offset"]) for body in (orjson.loads(r.value) for r in records)
    )


class CommittedOutputs(NamedTuple):
    """What a read_committed consumer sees of a run's output, next to what read_uncommitted sees."""

    decisions: list[Record]
    dead_letters: list[Record]
    duplicates: int  # extra committed decisions of events decided more than once
    missing: set[str]  # valid event ids without a committed decision
    per_source: Counter[tuple[int, int]]  # committed outputs per input (partition, offset)
    aborted: int  # records of aborted transactions

    @classmethod
    def read(cls, cluster: KafkaCluster, topics: dict[str, str], valid: set[str]) -> CommittedOutputs:
        committed = read_to_end(cluster.bootstrap, topics["decisions"], "read_committed")
        committed_dead = read_to_end(cluster.bootstrap, topics["dead_letter"], "read_committed")
        everything = read_to_end(cluster.bootstrap, topics["decisions"], "read_uncommitted")
        everything_dead = read_to_end(cluster.bootstrap, topics["dead_letter"], "read_uncommitted")
        per_event = Counter(orjson.loads(r.value)["event_id"] for r in committed)
        return cls(
            committed, committed_dead, sum(per_event.values()) - len(per_event), valid - set(per_event),
            sources(committed) + sources(committed_dead),
            len(everything) + len(everything_dead) - len(committed) - len(committed_dead),
        )

    def describe_duplicates(self, limit: int = 40) -> str:
        """The events decided more than once: their source and where each committed copy sits, with its time."""
        copies: dict[str, list[tuple[Record, dict]]] = {}
        for record in self.decisions:
            body = orjson.loads(record.value)
            copies.setdefault(body["event_id"], []).append((record, body))
        lines = []
        for event_id, found in copies.items():
            if len(found) > 1:
                source = found[0][1]["source"]
                placed = ", ".join(f"decisions[{r.partition}]@{r.offset} at {r.timestamp_ms}" for r, _ in found)
                line = f"  {event_id} from input[{source['partition']}]@{source['offset']}: {placed}"
                lines.append((source["partition"], source["offset"], line))
        return "\n".join(line for _, _, line in sorted(lines)[:limit])

    def assert_one_per_event(self, cluster: KafkaCluster, input_topic: str, malformed: int, where: str = "") -> None:
        """Each valid event one committed decision, each malformed one one dead letter, each input one output."""
        assert not self.missing, f"{len(self.missing)} events without a committed decision{where}"
        assert self.duplicates == 0, (
            f"{self.duplicates} events with more than one committed decision{where}\n{self.describe_duplicates()}"
        )
        assert len(self.dead_letters) == malformed and all(n == 1 for n in sources(self.dead_letters).values()), (
            f"{len(self.dead_letters)} committed dead letters for {malformed} malformed events"
        )
        assert set(self.per_source) == {(r.partition, r.offset) for r in read_to_end(cluster.bootstrap, input_topic)}
        assert max(self.per_source.values()) == 1, "an input offset with more than one committed output"


def kill_inside_open_transaction(worker: WorkerProcess, bootstrap: str, outputs: list[str], events: int = EVENTS) -> None:
    """SIGKILL the worker while one of its transactions holds output records, so that the restart must abort it.

    A kill landing between a commit and the next batch's first record leaves nothing to abort (it happened in
    one CI run). So the worker is frozen first (SIGSTOP) and killed only if, once requests already on the wire
    have landed (two equal readings), records lie past the outputs' last stable offset; else it runs on a while.
    """
    assert worker.process is not None
    for attempt in range(1, 6):
        worker.process.send_signal(signal.SIGSTOP)
        previous, open_records = -1, uncommitted_records(bootstrap, outputs)
        while open_records != previous:
            previous, open_records = open_records, uncommitted_records(bootstrap, outputs)
        if open_records:
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(10)
            return
        worker.process.send_signal(signal.SIGCONT)
        wait_for_decisions(worker, events // 3 + attempt * events // 30, timeout=60)
    pytest.fail("five freezes of the worker found no open transaction with output records", pytrace=False)


def test_sigkill_under_exactly_once_leaves_one_committed_decision_per_event(
    cluster: KafkaCluster, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    topics = new_topics(cluster)
    messages = list(generate(EVENTS, seed=47, malformed_ratio=0.01))
    valid, malformed_values = valid_and_malformed(messages)
    malformed = sum(malformed_values.values())
    produce(cluster.bootstrap, topics["input"], messages)

    first = new_worker(cluster, topics, tmp_path / "killed.log")
    first.start(**EXACTLY_ONCE)
    try:
        first.wait_ready(timeout=120)
        wait_for_decisions(first, EVENTS // 3, timeout=180)
        kill_inside_open_transaction(first, cluster.bootstrap, [topics["decisions"], topics["dead_letter"]])
    finally:
        first.stop()

    second = new_worker(cluster, topics, tmp_path / "restarted.log")
    restarted = time.monotonic()
    second.start(**EXACTLY_ONCE)
    try:
        # The group waits for the killed member's session to time out (Faust's default: 60 s) before it rebalances.
        second.wait_ready(timeout=180)
        ready_after = time.monotonic() - restarted
        wait_until_caught_up(second, EVENTS, timeout=240)
        caught_up_after = time.monotonic() - restarted
    finally:
        exit_code = second.stop(timeout=60)  # a clean stop commits and ends the open transactions
    assert exit_code == 0, second.tail_log()

    outputs = CommittedOutputs.read(cluster, topics, valid)
    committed, committed_dead, duplicates, _, _, aborted = outputs
    record_property("eos_committed_duplicates", duplicates)
    record_property("eos_aborted_records", aborted)
    record_property("eos_restart_to_ready_seconds", round(ready_after, 1))
    record_property("eos_restart_to_caught_up_seconds", round(caught_up_after, 1))
    print(
        f"\nexactly_once, SIGKILL after >={EVENTS // 3:,} of {EVENTS:,} events: {len(committed):,} committed decisions, "
        f"{len(committed_dead)} committed dead letters, {duplicates} duplicates; {aborted:,} records of aborted "
        f"transactions (read_uncommitted sees them); restarted worker ready after {ready_after:.1f}s, "
        f"caught up after {caught_up_after:.1f}s"
    )

    outputs.assert_one_per_event(cluster, topics["input"], malformed)
    assert aborted > 0, "the kill left no aborted output: the test did not exercise a transaction abort"

    # The state changelog is in the same transactions: the recovered state is exactly what the committed
    # decisions say, so every decision's previous_decision is the product's committed decision before it.
    last: dict[str, str] = {}
    for record in sorted(committed, key=lambda r: (r.partition, r.offset)):
        body = orjson.loads(record.value)
        assert body["previous_decision"] == last.get(body["product_id"]), (
            f"{body['event_id']}: previous_decision {body['previous_decision']!r} after committed "
            f"{last.get(body['product_id'])!r}: state and decisions disagree"
        )
        last[body["product_id"]] = body["decision"]


def test_rescreen_under_exactly_once_commits_one_decision_per_flip(
    cluster: KafkaCluster, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """Re-screen output has no input offsets: it is committed in the transactions of its partitions by itself."""
    topics = new_topics(cluster)
    policy_topic = f"{topics['input']}.policies"
    path, new = write_policy(tmp_path, new_version(), dresses_restricted=False)
    flipping = [upsert(f"XB-DRESS-{n}", 1, "CN") for n in range(80)]  # blocked now, allowed under the new policy
    steady = [upsert(f"LOCAL-DRESS-{n}", 1, "ID") for n in range(60)] + [
        upsert(f"XB-SNACK-{n}", 1, "CN", SNACKS) for n in range(60)
    ]
    worker = new_worker(cluster, topics, tmp_path / "worker.log")
    worker.start(POLICY_TOPIC=policy_topic, **EXACTLY_ONCE)  # creates the policy topic with RF 3
    try:
        worker.wait_ready(timeout=120)
        produce(cluster.bootstrap, topics["input"], flipping + steady)
        wait_until_caught_up(worker, len(flipping) + len(steady))
        published = time.monotonic()
        publish_policy(cluster.bootstrap, path, policy_topic)
        wait_for(
            lambda: rescreened(worker) == (len(flipping), len(steady)),
            f"re-screened: {len(flipping)} changed, {len(steady)} unchanged", worker.tail_log, timeout=120,
        )
        seconds = time.monotonic() - published
        # Read while the worker still runs: what it committed is visible now, not only after a clean stop.
        committed = [orjson.loads(r.value) for r in read_to_end(cluster.bootstrap, topics["decisions"])]
    finally:
        exit_code = worker.stop(timeout=60)
    assert exit_code == 0, worker.tail_log()

    rescreens = [body for body in committed if "rescreen" in body["source"]]
    assert Counter(body["product_id"] for body in rescreens) == Counter(f"XB-DRESS-{n}" for n in range(80))
    assert all((body["decision"], body["policy_version"]) == ("allow", new.version) for body in rescreens)
    assert len(committed) - len(rescreens) == len(flipping) + len(steady)
    record_property("eos_rescreen_publish_to_committed_seconds", round(seconds, 2))
    print(f"\nexactly_once re-screen: {len(rescreens)} POLICY_CHANGE decisions committed, {seconds:.1f}s after publishing")


def test_committed_offsets_asked_right_after_a_transaction_commits_are_its_offsets(
    cluster: KafkaCluster, record_property: pytest.RecordProperty
) -> None:
    """What the worker's seek asks (worker/kafka/stable_offsets.py) sees a commit at once; aiokafka's own request may not.

    A worker commits its transactions when partitions are revoked and seeks to the committed offsets when the
    rebalance ends: with the offsets before that commit it decided those events again (committed duplicates).
    """
    suffix = uuid.uuid4().hex[:10]
    source, output, group = f"stable-{suffix}", f"stable-{suffix}.out", f"stable-{suffix}"
    cluster.create_topics([source, output], partitions=1)
    tp = TopicPartition(source, 0)
    rounds = 40

    async def run() -> tuple[list[tuple[int, int | None]], int]:
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, transactional_id=group, acks="all")
        consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, group_id=group, enable_auto_commit=False)
        await producer.start()
        await consumer.start()
        try:
            wrong, plain_behind = [], 0
            for offset in range(1, 2 * rounds + 1):
                async with producer.transaction():
                    await producer.send_and_wait(output, b"decision", partition=0)
                    await producer.send_offsets_to_transaction({tp: offset}, group)
                if offset % 2:  # every other commit: aiokafka's request first, to show what the fix is for
                    plain_behind += await consumer.committed(tp) != offset
                else:
                    seen = (await stable_offsets.committed_offsets(consumer, [tp]))[tp]
                    if seen != offset:
                        wrong.append((offset, seen))
            return wrong, plain_behind
        finally:
            await consumer.stop()
            await producer.stop()

    wrong, plain_behind = asyncio.run(run())
    record_property("plain_offset_fetch_behind_a_commit", f"{plain_behind} of {rounds}")
    print(f"\naiokafka's OffsetFetch right after a transaction commit: {plain_behind} of {rounds} saw the offset before it")
    assert wrong == [], "committed offsets asked right after a commit (committed, seen)"
