"""Exactly-once across rebalances: a second worker joins mid-stream, then the first leaves (SIGTERM) mid-stream."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.integration.reliability.cluster import KafkaCluster
from tests.integration.reliability.feeder import CHUNK, CHUNK_INTERVAL, Feeder
from tests.integration.reliability.test_crash import wait_for_decisions, wait_until_caught_up
from tests.integration.kafka import valid_and_malformed
from tests.integration.reliability.test_exactly_once import EXACTLY_ONCE, CommittedOutputs, new_topics, new_worker
from worker.commands.sample import generate

EVENTS = 30_000
HOLD_AT = 20_000  # the feeder waits here until the first worker is told to stop, then feeds the rest
KNOWN_STOP_FAILURE = "Not in the middle of a transaction"  # aiokafka's IllegalOperation; see the exit-code check


def test_workers_joining_and_leaving_under_exactly_once_commit_one_decision_per_event(
    cluster: KafkaCluster, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    topics = new_topics(cluster)
    messages = list(generate(EVENTS, seed=61, malformed_ratio=0.01))
    valid, malformed_values = valid_and_malformed(messages)
    malformed = sum(malformed_values.values())

    first = new_worker(cluster, topics, tmp_path / "first.log")
    second = new_worker(cluster, topics, tmp_path / "second.log")
    feeder = Feeder(cluster.bootstrap, topics["input"], messages, HOLD_AT)
    began = time.monotonic()
    first.start(**EXACTLY_ONCE)
    try:
        first.wait_ready(timeout=120)
        feeder.start()
        wait_for_decisions(first, 2_000, timeout=120)
        sent_at_join = feeder.sent
        second.start(**EXACTLY_ONCE)  # joins while events keep arriving: a rebalance mid-stream
        second.wait_ready(timeout=180)
        first.wait_settled(timeout=180)  # the rebalance has settled: both consume
        wait_for_decisions(second, 1, timeout=120)  # the second got partitions and decides
        sent_at_ready = feeder.sent
        feeder.wait_sent(min(HOLD_AT, sent_at_ready + 2_000), timeout=120)  # the first has worked after the join
        sent_at_stop = feeder.sent
        assert sent_at_stop < EVENTS, "the first worker must leave mid-stream"
        feeder.release.set()  # events keep arriving while the first worker leaves: another rebalance
        stopping = time.monotonic()
        first_exit = first.stop(timeout=60)
        stop_seconds = time.monotonic() - stopping
        feeder.finish(timeout=240)
        fed = time.monotonic()
        wait_until_caught_up(second, EVENTS, timeout=240)
        caught_up_after_feed = time.monotonic() - fed
    finally:
        feeder.release.set()
        first.stop(timeout=60)
        second_exit = second.stop(timeout=60)
    total_seconds = time.monotonic() - began

    outputs = CommittedOutputs.read(cluster, topics, valid)
    committed, committed_dead, duplicates, missing, _, aborted = outputs
    record_property("eos_rebalance_committed_duplicates", duplicates)
    record_property("eos_rebalance_aborted_records", aborted)
    record_property("eos_rebalance_sigterm_to_exit_seconds", round(stop_seconds, 1))
    record_property("eos_rebalance_feed_end_to_caught_up_seconds", round(caught_up_after_feed, 1))
    print(
        f"\nexactly_once, {EVENTS:,} events fed at ~{CHUNK / CHUNK_INTERVAL:.0f}/s: second worker started at "
        f"{sent_at_join:,} fed, both ready at {sent_at_ready:,}, first stopped (SIGTERM) at {sent_at_stop:,}, "
        f"exit {first_exit} after {stop_seconds:.1f}s; {len(committed):,} committed decisions, {len(committed_dead)} committed "
        f"dead letters, {duplicates} duplicates, {len(missing)} missing; {aborted:,} records of aborted transactions "
        f"(read_uncommitted sees them); caught up {caught_up_after_feed:.1f}s after the feed ended; "
        f"{total_seconds:.0f}s in all"
    )

    outputs.assert_one_per_event(cluster, topics["input"], malformed, where=f"; logs in {tmp_path}")

    # The state changelog is in the same transactions and moves with its partition: every decision's
    # previous_decision is the product's committed decision before it, whichever worker made either.
    last: dict[str, dict] = {}
    disagreements = []
    for record in sorted(committed, key=lambda r: (r.partition, r.offset)):
        body = orjson.loads(record.value)
        before = last.get(body["product_id"])
        if body["previous_decision"] != (before["decision"] if before else None):
            disagreements.append(
                f"{body['event_id']} (input {body['source']['partition']}@{body['source']['offset']}, decided "
                f"{body['decided_at']}): previous_decision {body['previous_decision']!r}, but committed before it: "
                f"{before and before['decision']!r} (input {before and before['source']['offset']}, decided "
                f"{before and before['decided_at']})"
            )
        last[body["product_id"]] = body
    assert not disagreements, (
        f"{len(disagreements)} decisions whose previous_decision is not the product's committed decision before "
        f"them (state and decisions disagree; logs in {tmp_path}):\n" + "\n".join(disagreements[:40])
    )
    # Checked last, so that a failed stop still shows what it did to the output above.
    if first_exit != 0 and KNOWN_STOP_FAILURE in first.log_path.read_text(errors="replace"):
        # Known and still open (docs/reliability.md, "Exactly once"): the first worker's last commit on stop
        # found offsets for a transaction an earlier stop-time commit had already ended. Tolerated only as
        # exactly this failure, and only after the output above was checked; any other non-zero exit fails.
        print(f"NOTE: the first worker exited {first_exit} with the known stop-time failure ({KNOWN_STOP_FAILURE!r})")
    else:
        assert first_exit == 0, f"the first worker exited {first_exit}:\n{first.tail_log()}"
    assert second_exit == 0, f"the second worker exited {second_exit}:\n{second.tail_log()}"
