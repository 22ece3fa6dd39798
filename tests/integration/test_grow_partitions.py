"""The input topic grown under a real worker's state: the worker refuses to start, `compliance-worker state migrate`
moves each product's state to its new partition (as aiokafka's and kcat's own partitioners place it), and the worker,
restarted on its old STATE_DIR, decides every product's next events knowing its last decision, in order."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from tests.integration.conftest import WorkerProcess
from tests.integration.interop.clients import kcat_produce
from tests.integration.kafka import produce
from tests.integration.prometheus import wait_for_sample
from tests.integration.test_state_and_policy import event_id_of, has_events, read_until, upsert
from tests.integration.test_state_store import grow
from worker.commands.state import Marker
from worker.core.partitioning import partition_for, plan

PRODUCTS = 240
OLD, NEW = 4, 8


def products(version: int, *, flip: bool = False) -> list[tuple[bytes, bytes]]:
    """PRODUCTS dresses, every other one cross-border (blocked), the rest domestic; ``flip`` swaps the origins."""
    return [
        upsert(f"GP-{n:04d}", version, ("CN" if n % 2 else "ID") if not flip else ("ID" if n % 2 else "CN"))
        for n in range(PRODUCTS)
    ]


def decision_of(message: tuple[bytes, bytes]) -> str:
    return "block" if orjson.loads(message[1])["product"]["seller"]["country"] != "ID" else "allow"


def send_with(client: str) -> Callable[[str, str, Sequence[tuple[bytes, bytes]]], None]:
    """The upstream producer: aiokafka (murmur2, as Java clients) or kcat with librdkafka's defaults (crc32)."""

    def send(bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
        if client == "aiokafka":
            assert produce(bootstrap, topic, messages) == len(messages)
        else:
            kcat_produce(bootstrap, topic, [(key.decode(), value.decode()) for key, value in messages])

    return send


def migrate(worker: WorkerProcess, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`compliance-worker state migrate --json ARGS` with the worker's own settings (and ``settings``)."""
    executable = Path(sys.executable).with_name("compliance-worker")
    return subprocess.run([str(executable), "state", "migrate", "--json", *args], env=worker.env(**settings),
                          capture_output=True, text=True, timeout=300)


def changelog(worker: WorkerProcess) -> str:
    return f"{worker.app_id}-decision-state-changelog"


def topic_state(
    bootstrap: str, topic: str, timestamps: dict[bytes, int] | None = None,
) -> tuple[dict[int, int], dict[int, dict[bytes, bytes]]]:
    """(end offset per partition, each partition's live records: key -> latest value, tombstones dropping keys);
    ``timestamps`` is given each live record's timestamp."""

    async def run() -> tuple[dict[int, int], dict[int, dict[bytes, bytes]]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    isolation_level="read_committed")
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - the topic may have just grown
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            live: dict[int, dict[bytes, bytes]] = {tp.partition: {} for tp in tps}
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                    for m in messages:
                        if m.offset < ends[tp]:
                            if m.value is None:
                                live[tp.partition].pop(m.key, None)
                            else:
                                live[tp.partition][m.key] = m.value
                                if timestamps is not None:
                                    timestamps[m.key] = m.timestamp
            return {tp.partition: ends[tp] for tp in tps}, live
        finally:
            await consumer.stop()

    return asyncio.run(run())


def topics_of(bootstrap: str) -> set[str]:
    async def run() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(run())


def refuses_to_start(worker: WorkerProcess, **settings: str) -> str:
    """Start the worker, expect exit 2 with one `compliance-worker worker:` line; that line."""
    before = len(worker.log_path.read_text().splitlines())
    worker.start(**settings)
    assert worker.process is not None
    code = worker.process.wait(60)
    worker.stop()
    lines = [line for line in worker.log_path.read_text().splitlines()[before:]
             if line.startswith("compliance-worker worker:")]
    assert code == 2 and len(lines) == 1, worker.tail_log()
    return lines[0]


def decisions_in_order(worker: WorkerProcess, messages: list[tuple[bytes, bytes]]) -> dict[str, list[dict[str, Any]]]:
    """Each product's decisions of ``messages`` in the order its decisions partition holds them (each event once)."""
    ids = {event_id_of(m) for m in messages}
    records = read_until(worker.bootstrap, worker.decisions_topic, has_events(list(ids)), what="decided",
                         log=worker.tail_log)
    ordered = sorted((d for d in records if d.body is not None and d.body["event_id"] in ids),
                     key=lambda d: (d.record.partition, d.record.offset))
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for decoded in ordered:
        assert decoded.body is not None
        found[decoded.body["product_id"]].append(decoded.body)
    assert sum(len(bodies) for bodies in found.values()) == len(ids), "an event decided more than once"
    return found


@pytest.mark.parametrize(("client", "partitioner"), [("aiokafka", "murmur2"), ("kcat", "crc32")])
def test_state_follows_each_product_to_its_new_partition(
    start_worker: Callable[..., WorkerProcess], client: str, partitioner: str,
) -> None:
    send = send_with(client)
    worker = start_worker()
    first = products(1)
    send(worker.bootstrap, worker.input_topic, first)
    decisions_in_order(worker, first)
    running = migrate(worker, "--execute")
    assert running.returncode == 2 and running.stdout == "", running.stdout + running.stderr
    assert running.stderr == (
        f"compliance-worker state migrate: the consumer group {worker.app_id} has 1 active member: stop every worker "
        f"of {worker.app_id} first (they would keep writing the state being moved), then run again\n"
    )
    worker.stop()
    ends, live = topic_state(worker.bootstrap, changelog(worker))
    assert len(ends) == OLD and sum(len(records) for records in live.values()) == PRODUCTS

    grow(worker.bootstrap, worker.input_topic, NEW)
    line = refuses_to_start(worker)
    assert f"the input {worker.input_topic} has {NEW} partitions but the state changelog" in line
    assert "docs/operations.md#growing-the-input (compliance-worker state migrate)" in line

    dry = migrate(worker)
    assert dry.returncode == 0, dry.stderr
    summary = orjson.loads(dry.stdout)
    moving = {key for records in live.values() for key in records
              if partition_for(partitioner, key, NEW) != partition_for(partitioner, key, OLD)}
    assert 0 < len(moving) < PRODUCTS
    assert (summary["dry_run"], summary["partitioner"], summary["from_partitions"], summary["to_partitions"]) == (
        True, partitioner, OLD, NEW)
    assert (summary["products"], summary["moved"], summary["stayed"]) == (PRODUCTS, len(moving), PRODUCTS - len(moving))
    assert summary["explained"][partitioner] == PRODUCTS and summary["undecided_events"] == 0
    assert topic_state(worker.bootstrap, changelog(worker)) == (ends, live), "the dry run changed the changelog"
    assert f"{worker.app_id}-decision-state-migration" not in topics_of(worker.bootstrap)

    done = migrate(worker, "--execute")
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert (summary["changelog_grown"], summary["copied"], summary["tombstoned"]) == (True, len(moving), len(moving))
    after_ends, after = topic_state(worker.bootstrap, changelog(worker))
    assert len(after_ends) == NEW
    states = {key: value for records in live.values() for key, value in records.items()}
    assert {key: (p, value) for p, records in after.items() for key, value in records.items()} == {
        key: (partition_for(partitioner, key, NEW), value) for key, value in states.items()
    }, "each state, byte for byte, only on its new partition"
    assert f"{worker.app_id}-decision-state-migration" not in topics_of(worker.bootstrap)
    again = migrate(worker, "--execute")
    assert again.returncode == 0 and orjson.loads(again.stdout)["nothing_to_do"], again.stdout + again.stderr

    # Its local RocksDB databases as they were: each old partition applies the tombstones appended to it, each new
    # partition (no local database) recovers from the changelog, and nothing else is read.
    worker.start()
    worker.wait_ready()
    appended = sum(after_ends[p] - ends.get(p, 0) for p in after_ends)
    assert appended == 2 * len(moving)
    restored = wait_for_sample(worker.metrics, "compliance_state_restored_records_total", appended, role="active")
    assert restored == appended

    second, third = products(2, flip=True), products(3)
    send(worker.bootstrap, worker.input_topic, second + third)  # one producer: each product's v2 before its v3
    found = decisions_in_order(worker, second + third)
    for old, new, newer in zip(first, second, third):
        product = old[0].decode()
        bodies = found[product]
        assert [b["product_version"] for b in bodies] == [2, 3], (product, bodies)
        expected = [
            (decision_of(new), decision_of(old), decision_of(new) != decision_of(old)),
            (decision_of(newer), decision_of(new), decision_of(newer) != decision_of(new)),
        ]
        assert [(b["decision"], b["previous_decision"], b["changed"]) for b in bodies] == expected, (product, bodies)
        assert bodies[0]["source"]["partition"] == partition_for(partitioner, old[0], NEW)


def test_a_stopped_migration_is_finished_by_running_it_again(start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker()
    first = products(1)
    produce(worker.bootstrap, worker.input_topic, first)
    decisions_in_order(worker, first)
    worker.stop()
    timestamps: dict[bytes, int] = {}
    _ends, live = topic_state(worker.bootstrap, changelog(worker), timestamps)
    # Late events of three products that will move, written before the input grows: they wait on the old partition.
    late = [upsert(key.decode(), 2, "ID") for key in sorted(timestamps)
            if partition_for("murmur2", key, NEW) != partition_for("murmur2", key, OLD)][:3]
    produce(worker.bootstrap, worker.input_topic, late)
    grow(worker.bootstrap, worker.input_topic, NEW)

    # What a run stopped halfway through its copies leaves: its record, the changelog grown, half the copies written
    # (with their source's timestamp), no tombstone yet.
    offsets = {p: {key: (n, n) for n, key in enumerate(records)} for p, records in live.items()}
    moves = plan(offsets, "murmur2", OLD, NEW).moves
    written = moves[: len(moves) // 2]
    marker = Marker(worker.input_topic, OLD, NEW, "murmur2", "2026-12-04T10:00:00.000Z")
    interrupted(worker, marker, [
        (s.target, s.key, live[s.source.partition][s.key], timestamps[s.key]) for s in written if s.source
    ])

    # The changelog has as many partitions as the input now, yet half the moved products' state is not there.
    line = refuses_to_start(worker)
    assert f"a migration of the state of {worker.app_id} has not finished" in line
    assert "run compliance-worker state migrate --execute again" in line
    done = migrate(worker, "--execute")
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["resumed"] is True and summary["partitioner"] == "murmur2"
    assert summary["moved"] == len(moves) - len(written) == summary["copied"]
    assert summary["stale_copies"] == len(written) and summary["tombstoned"] == len(moves)
    assert (summary["undecided_events"], summary["undecided_events_of_moved_products"],
            summary["undecided_moved_products"]) == (3, 3, 3)
    _after_ends, after = topic_state(worker.bootstrap, changelog(worker))
    states = {key: value for records in live.values() for key, value in records.items()}
    assert {key: (p, value) for p, records in after.items() for key, value in records.items()} == {
        key: (partition_for("murmur2", key, NEW), value) for key, value in states.items()
    }
    assert f"{worker.app_id}-decision-state-migration" not in topics_of(worker.bootstrap)

    worker.start()
    worker.wait_ready()
    late_products = {key for key, _ in late}
    second = [message for message in products(2, flip=True) if message[0] not in late_products]
    produce(worker.bootstrap, worker.input_topic, second)
    found = decisions_in_order(worker, second + late)
    for old, new in zip(first, products(2, flip=True)):
        if old[0] in late_products:
            continue
        [body] = found[old[0].decode()]
        assert (body["previous_decision"], body["decision"]) == (decision_of(old), decision_of(new)), body
    # As the warning says: decided on their old partition, where their state is no longer.
    for key, _ in late:
        [body] = found[key.decode()]
        assert body["source"]["partition"] == partition_for("murmur2", key, OLD) != partition_for("murmur2", key, NEW)
        assert (body["previous_decision"], body["changed"]) == (None, True), body


def interrupted(worker: WorkerProcess, marker: Marker, copies: list[tuple[int, bytes, bytes, int]]) -> None:
    """The marker topic with ``marker``, the changelog grown to its new count, and ``copies`` (partition, key, value,
    timestamp)."""
    name = f"{worker.app_id}-decision-state-migration"

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=worker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
            await admin.create_partitions({changelog(worker): NewPartitions(marker.to_partitions)})
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=worker.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(name, marker.encode(), key=b"migration")
            await producer.client.force_metadata_update()
            for partition, key, value, timestamp in copies:
                await producer.send_and_wait(changelog(worker), value, key=key, partition=partition,
                                             timestamp_ms=timestamp)
        finally:
            await producer.stop()

    asyncio.run(run())


def test_an_input_grown_before_any_product_had_state(start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker()  # creates the changelog; nothing decided yet
    worker.stop()
    grow(worker.bootstrap, worker.input_topic, 6)
    dry = migrate(worker)
    assert dry.returncode == 0, dry.stderr
    summary = orjson.loads(dry.stdout)
    assert (summary["products"], summary["moved"], summary["partitioner_chosen_by"]) == (
        0, 0, "auto: no keys to tell partitioners apart, any will do")
    done = migrate(worker, "--execute")
    assert done.returncode == 0 and orjson.loads(done.stdout)["changelog_grown"] is True, done.stdout + done.stderr
    assert len(topic_state(worker.bootstrap, changelog(worker))[0]) == 6
    worker.start()
    worker.wait_ready()
    messages = products(1)[:12]
    produce(worker.bootstrap, worker.input_topic, messages)
    found = decisions_in_order(worker, messages)
    assert all(len(found[key.decode()]) == 1 for key, _ in messages)


def test_with_key_mismatch_repartition_the_state_follows_the_repartition_topic(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    repartition = {"KEY_MISMATCH": "repartition"}
    worker = start_worker(**repartition)
    # The upstream keys by seller: the worker sends each event on keyed by product id (its own producer: murmur2).
    first = products(1)
    produce(worker.bootstrap, worker.input_topic, [(f"seller-{n % 5}".encode(), v) for n, (_k, v) in enumerate(first)])
    decisions_in_order(worker, first)
    worker.stop()
    topic = f"{worker.app_id}-product-id-repartition"
    grow(worker.bootstrap, topic, NEW)
    line = refuses_to_start(worker, **repartition)
    assert f"the repartition topic {topic} has {NEW} partitions but the state changelog" in line

    done = migrate(worker, "--execute", **repartition)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert (summary["topic"], summary["partitioner"], summary["products"]) == (topic, "murmur2", PRODUCTS)
    assert 0 < summary["moved"] == summary["copied"] == summary["tombstoned"] < PRODUCTS

    worker.start(**repartition)
    worker.wait_ready()
    second = products(2, flip=True)
    produce(worker.bootstrap, worker.input_topic, [(f"seller-{n % 5}".encode(), v) for n, (_k, v) in enumerate(second)])
    found = decisions_in_order(worker, second)
    for old, new in zip(first, second):
        [body] = found[old[0].decode()]
        assert (body["previous_decision"], body["decision"]) == (decision_of(old), decision_of(new)), body
