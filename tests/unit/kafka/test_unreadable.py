"""A batch that cannot be read ends its partition's records where it starts; canaries on aiokafka's own behaviour."""

from __future__ import annotations

import inspect
import struct
from collections.abc import Iterator

import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from worker.kafka import unreadable

TP = TopicPartition("in", 0)
CRC_OFFSET, ATTRIBUTES_OFFSET = 17, 21  # in a v2 record batch's header (KIP-98)


def batch(base_offset: int, values: list[bytes], codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 1 << 20)
    for index, value in enumerate(values):
        builder.append(index, timestamp=None, key=b"k", value=value, headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base_offset)  # the broker assigns the base offset; the CRC does not cover it
    return bytes(data)


def corrupted(data: bytes, needle: bytes) -> bytes:
    at = data.index(needle)
    return data[:at] + bytes([data[at] ^ 0x20]) + data[at + len(needle[:1]):]


def records(data: bytes, cls: type = unreadable.PartitionRecords) -> aiokafka_fetcher.PartitionRecords:
    return cls(TP, MemoryRecords(data), [], 0, None, None, True, 0)


@pytest.fixture
def stopped() -> Iterator[list[tuple[TopicPartition, int, str]]]:
    seen: list[tuple[TopicPartition, int, str]] = []
    unreadable.watch(TP.topic, lambda tp, offset, error: seen.append((tp, offset, type(error).__name__)))
    yield seen
    unreadable.unwatch(TP.topic)


def test_records_before_a_corrupt_batch_are_handed_out_and_the_position_stays_at_it(
    stopped: list[tuple[TopicPartition, int, str]],
) -> None:
    data = batch(0, [b"a", b"b"]) + corrupted(batch(2, [b"bad-c", b"d"]), b"bad") + batch(4, [b"e"])
    partition = records(data)
    assert [record.value for record in partition] == [b"a", b"b"]
    assert partition.next_fetch_offset == 2
    assert stopped == [(TP, 2, "CorruptRecordException")]


def in_codec(data: bytes, codec: int) -> bytes:
    """The batch relabelled with another codec id, its CRC (CRC-32C from the attributes on) made to match again."""
    buffer = bytearray(data)
    attributes = struct.unpack_from(">h", buffer, ATTRIBUTES_OFFSET)[0]
    struct.pack_into(">h", buffer, ATTRIBUTES_OFFSET, (attributes & ~0x07) | codec)
    struct.pack_into(">I", buffer, CRC_OFFSET, calc_crc32c(bytes(buffer[ATTRIBUTES_OFFSET:])))
    return bytes(buffer)


def test_a_batch_in_a_codec_it_cannot_decode_stops_the_same_way(stopped: list[tuple[TopicPartition, int, str]]) -> None:
    data = batch(0, [b"a"]) + in_codec(batch(1, [b"b", b"c"]), 7)  # a codec id no Kafka release defines
    partition = records(data)
    assert [record.value for record in partition] == [b"a"]
    assert partition.next_fetch_offset == 1 and [(tp, offset) for tp, offset, _ in stopped] == [(TP, 1)]


def test_an_unwatched_topic_raises_as_aiokafka_does() -> None:
    partition = records(batch(0, [b"a"]) + corrupted(batch(1, [b"bad"]), b"bad"))
    with pytest.raises(CorruptRecordException):
        list(partition)


def test_met_reports_each_partition_and_offset_once() -> None:
    batches = unreadable.UnreadableBatches()
    heard: list[int] = []
    batches.on_new = lambda found: heard.append(found.offset)
    error = CorruptRecordException("Invalid CRC")
    assert batches.met(TP, 20, error) and not batches.met(TP, 20, error)
    assert batches.met(TP, 30, error), "stopped again further on: a new batch"
    assert heard == [20, 30] and [(f.partition, f.offset) for f in batches.now()] == [(0, 30)]
    batches.forget(lambda topic, partition: False)
    assert batches.now() == []


# --- canaries: what aiokafka does, which worker/kafka/unreadable.py changes ----------------------------------------


def test_canary_aiokafka_raises_mid_fetch_after_moving_past_the_records_it_handed_out() -> None:
    partition = records(batch(0, [b"a", b"b"]) + corrupted(batch(2, [b"bad"]), b"bad"), aiokafka_fetcher.PartitionRecords)
    handed = []
    with pytest.raises(CorruptRecordException):
        for record in partition:
            handed.append(record.value)
    assert handed == [b"a", b"b"] and partition.next_fetch_offset == 2
    # fetched_records collects them in a list it then drops with the exception: they never reach the caller.
    source = inspect.getsource(aiokafka_fetcher.FetchResult.getall)
    assert "ret_list.append(msg)" in source and "_update_position" in source


def test_canary_the_fetcher_builds_partition_records_by_the_modules_name() -> None:
    assert "PartitionRecords(" in inspect.getsource(aiokafka_fetcher.Fetcher._proc_fetch_request)
