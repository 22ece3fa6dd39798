"""Kafka clients' key partitioners, which of them placed a topic's keys, and where each key's state goes when it grows."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

_MASK = 0xFFFFFFFF


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of ``key`` as an unsigned 32-bit number (Java's ``Utils.murmur2``, seed 0x9747b28c)."""
    m = 0x5BD1E995
    length = len(key)
    h = (0x9747B28C ^ length) & _MASK
    whole = length & ~3
    if whole:
        # The 4-byte words unpacked in one call: the worker partitions every decision by it (~1.4 us a key, 2.4 as
        # aiokafka's byte-by-byte version).
        for k in struct.unpack_from(f"<{whole >> 2}I", key):
            k = (k * m) & _MASK
            k ^= k >> 24
            h = ((h * m) & _MASK) ^ ((k * m) & _MASK)
    tail = length - whole
    if tail:
        if tail == 3:
            h ^= key[whole + 2] << 16
        if tail >= 2:
            h ^= key[whole + 1] << 8
        h ^= key[whole]
        h = (h * m) & _MASK
    h ^= h >> 13
    h = (h * m) & _MASK
    return h ^ (h >> 15)


def fnv1a(key: bytes) -> int:
    """librdkafka's ``rd_fnv1a``: 32-bit FNV-1a, then the absolute value of it as a signed number (as Sarama does)."""
    h = 0x811C9DC5
    for byte in key:
        h = ((h ^ byte) * 0x01000193) & _MASK
    if h & 0x80000000:
        h = (-h) & _MASK  # two's complement negation; 0x80000000 stays itself, as in C
    return h


def _murmur2_partition(key: bytes, partitions: int) -> int:
    # Java's BuiltInPartitioner.partitionForKey: toPositive(murmur2(key)) % n (toPositive masks the sign bit).
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _crc32_partition(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions  # librdkafka's consistent partitioner: rd_crc32(key) % n, unsigned


def _fnv1a_partition(key: bytes, partitions: int) -> int:
    return fnv1a(key) % partitions


# Which clients place a keyed record this way (docs/operations.md#growing-the-input lists their settings).
PARTITIONERS: dict[str, Callable[[bytes, int], int]] = {
    "murmur2": _murmur2_partition,  # Java clients, Kafka Streams, aiokafka, librdkafka's murmur2 and murmur2_random
    "crc32": _crc32_partition,  # librdkafka's default consistent_random, and consistent (kcat, confluent-kafka, ...)
    "fnv1a": _fnv1a_partition,  # librdkafka's fnv1a and fnv1a_random (Sarama's default hash partitioner)
}


def partition_for(partitioner: str, key: bytes, partitions: int) -> int:
    """The partition of ``partitions`` that ``partitioner`` gives a record keyed ``key``."""
    return PARTITIONERS[partitioner](key, partitions)


class Copy(NamedTuple):
    """The latest record of a key on one changelog partition."""

    partition: int
    offset: int
    timestamp_ms: int


# What reading a changelog to its end leaves: partition -> key -> (offset, timestamp) of the key's latest record
# there, keys whose latest record is a tombstone left out.
Live = Mapping[int, Mapping[bytes, tuple[int, int]]]


def copies(live: Live) -> Iterator[tuple[bytes, list[Copy]]]:
    """Each key once, with its copies on every partition that holds it (usually one)."""
    partitions = sorted(live)
    for index, partition in enumerate(partitions):
        earlier = [live[p] for p in partitions[:index]]
        later = [(p, live[p]) for p in partitions[index + 1:]]
        for key, (offset, timestamp) in live[partition].items():
            if any(key in records for records in earlier):
                continue  # met already, with this copy among its own
            found = [Copy(partition, offset, timestamp)]
            for other, records in later:
                where = records.get(key)
                if where is not None:
                    found.append(Copy(other, *where))
            yield key, found


@dataclass
class Detection:
    """Which partitioners put every key of a changelog where it is."""

    keys: int
    explained: dict[str, int]  # per candidate, how many keys it puts where they are
    agreeing: list[str]  # candidates that explain every key
    chosen: str | None  # the one to use, or None: none fits, or those that fit send some key to different places
    reason: str  # why none was chosen (empty when one was)


def detect(
    live: Live, old_partitions: int, new_partitions: int, candidates: Sequence[str] = tuple(PARTITIONERS),
    *, resuming: bool = False,
) -> Detection:
    """The partitioner that placed every key of ``live`` on the partition it is on with ``old_partitions``.

    Several that all fit are as good as one when they also agree where every key goes with ``new_partitions``;
    otherwise the keys cannot tell them apart (one partition, say, or few keys) and none is chosen. ``resuming``:
    a migration to ``new_partitions`` was interrupted, so a key may also be (or only be) where it goes now.
    """
    explained: Counter[str] = Counter({name: 0 for name in candidates})
    total = 0
    for key, found in copies(live):
        total += 1
        for name in candidates:
            place = PARTITIONERS[name]
            homes = {place(key, old_partitions)}
            if resuming:
                homes.add(place(key, new_partitions))
            if all(copy.partition in homes for copy in found):
                explained[name] += 1
    agreeing = [name for name in candidates if explained[name] == total]
    counts = dict(explained)
    if not agreeing:
        told = ", ".join(f"{name} {count:,}" for name, count in counts.items())
        return Detection(total, counts, [], None, f"no partitioner puts every key where it is ({total:,} keys; "
                                                  f"each explains: {told})")
    if len(agreeing) > 1:
        for key, _found in copies(live):
            targets = {PARTITIONERS[name](key, new_partitions) for name in agreeing}
            if len(targets) > 1:
                return Detection(
                    total, counts, agreeing, None,
                    f"{' and '.join(agreeing)} all put every one of the {total:,} keys where it is on {old_partitions} "
                    f"partition{'s' if old_partitions != 1 else ''}, but send key {key!r} to different partitions "
                    f"of {new_partitions}: name the upstream's partitioner with --partitioner",
                )
    return Detection(total, counts, agreeing, agreeing[0], "")


class Step(NamedTuple):
    """What becomes of one key: ``source`` (None: nothing to write) is written to ``target``, then every partition
    in ``stale`` gets a tombstone for it."""

    key: bytes
    source: Copy | None
    target: int
    stale: tuple[int, ...]


def step(key: bytes, found: Sequence[Copy], target: int, old_home: int | None = None) -> Step:
    """A key's step towards ``target``: its newest copy must end up there, and only there.

    The newest copy is the one with the latest timestamp; on a tie the one already on ``target`` (a copy an
    interrupted run wrote keeps its source's timestamp), then the one on ``old_home`` (where the key's events came
    before), then the lowest partition.
    """

    def rank(copy: Copy) -> tuple[int, bool, bool, int]:
        return (copy.timestamp_ms, copy.partition == target, copy.partition == old_home, -copy.partition)

    newest = max(found, key=rank)
    stale = tuple(sorted(copy.partition for copy in found if copy.partition != target))
    return Step(key, None if newest.partition == target else newest, target, stale)


@dataclass
class Plan:
    """Every key's step, with the counts a summary shows."""

    partitioner: str
    old_partitions: int
    new_partitions: int
    moves: list[Step] = field(default_factory=list)  # a copy to write (and stale ones to remove)
    cleanups: list[Step] = field(default_factory=list)  # already on the target: only stale copies to remove
    stayed: int = 0  # already on the target, nowhere else
    moved_from: Counter[int] = field(default_factory=Counter)  # partition a moved copy comes from -> keys
    moved_to: Counter[int] = field(default_factory=Counter)  # partition it goes to -> keys
    products_on: Counter[int] = field(default_factory=Counter)  # partition -> keys it holds afterwards

    @property
    def keys(self) -> int:
        return len(self.moves) + len(self.cleanups) + self.stayed

    @property
    def tombstones(self) -> int:
        return sum(len(s.stale) for s in self.moves) + sum(len(s.stale) for s in self.cleanups)


def plan(live: Live, partitioner: str, old_partitions: int, new_partitions: int) -> Plan:
    """Where every key of ``live`` goes when its topic grows from ``old_partitions`` to ``new_partitions``."""
    place = PARTITIONERS[partitioner]
    result = Plan(partitioner, old_partitions, new_partitions)
    for key, found in copies(live):
        target = place(key, new_partitions)
        result.products_on[target] += 1
        one = step(key, found, target, place(key, old_partitions))
        if one.source is not None:
            result.moves.append(one)
            result.moved_from[one.source.partition] += 1
            result.moved_to[target] += 1
        elif one.stale:
            result.cleanups.append(one)
        else:
            result.stayed += 1
    return result
