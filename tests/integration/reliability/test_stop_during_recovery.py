"""A worker stopped while it recovers its table after a rebalance commits only what it decided."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import consume, decision_ids_by_event, produce
from worker.core import decode_event
from worker.commands.sample import generate


def produce_steadily(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    """About 3,000 events a second, so there is always something in flight."""
    for start in range(0, len(messages), 300):
        began = time.monotonic()
        produce(bootstrap, topic, messages[start:start + 300])
        time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))


def test_stopping_a_worker_right_after_a_rebalance_loses_nothing(
    kafka: str, topics: dict[str, str], tmp_path: Path
) -> None:
    """The leaving worker gets SIGTERM the moment the joining one is ready, usually mid-recovery.

    Before events fetched ahead of a rebalance were dropped without being acked
    (worker/kafka/batches.py, ``forget``), this lost 41-291 records of one partition in
    about one run in five under CPU load.
    """

    def new_worker(name: str) -> WorkerProcess:
        return WorkerProcess.on(kafka, topics, tmp_path / f"{name}.log")

    messages = list(generate(40_000, seed=47, malformed_ratio=0.0))
    expected = {decode_event(value).event_id for _key, value in messages}
    first, second = new_worker("first"), new_worker("second")
    feed = threading.Thread(target=produce_steadily, args=(kafka, topics["input"], messages[10_000:]))
    try:
        produce(kafka, topics["input"], messages[:10_000])
        first.start()
        first.wait_ready()
        feed.start()  # the first worker always has fetched events buffered when the rebalance comes
        second.start()  # joins mid-stream: the first one's partitions are revoked and some handed back
        second.wait_ready()
        stopped_at = time.monotonic()
        assert first.stop() == 0, first.tail_log()
        print(f"first worker stopped {time.monotonic() - stopped_at:.1f}s after SIGTERM, right after the rebalance")
        feed.join(120)
        assert not feed.is_alive()

        decisions = consume(kafka, topics["decisions"], len(expected), timeout=120)
        ids_by_event = decision_ids_by_event(decisions)
        missing = expected - set(ids_by_event)
        assert not missing, f"{len(missing)} events without a decision; logs in {tmp_path}"
        assert all(len(ids) == 1 for ids in ids_by_event.values()), "a repeated decision must keep its decision_id"
        print(f"{len(decisions) - len(expected)} repeated decisions of {len(expected)} events")
    finally:
        first.stop()
        second.stop()
