"""Broker failover: the broker leading the input and decisions partitions is SIGKILLed mid-stream; the worker carries on."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import WorkerProcess, free_port
from tests.integration.kafka import consume, produce
from tests.integration.reliability.cluster import KafkaCluster, read_to_end
from tests.integration.reliability.outputs import Outputs, check_against_input, input_offsets
from tests.integration.reliability.feeder import CHUNK, CHUNK_INTERVAL, Feeder
from tests.integration.reliability.test_crash import wait_for_decisions, wait_until_caught_up
from worker.core import decode_event
from worker.commands.sample import generate

# Fed at about 1,000 events/s, so events keep arriving before, during and after the failover.
EVENTS = 30_000
LEADER = 1  # first in every partition's replica list: the preferred, and initial, leader of them all


def test_killing_the_leader_of_input_and_decisions_loses_nothing(
    cluster: KafkaCluster, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    suffix = uuid.uuid4().hex[:10]
    topics = {"input": f"fo-{suffix}.product-upserts", "decisions": f"fo-{suffix}.decisions",
              "dead_letter": f"fo-{suffix}.dead-letter"}
    followers = [n for n in cluster.nodes if n != LEADER]
    cluster.create_topics([topics["input"], topics["dead_letter"]], partitions=4, replicas=[LEADER, *followers])
    # Broker-side timestamps on decisions: when each was appended, so the outage shows as a gap in them.
    cluster.create_topics(
        [topics["decisions"]], partitions=4, replicas=[LEADER, *followers],
        config={"message.timestamp.type": "LogAppendTime"},
    )
    for topic in (topics["input"], topics["decisions"]):
        leaders = {p: meta["leader"] for p, meta in cluster.partitions(topic).items()}
        assert set(leaders.values()) == {LEADER}, f"{topic} must be led by node {LEADER} alone: {leaders}"
        assert all(meta["isr"] and len(meta["isr"]) == 3 for meta in cluster.partitions(topic).values())

    messages = list(generate(EVENTS, seed=59, malformed_ratio=0.01))

    worker = WorkerProcess(
        cluster.bootstrap, topics["input"], topics["decisions"], topics["dead_letter"], free_port(),
        tmp_path / "worker.log",
    )
    worker.start(TOPIC_REPLICATION_FACTOR="3")
    feeder = Feeder(cluster.bootstrap, topics["input"], messages)
    restarted_in: float | None = None
    try:
        worker.wait_ready(timeout=120)
        feeder.start()
        wait_for_decisions(worker, 5_000, timeout=120)
        coordinator = cluster.coordinator_of(worker.app_id)
        killed_at = time.time()
        cluster.kill(LEADER)
        feeder.finish(timeout=240)
        wait_until_caught_up(worker, EVENTS, timeout=240)
        assert worker.process is not None and worker.process.poll() is None, "the worker must carry on"
        new_leaders = {p: m["leader"] for p, m in cluster.partitions(topics["decisions"]).items()}
        decisions = read_to_end(cluster.live_bootstrap, topics["decisions"])
        dead_letters = read_to_end(cluster.live_bootstrap, topics["dead_letter"])
        inputs = input_offsets(read_to_end(cluster.live_bootstrap, topics["input"]))
    finally:
        exit_code = worker.stop(timeout=60)
        if not cluster.nodes[LEADER].running:
            restarted_in = cluster.restart(LEADER)  # the cluster is shared by the module: leave it whole
            cluster.wait_in_sync(list(topics.values()))
    assert exit_code == 0, worker.tail_log()

    # Every event fed is in the input (acks=all), some maybe twice (a produce retried across the failover).
    assert not Counter(messages) - Counter((r.key, r.value) for r in inputs.values()), "events lost on the way in"
    outputs = Outputs.read(decisions, dead_letters)
    problems = check_against_input(inputs, outputs)
    assert not problems, f"{len(problems)} problems after the failover, first: {problems[:10]}\n{worker.tail_log()}"
    assert LEADER not in new_leaders.values(), f"leadership must have moved off node {LEADER}: {new_leaders}"

    # Decisions appended after the kill: the first one says when they flowed again; the longest pause
    # between consecutive appends around the kill is the outage as consumers of decisions saw it.
    kill_ms = killed_at * 1000
    stamps = sorted(r.timestamp_ms for r in decisions)
    after = [t for t in stamps if t >= kill_ms]
    assert after, "no decision appended after the kill"
    flowing_again = (after[0] - kill_ms) / 1000
    around = [t for t in stamps if t >= kill_ms - 5_000]
    longest_gap = max((b - a for a, b in zip(around, around[1:])), default=0) / 1000
    repeats = outputs.repeats
    record_property("failover_kill_to_decisions_again_seconds", round(flowing_again, 2))
    record_property("failover_longest_decision_gap_seconds", round(longest_gap, 2))
    record_property("failover_decisions_repeated", repeats)
    print(
        f"\nfailover: node {LEADER} (leader of all input and decisions partitions; group coordinator: node "
        f"{coordinator}) SIGKILLed after >=5,000 of {EVENTS:,} events fed at ~{CHUNK / CHUNK_INTERVAL:.0f}/s: "
        f"first decision appended {flowing_again:.1f}s after the kill, longest gap between decisions "
        f"{longest_gap:.1f}s; new leaders {sorted(set(new_leaders.values()))}; {repeats} decisions repeated "
        f"(the same decision); nothing missing; killed node back in {restarted_in or 0:.1f}s"
    )


def test_a_worker_creates_its_replicated_topics_on_the_cluster(cluster: KafkaCluster, tmp_path: Path) -> None:
    """Topics the worker creates itself get TOPIC_REPLICATION_FACTOR replicas, and it starts although a
    just-created topic reaches the other brokers' metadata a moment later than the one asked."""
    suffix = uuid.uuid4().hex[:8]
    worker = WorkerProcess(
        cluster.bootstrap, f"own-{suffix}.input", f"own-{suffix}.decisions", f"own-{suffix}.dead-letter", free_port(),
        tmp_path / "worker.log",
    )
    try:
        worker.start(TOPIC_REPLICATION_FACTOR="3", TOPIC_PARTITIONS="3")
        worker.wait_ready(timeout=120)
        for topic in (worker.input_topic, worker.decisions_topic, worker.dead_letter_topic):
            partitions = cluster.partitions(topic)
            assert len(partitions) == 3, topic
            assert all(len(meta["replicas"]) == 3 for meta in partitions.values()), topic
        messages = list(generate(300, seed=5, malformed_ratio=0.0))
        produce(cluster.bootstrap, worker.input_topic, messages)
        decided = {orjson.loads(r.value)["event_id"] for r in consume(cluster.bootstrap, worker.decisions_topic, 300)}
        assert decided == {decode_event(value).event_id for _key, value in messages}, worker.tail_log()
    finally:
        assert worker.stop() == 0, worker.tail_log()
