"""A transactional upstream (confluent-kafka, as Connect sources, outbox relays and Kafka Streams apps write): aborted
events are never decided, committed ones are, and an open transaction neither stalls other partitions nor counts as lag."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from tests.integration.conftest import WorkerProcess
from tests.integration.interop.clients import kcat_produce, kcat_read
from tests.integration.interop.test_codecs import upserts
from tests.integration.prometheus import sample


def transactional_producer(bootstrap: str) -> Producer:
    producer = Producer({
        "bootstrap.servers": bootstrap, "transactional.id": f"upstream-{uuid.uuid4().hex[:8]}", "acks": "all",
        "transaction.timeout.ms": 60_000,
    })
    producer.init_transactions(30)
    return producer


def send_in_transaction(producer: Producer, topic: str, messages: list[tuple[str, str]], partition: int | None = None) -> None:
    producer.begin_transaction()
    for key, value in messages:
        if partition is None:
            producer.produce(topic, value=value.encode(), key=key.encode())
        else:
            producer.produce(topic, value=value.encode(), key=key.encode(), partition=partition)
    producer.flush(30)


def decided_event_ids(worker: WorkerProcess, until: int) -> set[str]:
    envelopes = kcat_read(worker.bootstrap, worker.decisions_topic, until, timeout=30)
    return {orjson.loads(envelope["payload"])["event_id"] for envelope in envelopes}


def valid_ids(messages: list[tuple[str, str]]) -> set[str]:
    return {orjson.loads(value)["event_id"] for _key, value in messages if value.startswith("{\"")}


def lags(worker: WorkerProcess, topic: str, partitions: list[int]) -> list[float] | None:
    """compliance_consumer_lag of each partition, or None while one is not reported yet."""
    try:
        return [sample(worker.metrics(), "compliance_consumer_lag", topic=topic, partition=str(p)) for p in partitions]
    except AssertionError:
        return None


def assert_caught_up(worker: WorkerProcess, topic: str, partitions: list[int], timeout: float = 30.0) -> None:
    """Every partition's lag is reported and reaches 0 (the worker commits once a second)."""
    deadline = time.monotonic() + timeout
    while (found := lags(worker, topic, partitions)) != [0] * len(partitions) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found == [0] * len(partitions), f"lag {found}:\n{worker.tail_log()}"


@pytest.mark.parametrize("isolation_level", ["read_committed", "read_uncommitted"])
def test_aborted_transactions_are_never_decided_read_committed(
    kafka: str, topics: dict[str, str], tmp_path: Path, isolation_level: str,
) -> None:
    """read_uncommitted is the broken-on-purpose case, and what Faust's own driver does under at_least_once."""
    worker = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    env = {} if isolation_level == "read_committed" else {"KAFKA_ISOLATION_LEVEL": isolation_level}
    worker.start(**env)
    try:
        worker.wait_ready()
        producer = transactional_producer(kafka)
        aborted, committed = upserts(f"aborted-{isolation_level}")[:-1], upserts(f"committed-{isolation_level}")[:-1]
        send_in_transaction(producer, topics["input"], aborted)
        producer.abort_transaction(30)
        send_in_transaction(producer, topics["input"], committed)
        producer.commit_transaction(30)
        expected = valid_ids(committed) | (valid_ids(aborted) if isolation_level == "read_uncommitted" else set())
        assert decided_event_ids(worker, len(expected)) == expected, worker.tail_log()
        # The transaction markers leave gaps in the offsets: each partition is still committed to its end.
        assert_caught_up(worker, topics["input"], [0, 1, 2, 3])
    finally:
        assert worker.stop() == 0, worker.tail_log()


def test_an_open_transaction_holds_back_only_its_partition_and_is_not_lag(kafka: str, topics: dict[str, str], tmp_path: Path) -> None:
    worker = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    worker.start()
    try:
        worker.wait_ready()
        first = upserts("before-open-txn")[:-1]
        kcat_produce(kafka, topics["input"], first, "-p", "0")
        assert decided_event_ids(worker, len(first)) == valid_ids(first), worker.tail_log()
        producer = transactional_producer(kafka)
        pending = upserts("open-txn")[:-1]
        send_in_transaction(producer, topics["input"], pending, partition=0)  # left open for now
        # Other producers go on: behind the open transaction on partition 0 events wait for it (read_committed),
        # on partition 1 they are decided.
        behind, beside = upserts("behind-open-txn")[:-1], upserts("beside-open-txn")[:-1]
        kcat_produce(kafka, topics["input"], behind, "-p", "0")
        kcat_produce(kafka, topics["input"], beside, "-p", "1")
        expected = valid_ids(first) | valid_ids(beside)
        assert decided_event_ids(worker, len(expected)) == expected, worker.tail_log()
        # What the open transaction holds back is not lag: partition 0 is caught up to its last stable offset.
        assert_caught_up(worker, topics["input"], [0, 1])
        producer.commit_transaction(30)
        everything = expected | valid_ids(pending) | valid_ids(behind)
        assert decided_event_ids(worker, len(everything)) == everything, worker.tail_log()
        assert_caught_up(worker, topics["input"], [0, 1])
    finally:
        assert worker.stop() == 0, worker.tail_log()
