"""The processor's per-product state on the state table: a batch's changes stored once they are durable in the changelog."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import faust

from worker.kafka.stores import PartitionStore

# (input partition, product key, new state or None for removed): one changelog record.
Write = tuple[int, bytes, bytes | None]
_ABSENT = object()


class TableStateStore:
    """The processor's StateStore: reads see every change made so far, the table's store only durable ones.

    A product's state lives in the partition of the input its events arrive on,
    and its changelog records go to that partition of the changelog, so state is
    co-partitioned with the input and recovered by whichever worker owns the
    partition. A change is visible at once (later events of the same batch read
    it) but reaches the store only once its changelog record is durable
    (``durable``): acknowledged by the broker under at_least_once, committed under
    exactly_once (``stage`` then ``committed``). So the store only ever holds what
    the changelog holds, and a restart recovers from its last changelog offset
    without undoing anything. A rebalance drops the changes of the partitions
    it revokes (``forget``): their events are read again from the committed offset.
    """

    def __init__(self, table: faust.Table, backend: PartitionStore) -> None:
        self.table = table
        self.backend = backend
        self._pending: dict[int, dict[bytes, bytes | None]] = {}  # per partition, the newest change not yet stored
        self._writes: list[Write] = []  # since the last take_writes
        self._staged: list[tuple[list[Write], dict[int, int]]] = []  # exactly_once: durable once committed
        self._owned: set[int] | None = None  # the input partitions assigned here (None: not told yet, all)

    # --- the processor's StateStore ---------------------------------------------------

    def get(self, key: bytes, partition: int) -> bytes | None:
        pending = self._pending.get(partition)
        if pending is not None:
            value = pending.get(key, _ABSENT)
            if value is not _ABSENT:
                return value  # type: ignore[return-value]
        return self.backend.read(partition, key)

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        self._change(partition, key, value)
        self._writes.append((partition, key, value))

    def delete(self, key: bytes, partition: int) -> None:
        if self.get(key, partition) is not None:
            self._change(partition, key, None)
            self._writes.append((partition, key, None))

    def _change(self, partition: int, key: bytes, value: bytes | None) -> None:
        pending = self._pending.get(partition)
        if pending is None:
            pending = self._pending[partition] = {}
        pending[key] = value

    # --- changelog and durability ---------------------------------------------------------

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def take_writes(self) -> list[Write]:
        """The changelog records (partition, key, value) the processor wrote since the last call, to be sent."""
        writes, self._writes = self._writes, []
        return writes

    def stage_write(self, key: bytes, value: bytes | None, partition: int) -> Write:
        """A change made apart from the live batch (re-screening), visible at once; its writer sends the record."""
        self._change(partition, key, value)
        return (partition, key, value)

    async def send(self, writes: Sequence[Write], send: Callable[..., Awaitable[Any]]) -> list[Any]:
        """Send changelog records with Faust's send signature; their delivery futures (RecordMetadata)."""
        topic = self.changelog_topic
        return [await send(topic, key, value, partition, None, None) for partition, key, value in writes]

    def durable(self, writes: Sequence[Write], offsets: dict[int, int]) -> None:
        """The changelog holds ``writes`` (up to ``offsets`` per partition): store them, in order, with those offsets."""
        changes: dict[int, dict[bytes, bytes | None]] = {}
        for partition, key, value in writes:
            changes.setdefault(partition, {})[key] = value
        backend, owned = self.backend, self._owned
        for partition, partition_changes in changes.items():
            if owned is None or partition in owned:  # a partition revoked meanwhile is recovered by its next owner
                backend.write(partition, partition_changes, offsets.get(partition))
        for partition, key, value in writes:
            pending = self._pending.get(partition)
            # Kept when a later change of the same product is still on its way (it is another object).
            if pending is not None and pending.get(key, _ABSENT) is value:
                del pending[key]

    def discard(self, writes: Sequence[Write]) -> None:
        """Undo changes that will never be durable (their batch failed), and any not yet taken."""
        for partition, key, value in (*writes, *self.take_writes()):
            pending = self._pending.get(partition)
            if pending is not None and pending.get(key, _ABSENT) is value:
                del pending[key]

    def stage(self, writes: Sequence[Write], offsets: dict[int, int]) -> None:
        """exactly_once: ``writes`` are in their partitions' open transactions; stored by ``committed``."""
        if writes:
            self._staged.append((list(writes), offsets))

    def committed(self, partitions: Iterable[int]) -> None:
        """The transactions of these input partitions committed: store what they staged, oldest first."""
        partitions = set(partitions)
        still = []
        for writes, offsets in self._staged:
            done = [write for write in writes if write[0] in partitions]
            if done:
                self.durable(done, {p: o for p, o in offsets.items() if p in partitions})
            rest = [write for write in writes if write[0] not in partitions]
            if rest:
                still.append((rest, {p: o for p, o in offsets.items() if p not in partitions}))
        self._staged = still

    def own(self, partitions: Iterable[int]) -> None:
        """These input partitions are assigned here now: their changes are stored, others' no longer."""
        self._owned = set(partitions)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the changes not yet stored for these partitions (revoked: their events are read again)."""
        partitions = set(partitions)
        if self._owned is not None:
            self._owned -= partitions
        for partition in partitions:
            self._pending.pop(partition, None)
        self._staged = [
            (kept, offsets) for writes, offsets in self._staged
            if (kept := [write for write in writes if write[0] not in partitions])
        ]

    # --- reading a partition (re-screening, lookups) -------------------------------------

    def scan(self, partition: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """A partition's states a chunk at a time: the stored ones, then the changes not yet stored.

        A product can come twice (stored, then changed since): a caller compares
        what it read with ``get`` before it writes.
        """
        yield from self.backend.scan(partition)
        pending = self._pending.get(partition)
        if pending:
            yield [(key, value) for key, value in list(pending.items()) if value is not None]



def changelog_offsets(deliveries: Iterable[tuple[int, Any, int]]) -> dict[int, int]:
    """Per changelog partition, the offset of the last record of these deliveries: (partition, done future of
    RecordMetadata, records in it)."""
    offsets: dict[int, int] = {}
    for partition, delivery, count in deliveries:
        last = delivery.result().offset + count - 1
        if last > offsets.get(partition, -1):
            offsets[partition] = last
    return offsets
