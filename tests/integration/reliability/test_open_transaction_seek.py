"""A producer's open transaction holding the group's committed offsets (a zombie): the seek waits for it, bounded.

A transactional producer (confluent-kafka) commits offsets for the worker's group inside a transaction it never
ends, as a zombie does: until its transaction.timeout.ms aborts it, the group coordinator answers every
require_stable offset fetch of those partitions with UNSTABLE_OFFSET_COMMIT.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import consume, create_topics, produce, valid_and_malformed
from tests.integration.prometheus import sample
from worker.commands.sample import generate
from worker.kafka.stable_offsets import DEADLINE_SECONDS

EVENTS = 200
PARTITIONS = 4  # as the topics fixture's


def open_transaction_with_offsets(bootstrap: str, group: str, topic: str, timeout_ms: int) -> Producer:
    """A producer whose open transaction commits offset 0 of every partition for ``group``; never ended here."""
    producer = Producer({
        "bootstrap.servers": bootstrap, "transactional.id": f"zombie-{uuid.uuid4().hex[:8]}",
        "transaction.timeout.ms": timeout_ms,
    })
    producer.init_transactions(30)
    producer.begin_transaction()
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = [TopicPartition(topic, partition, 0) for partition in range(PARTITIONS)]
        producer.send_offsets_to_transaction(offsets, member.consumer_group_metadata(), 30)
    finally:
        member.close()
    return producer


def log_events(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            found.append(entry)
    return found


def poll(check: Callable[[], Any], what: str, worker: WorkerProcess, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.25)
    pytest.fail(f"not {what} within {timeout}s; log:\n{worker.tail_log()}", pytrace=False)


def readyz(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, body = worker.get("/readyz")
    return status, orjson.loads(body)


def events(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    messages = [(key, value) for key, value in generate(EVENTS, seed=7, malformed_ratio=0.0)]
    produce(bootstrap, topic, messages)
    return messages


def assert_all_decided(worker: WorkerProcess, messages: list[tuple[bytes, bytes]]) -> None:
    valid, _malformed = valid_and_malformed(messages)
    decided = {orjson.loads(r.value)["event_id"] for r in consume(worker.bootstrap, worker.decisions_topic, len(valid))}
    assert decided == valid, worker.tail_log()


def other_topics(bootstrap: str) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {kind: f"it-{suffix}.{kind}" for kind in ("input", "decisions", "dead_letter")}
    create_topics(bootstrap, list(names.values()), partitions=PARTITIONS)
    return names


def test_the_seek_waits_out_an_open_transaction_logs_what_it_waits_for_and_counts_it(
    kafka: str, topics: dict[str, str], start_worker: Callable[..., WorkerProcess],
) -> None:
    messages = events(kafka, topics["input"])
    group = f"cw-{topics['input']}"
    zombie = open_transaction_with_offsets(kafka, group, topics["input"], timeout_ms=15_000)
    worker = start_worker(ready=False)
    (waiting, *_) = poll(lambda: log_events(worker, "offsets_wait"), "waiting for the committed offsets", worker, 60)
    assert (waiting["group"], waiting["error"]) == (group, "UNSTABLE_OFFSET_COMMIT"), waiting
    assert f" {topics['input']}[0,1,2,3]" in f" {waiting['partitions']}", waiting  # with the changelog's, Faust's own
    status, body = readyz(worker)
    assert status == 503 and body["reasons"] == ["initial_recovery_pending"], body
    worker.wait_ready(timeout=60)  # the broker aborts the zombie's transaction after its 15 s
    (ended,) = log_events(worker, "offsets_waited")
    assert ended["outcome"] == "answered" and ended["seconds"] > 1, ended
    print(f"the seek waited {ended['seconds']:.1f}s for the zombie's transaction (timeout 15 s) to be aborted")
    metrics = worker.metrics()
    assert sample(metrics, "compliance_committed_offsets_waits_total", outcome="answered") == 1
    assert sample(metrics, "compliance_committed_offsets_wait_seconds_total") == pytest.approx(ended["seconds"], abs=0.01)
    assert_all_decided(worker, messages)
    del zombie


def test_at_the_bound_exactly_once_fails_the_seek_and_at_least_once_goes_on_from_the_plain_offsets(
    kafka: str, topics: dict[str, str], tmp_path: Path,
) -> None:
    """Both at once (the bound is 80 s): the zombie's transaction outlives it."""
    workers: dict[str, WorkerProcess] = {}
    sent: dict[str, list[tuple[bytes, bytes]]] = {}
    zombies = []
    for guarantee, names in (("exactly_once", topics), ("at_least_once", other_topics(kafka))):
        worker = WorkerProcess.on(kafka, names, tmp_path / f"{guarantee}.log")
        sent[guarantee] = events(kafka, names["input"])
        zombies.append(open_transaction_with_offsets(kafka, worker.app_id, names["input"], timeout_ms=600_000))
        worker.start(PROCESSING_GUARANTEE=guarantee, POLICY_TOPIC=f"{names['input']}.policies")
        workers[guarantee] = worker
    try:
        began = time.monotonic()
        for worker in workers.values():
            poll(lambda w=worker: log_events(w, "offsets_wait"), "waiting for the committed offsets", worker, 60)
        at_least_once, exactly_once = workers["at_least_once"], workers["exactly_once"]
        at_least_once.wait_ready(timeout=DEADLINE_SECONDS + 60)
        assert time.monotonic() - began > DEADLINE_SECONDS - 10
        (ended,) = log_events(at_least_once, "offsets_waited")
        assert ended["outcome"] == "fell_back", ended
        assert sample(at_least_once.metrics(), "compliance_committed_offsets_waits_total", outcome="fell_back") == 1
        assert_all_decided(at_least_once, sent["at_least_once"])

        # exactly_once: the seek fails, Faust's table recovery crashes, the worker leaves the group and exits non-zero
        # (Kubernetes restarts it; its partitions go to the other workers meanwhile).
        assert exactly_once.process is not None
        poll(lambda: exactly_once.process.poll() is not None, "the exactly_once worker exiting", exactly_once, 60)
        assert exactly_once.process.returncode != 0
        (ended,) = log_events(exactly_once, "offsets_waited")
        assert ended["outcome"] == "timed_out" and ended["seconds"] == pytest.approx(DEADLINE_SECONDS, abs=1), ended
        log = exactly_once.log_path.read_text()
        assert "StableOffsetsTimeout" in log and "LeaveGroup request succeeded" in log
        assert not list(consume(kafka, exactly_once.decisions_topic, 1, timeout=5)), "nothing decided from stale offsets"
    finally:
        for worker in workers.values():
            worker.stop()
        del zombies
