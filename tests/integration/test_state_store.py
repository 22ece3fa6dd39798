"""The per-product state's store on a real broker: local state across restarts, standbys, revoked partitions freed."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import produce
from tests.integration.prometheus import sample
from tests.integration.test_state_and_policy import decisions_for, log_events, read_to_end, upsert, wait_for

PRODUCTS = 240


def products(version: int, *, flip: bool = False) -> list[tuple[bytes, bytes]]:
    """PRODUCTS dresses, every other one cross-border (blocked), the rest domestic; ``flip`` swaps the origins."""
    return [
        upsert(f"ST-{n:04d}", version, ("CN" if n % 2 else "ID") if not flip else ("ID" if n % 2 else "CN"))
        for n in range(PRODUCTS)
    ]


def expected_decision(message: tuple[bytes, bytes]) -> str:
    return "block" if orjson.loads(message[1])["product"]["seller"]["country"] != "ID" else "allow"


def restored(worker: WorkerProcess, role: str = "active") -> float:
    return sample(worker.metrics(), "compliance_state_restored_records_total", role=role)


def held(worker: WorkerProcess) -> dict[tuple[int, str], float]:
    """(partition, role) -> products, from compliance_state_products."""
    text = worker.metrics()
    found = {}
    for line in text.splitlines():
        if line.startswith("compliance_state_products{"):
            labels, value = line[len("compliance_state_products{"):].rsplit("} ", 1)
            parts = dict(part.split("=", 1) for part in labels.split(","))
            found[(int(parts["partition"].strip('"')), parts["role"].strip('"'))] = float(value)
    return found


def assigned(worker: WorkerProcess) -> list[int]:
    status, body = worker.get("/readyz")
    return orjson.loads(body)["assigned_partitions"]


def changelog_records(worker: WorkerProcess, partitions: set[int] | None = None) -> int:
    records = read_to_end(worker.bootstrap, f"{worker.app_id}-decision-state-changelog", json=False)
    return sum(1 for r in records if partitions is None or r.record.partition in partitions)


def assert_remembered(worker: WorkerProcess, before: list[tuple[bytes, bytes]], after: list[tuple[bytes, bytes]]) -> None:
    """Each product's next decision names the decision its previous event got: its state was kept."""
    produce(worker.bootstrap, worker.input_topic, after)
    for old, new, body in zip(before, after, decisions_for(worker, after)):
        previous, now = expected_decision(old), expected_decision(new)
        assert (body["previous_decision"], body["decision"], body["changed"]) == (previous, now, previous != now), body


@pytest.mark.parametrize(
    ("store", "reads_whole_changelog"),
    [pytest.param("rocksdb", False, id="rocksdb-reads-only-what-is-new"), pytest.param("memory", True, id="memory")],
)
def test_state_survives_restarts_with_local_state_and_with_it_wiped(
    start_worker: Callable[..., WorkerProcess], store: str, reads_whole_changelog: bool,
) -> None:
    worker = start_worker(STATE_STORE=store)
    first, second, third = products(1), products(2, flip=True), products(3)
    produce(worker.bootstrap, worker.input_topic, first)
    decisions_for(worker, first)
    records = changelog_records(worker)
    assert records == PRODUCTS

    worker.stop()
    worker.start(STATE_STORE=store)
    worker.wait_ready()
    assert restored(worker) == (records if reads_whole_changelog else 0)
    assert_remembered(worker, first, second)

    worker.stop()
    if store == "rocksdb":
        shutil.rmtree(worker.state_dir)  # a new pod, a lost disk: everything comes from the changelog
    worker.start(STATE_STORE=store)
    worker.wait_ready()
    assert restored(worker) == changelog_records(worker) == 2 * PRODUCTS
    assert_remembered(worker, second, third)


@pytest.mark.parametrize(
    "standby_replicas", [pytest.param("1", id="standby-takes-over"), pytest.param("0", id="no-standby-recovers")]
)
def test_a_partition_moves_to_the_worker_that_keeps_its_standby(
    start_worker: Callable[..., WorkerProcess], standby_replicas: str,
) -> None:
    first_worker = start_worker("a", TABLE_STANDBY_REPLICAS=standby_replicas)
    second_worker = start_worker("b", TABLE_STANDBY_REPLICAS=standby_replicas)
    wait_for(lambda: len(assigned(first_worker)) == len(assigned(second_worker)) == 2, "two partitions each")
    first, second = products(1), products(2, flip=True)
    produce(first_worker.bootstrap, first_worker.input_topic, first)
    decisions_for(first_worker, first)
    moving = set(assigned(second_worker))
    moving_records = changelog_records(first_worker, moving)
    assert moving_records > 0
    if standby_replicas == "1":
        # The first worker keeps a copy of what the second decides, read from the changelog as it is written.
        def standby_caught_up() -> bool:
            text = first_worker.metrics()
            return all(sample(text, "compliance_state_standby_lag_records", partition=str(p)) == 0 for p in moving)
        wait_for(standby_caught_up, "the standby copies up to date", first_worker.tail_log)
    before = restored(first_worker)

    second_worker.stop()
    wait_for(lambda: len(assigned(first_worker)) == 4, "all four partitions on the first worker", first_worker.tail_log)
    first_worker.wait_settled()
    taken_over = restored(first_worker) - before
    assert taken_over == (0 if standby_replicas == "1" else moving_records)
    assert_remembered(first_worker, first, second)


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
def test_revoked_partitions_state_is_freed_at_every_rebalance(
    start_worker: Callable[..., WorkerProcess], store: str,
) -> None:
    worker = start_worker(STATE_STORE=store, TABLE_STANDBY_REPLICAS="0")
    messages = products(1)
    produce(worker.bootstrap, worker.input_topic, messages)
    decisions_for(worker, messages)
    assert sorted(held(worker)) == [(p, "active") for p in range(4)]

    for round_ in range(3):
        other = start_worker(f"other-{round_}", STATE_STORE=store, TABLE_STANDBY_REPLICAS="0")
        wait_for(lambda: len(assigned(worker)) == 2 and len(assigned(other)) == 2, "two partitions each")
        mine = set(assigned(worker))
        # Only what it owns now: the other worker's partitions are gone from its store, not merely unused.
        wait_for(lambda: {p for p, _ in held(worker)} == mine, f"holding only partitions {mine}", worker.tail_log)
        assert all(role == "active" for _, role in held(worker))
        other.stop()
        wait_for(lambda: len(assigned(worker)) == 4, "all partitions back", worker.tail_log)
        worker.wait_settled()
        assert sorted(held(worker)) == [(p, "active") for p in range(4)]
    # Moved away and back three times, recovered each time: every product's next decision knows its last one.
    assert_remembered(worker, messages, products(2, flip=True))
    if store == "rocksdb":
        assert sample(worker.metrics(), "compliance_state_cache_bytes") <= 64 * 1024 * 1024


def grow(bootstrap: str, topic: str, partitions: int) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_partitions({topic: NewPartitions(partitions)})
        finally:
            await admin.close()

    asyncio.run(run())


def test_an_input_grown_under_the_state_stops_the_worker_with_one_line(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    worker.stop()
    grow(worker.bootstrap, worker.input_topic, 6)
    worker.start()
    assert worker.process is not None
    code = worker.process.wait(60)
    worker.stop()
    lines = [line for line in worker.log_path.read_text().splitlines() if line.startswith("compliance-worker worker:")]
    assert code == 2 and len(lines) == 1, worker.tail_log()
    assert f"the input {worker.input_topic} has 6 partitions but the state changelog" in lines[0]
    assert "has 4" in lines[0] and "docs/operations.md#growing-the-input" in lines[0]


def test_an_input_grown_under_a_running_worker_stops_it_before_it_decides_the_new_partitions(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    known = products(1)
    produce(worker.bootstrap, worker.input_topic, known)
    decisions_for(worker, known)
    grow(worker.bootstrap, worker.input_topic, 6)

    async def send_to_a_new_partition() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=worker.bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in products(2)[:20]:  # known products, on a partition whose state the changelog lacks
                await producer.send_and_wait(worker.input_topic, value, key=key, partition=5)
        finally:
            await producer.stop()

    asyncio.run(send_to_a_new_partition())
    assert worker.process is not None
    code = worker.process.wait(120)  # the partition check runs every 10 s; its bound, not a sleep
    worker.stop()
    lines = [line for line in worker.log_path.read_text().splitlines() if line.startswith("compliance-worker worker:")]
    assert code == 2 and len(lines) == 1, worker.tail_log()
    assert f"the input {worker.input_topic} has 6 partitions but the state changelog" in lines[0]
    assert "has 4" in lines[0] and "docs/operations.md#growing-the-input" in lines[0]
    refusals = [entry for entry in log_events(worker) if entry.get("event") == "partitions_mismatch"]
    assert len(refusals) == 1 and refusals[0]["level"] == "critical", refusals
    decided_from = {decoded.body["source"]["partition"] for decoded in read_to_end(worker.bootstrap, worker.decisions_topic)}
    assert decided_from <= {0, 1, 2, 3}, "nothing decided from a partition whose state the changelog lacks"
