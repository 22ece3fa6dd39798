"""The processor's per-product state on a Faust table: reads and writes in memory, changelog records sent with the batch."""

from __future__ import annotations

from typing import Any

import faust


class TableStateStore:
    """The processor's StateStore on a Faust table (changelog-backed), written per input partition.

    Writes go to the changelog partition the product's events arrive on, the same
    partition Faust would pick inside a stream, so state is co-partitioned with
    the input and recovered by whichever worker owns that partition. They are
    collected and sent with the batch's decisions (``send_writes``), so the
    batch is acked only once its state changes are acknowledged too.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self._writes: list[tuple[int, bytes, bytes | None]] = []

    def get(self, key: bytes) -> bytes | None:
        return self.table.data.get(key)

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.table.data[key] = value
        self._writes.append((partition, key, value))

    def delete(self, key: bytes, partition: int) -> None:
        if self.table.data.pop(key, None) is not None:
            self._writes.append((partition, key, None))

    def keys(self) -> list[bytes]:
        return list(self.table.data.keys())

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def take_writes(self) -> list[tuple[int, bytes, bytes | None]]:
        """The changelog records (partition, key, value) the processor wrote since the last call, to be sent."""
        writes, self._writes = self._writes, []
        return writes

    async def send_writes(self, send: Any) -> list[Any]:
        """Send the changelog records the processor wrote since the last call; their delivery futures."""
        return await self.send(self.take_writes(), send)

    def write(self, key: bytes, value: bytes, partition: int) -> tuple[int, bytes, bytes | None]:
        """Store a value now and return its changelog record, for a writer that sends its own (re-screening)."""
        self.table.data[key] = value
        return (partition, key, value)

    async def send(self, writes: list[tuple[int, bytes, bytes | None]], send: Any) -> list[Any]:
        topic = self.changelog_topic
        return [await send(topic, key, value, partition, None, None) for partition, key, value in writes]
