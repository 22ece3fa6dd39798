"""The Outbox's partitioner: the partition aiokafka's producer would pick for every keyed record."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from worker.kafka.outbox import murmur2_partitioner


@pytest.mark.parametrize("count", [1, 3, 4, 12, 100], ids=lambda n: f"{n}-partitions")
def test_keyed_records_go_where_aiokafka_sends_them(count: int) -> None:
    rng = random.Random(count)
    partitions = list(range(count))
    keys = [f"product-{i}".encode() for i in range(2000)]
    keys += [rng.randbytes(rng.randrange(0, 64)) for _ in range(2000)]
    upstream = DefaultPartitioner()
    assert [murmur2_partitioner(key, partitions, partitions) for key in keys] == [
        upstream(key, partitions, partitions) for key in keys
    ]


def test_keyless_records_go_to_an_available_partition() -> None:
    picked = {murmur2_partitioner(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)}
    assert picked == {1, 3}
    assert murmur2_partitioner(None, [0, 1], []) in {0, 1}
