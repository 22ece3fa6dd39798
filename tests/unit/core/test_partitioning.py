"""Key partitioners, which of them placed a changelog's keys, and each key's step when it grows (real clients:
tests/integration/interop/test_partitioners.py)."""

from __future__ import annotations

import ctypes
import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from worker.core.partitioning import PARTITIONERS, Copy, Live, detect, fnv1a, murmur2, partition_for, plan, step


@pytest.mark.parametrize(
    ("key", "signed"),
    [  # Kafka's own UtilsTest.testMurmur2 (Java ints)
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_is_kafkas(key: bytes, signed: int) -> None:
    assert ctypes.c_int32(murmur2(key)).value == signed


def test_murmur2_agrees_with_aiokafka_on_every_length_and_byte() -> None:
    rng = random.Random(15)
    for length in range(0, 70):
        for _ in range(40):
            key = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(key) == aiokafka_murmur2(key) & 0xFFFFFFFF, key


@pytest.mark.parametrize(
    ("key", "expected"),
    [  # librdkafka's unittest_fnv1a (from Go's hash/fnv, with Sarama's absolute value)
        (b"kafka", 0xD33C4E1),
        (b"giberish123456789", 0x77A58295),
        (b"1234", 0x23BDD03),
        (b"234", 0x2DEA3CD2),
        (b"34", 0x740FA83E),
        (b"4", 0x310CA263),
        (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x65CBD69C),
        (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x6E49C79A),
        (b"", 0x7EE3623B),
    ],
)
def test_fnv1a_is_librdkafkas(key: bytes, expected: int) -> None:
    assert fnv1a(key) == expected


def test_fnv1a_takes_the_absolute_value_of_a_negative_hash() -> None:
    raw = 0x811C9DC5
    for byte in b"PRD-00000042":
        raw = ((raw ^ byte) * 0x01000193) & 0xFFFFFFFF
    assert raw & 0x80000000  # negative as an int32: the case the absolute value changes
    assert fnv1a(b"PRD-00000042") == (1 << 32) - raw


@pytest.mark.parametrize(
    ("partitioner", "key", "partitions", "partition"),
    [
        ("murmur2", b"foobar", 4, (-790332482 & 0x7FFFFFFF) % 4),
        ("murmur2", b"21", 7, (-973932308 & 0x7FFFFFFF) % 7),
        ("crc32", b"123456789", 7, 0xCBF43926 % 7),  # CRC-32's check value: unsigned, not negative
        ("crc32", b"", 5, 0),
        ("fnv1a", b"kafka", 6, 0xD33C4E1 % 6),
        ("fnv1a", b"PreAmbleWillBeRemoved,ThePrePartThatIs", 12, 0x65CBD69C % 12),
    ],
)
def test_partition_for(partitioner: str, key: bytes, partitions: int, partition: int) -> None:
    assert partition_for(partitioner, key, partitions) == partition


KEYS = [f"PRD-{n:06d}".encode() for n in range(400)]


def placed(partitioner: str, partitions: int, keys: list[bytes] = KEYS, *, moved_to: int | None = None) -> Live:
    """A changelog as ``partitioner`` would have filled it (every key once); ``moved_to``: every other key already on
    its partition of that many, as an interrupted migration leaves it."""
    live: dict[int, dict[bytes, tuple[int, int]]] = {p: {} for p in range(max(partitions, moved_to or 0))}
    for offset, key in enumerate(keys):
        count = moved_to if moved_to and offset % 2 else partitions
        live[partition_for(partitioner, key, count)][key] = (offset, 1000 + offset)
    return live


@pytest.mark.parametrize("partitioner", list(PARTITIONERS))
def test_the_partitioner_that_placed_every_key_is_found(partitioner: str) -> None:
    detection = detect(placed(partitioner, 4), 4, 8)
    assert (detection.chosen, detection.agreeing, detection.keys) == (partitioner, [partitioner], len(KEYS))
    assert detection.explained[partitioner] == len(KEYS)
    assert all(count < len(KEYS) * 0.4 for name, count in detection.explained.items() if name != partitioner)


def test_keys_no_partitioner_explains_refuse_with_what_each_explains() -> None:
    mixed = placed("murmur2", 4, KEYS[:200])
    for partition, records in placed("crc32", 4, KEYS[200:]).items():
        mixed[partition].update(records)
    detection = detect(mixed, 4, 8)
    assert detection.chosen is None and detection.agreeing == []
    assert f"murmur2 {detection.explained['murmur2']:,}" in detection.reason
    assert 200 <= detection.explained["murmur2"] < 400 and 200 <= detection.explained["crc32"] < 400


def test_one_partition_cannot_tell_partitioners_apart() -> None:
    detection = detect(placed("crc32", 1), 1, 4)
    assert detection.agreeing == list(PARTITIONERS) and detection.chosen is None
    assert "--partitioner" in detection.reason


def test_several_that_agree_on_every_key_everywhere_are_one() -> None:
    # Keys for which murmur2 and crc32 give the same partition of 2 and of 4: nothing to tell them apart by.
    same = [k for k in KEYS if all(partition_for("murmur2", k, n) == partition_for("crc32", k, n) for n in (2, 4))]
    assert same
    detection = detect(placed("murmur2", 2, same), 2, 4, ("murmur2", "crc32"))
    assert detection.agreeing == ["murmur2", "crc32"] and detection.chosen == "murmur2"


def test_an_empty_changelog_takes_any_partitioner() -> None:
    detection = detect({p: {} for p in range(4)}, 4, 8)
    assert (detection.keys, detection.chosen) == (0, "murmur2")


def test_a_resumed_migration_finds_keys_on_their_old_or_their_new_partition() -> None:
    halfway = placed("fnv1a", 4, moved_to=8)
    assert detect(halfway, 4, 8).chosen is None
    assert detect(halfway, 4, 8, resuming=True).chosen == "fnv1a"


def c(partition: int, offset: int = 0, timestamp_ms: int = 100) -> Copy:
    return Copy(partition, offset, timestamp_ms)


@pytest.mark.parametrize(
    ("found", "target", "old_home", "source", "stale"),
    [
        pytest.param([c(2)], 2, 2, None, (), id="stays"),
        pytest.param([c(1, 7)], 5, 1, c(1, 7), (1,), id="moves"),
        pytest.param([c(1, 7), c(5, 3)], 5, 1, None, (1,), id="copied-before-interruption-only-the-old-copy-goes"),
        pytest.param([c(1, 7, 200), c(5, 3, 100)], 5, 1, c(1, 7, 200), (1,), id="a-newer-copy-elsewhere-wins"),
        pytest.param([c(5, 3, 300), c(1, 7, 200)], 5, 1, None, (1,), id="the-newer-copy-on-the-target-stays"),
        pytest.param([c(1, 7, 100), c(3, 9, 200)], 6, 1, c(3, 9, 200), (1, 3), id="newest-of-two-elsewhere"),
        pytest.param([c(3, 9), c(1, 7)], 6, 1, c(1, 7), (1, 3), id="a-tie-elsewhere-goes-to-the-old-home"),
        pytest.param([c(3, 9), c(4, 7)], 6, 1, c(3, 9), (3, 4), id="then-to-the-lowest-partition"),
    ],
)
def test_step(found: list[Copy], target: int, old_home: int, source: Copy | None, stale: tuple[int, ...]) -> None:
    assert step(b"k", found, target, old_home) == (b"k", source, target, stale)


def test_plan_moves_each_key_to_its_new_partition_and_counts() -> None:
    result = plan(placed("murmur2", 4), "murmur2", 4, 8)
    moved = [k for k in KEYS if partition_for("murmur2", k, 8) != partition_for("murmur2", k, 4)]
    assert sorted(s.key for s in result.moves) == sorted(moved) and 0 < len(moved) < len(KEYS)
    assert result.stayed == len(KEYS) - len(moved) and result.cleanups == []
    assert result.keys == len(KEYS) and result.tombstones == len(moved)
    # 4 -> 8 with a hash modulo: a key stays on p or goes to p + 4.
    assert all(s.target == s.source.partition + 4 and s.stale == (s.source.partition,) for s in result.moves if s.source)
    assert set(result.moved_to) == {4, 5, 6, 7} and sum(result.moved_from.values()) == len(moved)
    assert sum(result.products_on.values()) == len(KEYS) and set(result.products_on) == set(range(8))


def test_plan_of_an_interrupted_migration_writes_only_what_is_missing() -> None:
    live = placed("murmur2", 4)
    first = plan(live, "murmur2", 4, 8)
    # Stopped after copying the first half of the moves (no tombstone yet): each copy keeps its source's timestamp.
    grown: dict[int, dict[bytes, tuple[int, int]]] = {p: dict(live.get(p, {})) for p in range(8)}
    done = first.moves[: len(first.moves) // 2]
    for n, s in enumerate(done):
        assert s.source is not None
        grown[s.target][s.key] = (n, s.source.timestamp_ms)
    again = plan(grown, "murmur2", 4, 8)
    assert sorted(s.key for s in again.cleanups) == sorted(s.key for s in done)
    assert sorted(s.key for s in again.moves) == sorted(s.key for s in first.moves[len(done):])
    assert again.tombstones == first.tombstones and again.stayed == first.stayed
    assert again.products_on == first.products_on
