"""A fetched batch the worker cannot read (corrupt, an unknown codec) stops its partition alone, reported, never a crash."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.structs import TopicPartition

log = logging.getLogger("worker.unreadable")


class Unreadable(NamedTuple):
    """Where a partition stopped and why."""

    topic: str
    partition: int
    offset: int  # the first offset not read: the unreadable batch starts here (or just after, past compacted gaps)
    cause: str
    since: float  # epoch seconds of the first time it was met


class UnreadableBatches:
    """The partitions stopped at a batch they cannot read, as the consumer met them (written from its thread)."""

    def __init__(self) -> None:
        self._stopped: dict[tuple[str, int], Unreadable] = {}
        self._lock = threading.Lock()
        self.on_new: Callable[[Unreadable], None] | None = None  # once per partition and offset

    def met(self, tp: TopicPartition, offset: int, error: BaseException) -> bool:
        """Record it; True the first time this partition stopped at this offset."""
        with self._lock:
            known = self._stopped.get((tp.topic, tp.partition))
            if known is not None and known.offset == offset:
                return False
            found = Unreadable(tp.topic, tp.partition, offset, f"{error.__class__.__name__}: {error}", time.time())
            self._stopped[(tp.topic, tp.partition)] = found
        log.error(
            "cannot read %s partition %d at offset %d (%s): that partition stops there, the others go on; "
            "see docs/runbook.md#complianceunreadablebatch", found.topic, found.partition, found.offset, found.cause,
            extra={
                "event": "unreadable_batch", "source": {"topic": found.topic, "partition": found.partition,
                                                        "offset": found.offset}, "cause": found.cause,
            },
        )
        if self.on_new is not None:
            self.on_new(found)
        return True

    def forget(self, keep: Callable[[str, int], bool]) -> None:
        """Drop what no longer applies (partitions this worker does not own any more)."""
        with self._lock:
            for key in [key for key in self._stopped if not keep(*key)]:
                del self._stopped[key]

    def now(self) -> list[Unreadable]:
        with self._lock:
            return sorted(self._stopped.values())


# topic -> what to call when a batch of it cannot be read: (partition, first offset not read, error)
_watched: dict[str, Callable[[TopicPartition, int, BaseException], None]] = {}


class PartitionRecords(aiokafka_fetcher.PartitionRecords):
    """aiokafka's records of one fetched partition; a batch that cannot be read ends them instead of raising.

    aiokafka raises CorruptRecordException (a CRC that does not match) or
    UnsupportedCodecError (a codec without its library) from the middle of
    unpacking a fetch, after it has moved its read offset past the records it
    handed out but before they were returned: the fetch fails, those records are
    never delivered, and the next call returns nothing for the partition and moves
    its position past them anyway. Faust's consumer then crashes the worker, and a
    restarted worker meets the same batch again: a crash loop. For a watched topic
    the records before the batch are returned, the position stays at the batch,
    and the watcher hears of it (it pauses the partition: ``watch``).
    """

    def _unpack_records(self) -> Iterator[Any]:
        watcher = _watched.get(self._tp.topic)
        if watcher is None:
            yield from super()._unpack_records()
            return
        try:
            yield from super()._unpack_records()
        except Exception as exc:  # noqa: BLE001 - whatever the bytes do, one partition stops, the worker goes on
            watcher(self._tp, self.next_fetch_offset, exc)


def install() -> None:
    """Make aiokafka's fetcher build the records above (for watched topics only; others behave as before)."""
    aiokafka_fetcher.PartitionRecords = PartitionRecords  # type: ignore[misc]


def watch(topic: str, on_unreadable: Callable[[TopicPartition, int, BaseException], None]) -> None:
    _watched[topic] = on_unreadable


def unwatch(topic: str) -> None:
    _watched.pop(topic, None)
