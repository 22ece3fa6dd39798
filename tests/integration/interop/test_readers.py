"""Decisions and dead letters as downstream services read them: kcat, Kafka's Java console consumer and
confluent-kafka, read_committed, under both guarantees; under exactly_once none of them sees an aborted decision."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import Broker, WorkerProcess
from tests.integration.interop.clients import (
    Read, confluent_consume, java_console_consume, kcat_consume, kcat_produce, kcat_read, kcat_send,
)
from tests.integration.interop.test_codecs import MALFORMED, expected_decisions, upserts
from tests.integration.reliability.test_crash import wait_for_decisions, wait_until_caught_up
from tests.integration.reliability.cluster import uncommitted_records
from tests.integration.reliability.test_exactly_once import kill_inside_open_transaction

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
READERS: dict[str, Callable[[Broker, str, int], list[Read]]] = {
    "kcat": lambda broker, topic, expected: kcat_consume(broker.bootstrap, topic, "read_committed"),
    "java-console-consumer": lambda broker, topic, expected: java_console_consume(
        broker, topic, "read_committed", expected),
    "confluent-kafka": lambda broker, topic, expected: confluent_consume(broker.bootstrap, topic, "read_committed"),
}


def decided(reads: list[Read]) -> Counter[tuple[str | None, str, str, str | None]]:
    """(key, event_id, decision, cluster) of each decision read, counted: a duplicate shows as 2."""
    found: Counter[tuple[str | None, str, str, str | None]] = Counter()
    for read in reads:
        assert read.value is not None, f"a null value on the decisions topic: {read}"
        body = orjson.loads(read.value)
        found[(read.key, body["event_id"], body["decision"], body["cluster"])] += 1
    return found


def wanted(messages: list[tuple[str, str]]) -> Counter[tuple[str | None, str, str, str | None]]:
    keys = {orjson.loads(value)["event_id"]: key for key, value in messages if value != MALFORMED}
    return Counter((keys[event], event, decision, cluster)
                   for event, (decision, cluster) in expected_decisions(messages).items())


def assert_every_reader_sees(
    broker: Broker, topics: dict[str, str], messages: list[tuple[str, str]], traced: str | None = None,
) -> None:
    """Each reader, read_committed: every decision once with its key (the traced one with its trace context) and
    the malformed message's dead letter."""
    expected = wanted(messages)
    for reader, read in READERS.items():
        reads = read(broker, topics["decisions"], sum(expected.values()) + (traced is not None))
        if traced is not None:
            [headers] = [r.headers for r in reads if r.key == traced]
            assert headers == (("traceparent", TRACEPARENT),), f"{reader} did not read the decision's trace context"
            reads = [r for r in reads if r.key != traced]
        assert decided(reads) == expected, f"{reader} read other decisions than those published"
        [dead_letter] = read(broker, topics["dead_letter"], 1)
        body = orjson.loads(dead_letter.value or "null")
        assert (dead_letter.key, body["error"]["code"]) == (messages[-1][0], "INVALID_JSON"), reader


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_three_readers_read_what_the_worker_published(
    broker: Broker, kafka: str, topics: dict[str, str], tmp_path: Path, guarantee: str,
) -> None:
    worker = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    worker.start(PROCESSING_GUARANTEE=guarantee)
    try:
        worker.wait_ready()
        messages = upserts(f"readers-{guarantee}")
        kcat_send(kafka, topics["input"], "R-traced", orjson.dumps({
            "event_id": "e-traced", "product": {"id": "R-traced", "seller": {"country": "ID"}, "ship_from_country": "ID",
                                                "category": {"path": "Apparel & Accessories > Clothing > Dresses"}},
        }).decode(), {"traceparent": TRACEPARENT})
        kcat_produce(kafka, topics["input"], messages)
        expected = sum(wanted(messages).values()) + 1
        assert len(kcat_read(kafka, topics["decisions"], expected)) == expected, worker.tail_log()
        kcat_read(kafka, topics["dead_letter"], 1)
        assert_every_reader_sees(broker, topics, messages, traced="R-traced")
    finally:
        assert worker.stop() == 0, worker.tail_log()


KILLED_EVENTS = 30_000


def test_under_exactly_once_no_reader_sees_an_aborted_decision(
    broker: Broker, kafka: str, topics: dict[str, str], tmp_path: Path,
) -> None:
    messages = upserts("readers-killed", KILLED_EVENTS)
    kcat_produce(kafka, topics["input"], messages)
    first = WorkerProcess.on(kafka, topics, tmp_path / "killed.log")
    first.start(PROCESSING_GUARANTEE="exactly_once")
    try:
        first.wait_ready()
        wait_for_decisions(first, KILLED_EVENTS // 3, timeout=180)
        kill_inside_open_transaction(first, kafka, [topics["decisions"], topics["dead_letter"]], KILLED_EVENTS)
    finally:
        first.stop()
    assert uncommitted_records(kafka, [topics["decisions"]]) > 0, "the kill left no open transaction to abort"
    second = WorkerProcess.on(kafka, topics, tmp_path / "restarted.log")
    second.start(PROCESSING_GUARANTEE="exactly_once")
    try:
        second.wait_ready(timeout=180)  # the group waits out the killed member's session (60 s)
        wait_until_caught_up(second, len(messages), timeout=240)
    finally:
        assert second.stop(timeout=60) == 0, second.tail_log()
    everything = kcat_consume(kafka, topics["decisions"], "read_uncommitted")
    committed = sum(wanted(messages).values())
    assert len(everything) > committed, "read_uncommitted sees no aborted decision: the test exercised no abort"
    assert_every_reader_sees(broker, topics, messages)
