"""Faust's table stores with each partition's state kept apart: read and written a batch at a time, freed when revoked."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import faust
import rocksdict
from faust.stores import memory as faust_memory
from faust.stores import rocksdb as faust_rocksdb
from faust.types import TP, EventT

# Each partition's RocksDB database: a memtable of this size is flushed to disk; two may exist while one flushes.
# Small, so the shared cache is full within the first ~200,000 events and RSS stays flat after (8 MiB: RSS still
# +25% from the 200,000th event to the millionth; docs/performance.md, "What the rss bench's growth is").
WRITE_BUFFER_BYTES = 2 * 1024 * 1024
MAX_OPEN_FILES = 1000  # per database; the process limit is far above what 4-16 partitions' files need
SCAN_CHUNK = 500  # records per step of a partition scan (the re-screening iterates with it)


class PartitionStore(Protocol):
    """What the worker's state needs from a table's store: a partition's records by key, a batch of changes at once."""

    def read(self, partition: int, key: bytes) -> bytes | None: ...

    def write(self, partition: int, changes: Mapping[bytes, bytes | None], offset: int | None) -> None:
        """Apply ``changes`` (None deletes) and, when given, remember ``offset`` as the last changelog record they hold."""

    def scan(self, partition: int) -> Iterator[list[tuple[bytes, bytes]]]:
        """The partition's records a chunk at a time, each chunk read afresh (a caller may wait between chunks)."""

    def holds(self, partition: int) -> bool: ...

    def partitions(self) -> set[int]: ...

    def held(self) -> list[tuple[int, str, int]]:
        """(partition, "active" or "standby", products: estimated for RocksDB) of every partition held."""


class _Held:
    """What both stores report of the partitions they hold and count of what recovery applied."""

    app: faust.App
    table: faust.Table
    # Told how many changelog records a recovery applied, by role ("active", "standby").
    on_restored: Callable[[str, int], None] | None = None

    def role(self, partition: int) -> str:
        standbys = self.app.assignor.assigned_standbys()
        return "standby" if TP(self.table.changelog_topic_name, partition) in standbys else "active"

    def _restored(self, batch: list[EventT]) -> None:
        if self.on_restored is None or not batch:
            return
        by_partition: dict[int, int] = {}
        for event in batch:
            partition = event.message.partition
            by_partition[partition] = by_partition.get(partition, 0) + 1
        counts: dict[str, int] = {}
        for partition, count in by_partition.items():  # role() builds the assignor's standby set: once per partition
            role = self.role(partition)
            counts[role] = counts.get(role, 0) + count
        for role, count in counts.items():
            self.on_restored(role, count)


class RocksDBOptions(faust_rocksdb.RocksDBOptions):
    """Faust's RocksDB options (rocksdict), bounded for a small pod instead of Faust's per-database defaults.

    Faust gives each partition's database its own 2 GiB block cache and three 64 MiB
    memtables, and leaves index and filter blocks outside any cache, so memory grows
    with the partitions held and with the data. Here every database of the process
    shares one block cache of ``cache_bytes``; memtables are charged to it (a write
    buffer manager of half of it), and so are index and filter blocks. The write-ahead
    log is off, as in Kafka Streams: the changelog topic is the log, and a database
    is written with the offset of the last changelog record it holds in the same
    batch, so after a crash it is a consistent earlier state that recovery brings up
    to date. Blocks are LZ4-compressed (ZSTD at the bottom level).
    """

    def __init__(self, cache_bytes: int) -> None:
        super().__init__(use_rocksdict=True)
        self.cache_bytes = cache_bytes
        self.cache = rocksdict.Cache(cache_bytes)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            cache_bytes // 2, False, self.cache
        )
        self.write_options = rocksdict.WriteOptions()
        self.write_options.disable_wal = True

    def as_options(self) -> rocksdict.Options:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(MAX_OPEN_FILES)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_compression_type(rocksdict.DBCompressionType.lz4())
        options.set_bottommost_compression_type(rocksdict.DBCompressionType.zstd())
        options.set_max_background_jobs(2)
        options.set_keep_log_file_num(2)  # RocksDB's own LOG files
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        return options

    def open(self, path: Path, *, read_only: bool = False) -> rocksdict.Rdict:
        db = rocksdict.Rdict(str(path), options=self.as_options(), access_type=rocksdict.AccessType.read_write())
        db.set_write_options(self.write_options)
        return db


class RocksDBStore(_Held, faust_rocksdb.Store):
    """Faust's RocksDB store, read and written per partition, with revoked partitions closed.

    Faust's store finds a key's partition from the event being processed
    (``current_event``), which a batch-at-a-time agent does not have; here the
    caller names the partition. Faust drops a revoked partition's database without
    closing it (``revoke_partitions``, and ``stop``), leaving its memory and its
    file lock to the garbage collector; here it is flushed and closed.
    """

    def __init__(self, url: str, app: faust.App, table: faust.Table, *, cache_bytes: int, **kwargs: Any) -> None:
        super().__init__(url, app, table, driver="rocksdict", **kwargs)
        self.rocksdb_options = RocksDBOptions(cache_bytes)

    def read(self, partition: int, key: bytes) -> bytes | None:
        return self._db_for_partition(partition).get(key)

    def write(self, partition: int, changes: Mapping[bytes, bytes | None], offset: int | None) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if offset is not None:
            batch.put(self.offset_key, str(offset).encode())
        self._db_for_partition(partition).write(batch)

    def scan(self, partition: int) -> Iterator[list[tuple[bytes, bytes]]]:
        after: bytes | None = None
        while True:
            db = self._dbs.get(partition)
            if db is None:
                return  # revoked meanwhile
            chunk = self._chunk(db, after)
            if not chunk:
                return
            after = chunk[-1][0]
            yield [(key, value) for key, value in chunk if key != self.offset_key]

    @staticmethod
    def _chunk(db: rocksdict.Rdict, after: bytes | None) -> list[tuple[bytes, bytes]]:
        # A fresh iterator per chunk: none is held while the caller waits, so none pins old files or a closed database.
        iterator = db.iter()
        if after is None:
            iterator.seek_to_first()
        else:
            iterator.seek(after)
            if iterator.valid() and iterator.key() == after:
                iterator.next()
        chunk = []
        while iterator.valid() and len(chunk) < SCAN_CHUNK:
            chunk.append((iterator.key(), iterator.value()))
            iterator.next()
        del iterator
        return chunk

    def holds(self, partition: int) -> bool:
        return partition in self._dbs

    def partitions(self) -> set[int]:
        return set(self._dbs)

    def held(self) -> list[tuple[int, str, int]]:
        return [
            (partition, self.role(partition), db.property_int_value("rocksdb.estimate-num-keys") or 0)
            for partition, db in sorted(self._dbs.items())
        ]

    def cache_bytes(self) -> int:
        """What the shared block cache holds now (memtables, index and filter blocks included)."""
        return int(self.rocksdb_options.cache.get_usage())

    def apply_changelog_batch(
        self, batch: Iterable[EventT], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any],
    ) -> None:
        batch = list(batch)
        super().apply_changelog_batch(batch, to_key, to_value)
        self._restored(batch)

    def revoke_partitions(self, table: faust.Table, tps: set[TP]) -> None:
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self._close(self._dbs.pop(tp.partition, None))
        self._key_index.clear()

    async def stop(self) -> None:
        for partition in list(self._dbs):
            self._close(self._dbs.pop(partition))
        await super().stop()

    def _close(self, db: rocksdict.Rdict | None) -> None:
        if db is not None:
            db.flush()  # what the memtables hold reaches disk: the next start recovers only what is newer
            db.close()

    def wipe(self, partition: int) -> None:
        """Forget a partition's local state (closed first if open): its next recovery reads the whole changelog."""
        self._close(self._dbs.pop(partition, None))
        rocksdict.Rdict.destroy(str(self.partition_path(partition)))


class MemoryStore(_Held, faust_memory.Store):
    """Faust's memory store with each partition's records in a dict of its own, dropped when the partition is revoked.

    Faust's memory store keeps one dict and, after a recovery, drops only the keys
    it recovered itself for partitions no longer active: what the worker wrote
    stays after its partition is revoked (memory grows with every rebalance), and
    the keys of standby partitions are dropped too (a standby holds nothing).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._partitions: dict[int, dict[bytes, bytes]] = {}

    def read(self, partition: int, key: bytes) -> bytes | None:
        records = self._partitions.get(partition)
        return None if records is None else records.get(key)

    def write(self, partition: int, changes: Mapping[bytes, bytes | None], offset: int | None) -> None:
        records = self._partitions.setdefault(partition, {})
        for key, value in changes.items():
            if value is None:
                records.pop(key, None)
            else:
                records[key] = value

    def scan(self, partition: int) -> Iterator[list[tuple[bytes, bytes]]]:
        records = self._partitions.get(partition)
        keys = list(records) if records is not None else []
        for start in range(0, len(keys), SCAN_CHUNK):
            records = self._partitions.get(partition)
            if records is None:
                return  # revoked meanwhile
            chunk = [(key, value) for key in keys[start:start + SCAN_CHUNK] if (value := records.get(key)) is not None]
            yield chunk

    def holds(self, partition: int) -> bool:
        return partition in self._partitions

    def partitions(self) -> set[int]:
        return set(self._partitions)

    def held(self) -> list[tuple[int, str, int]]:
        return [(partition, self.role(partition), len(records)) for partition, records in sorted(self._partitions.items())]

    def apply_changelog_batch(
        self, batch: Iterable[EventT], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any],
    ) -> None:
        batch = list(batch)
        self._restored(batch)
        partitions = self._partitions
        for event in batch:
            message = event.message
            records = partitions.get(message.partition)
            if records is None:
                records = partitions[message.partition] = {}
            if message.value is None:
                records.pop(message.key, None)
            else:
                records[message.key] = message.value

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0,
    ) -> None:
        topics = self.table.changelog_topic.topics
        for tp in revoked:
            if tp.topic in topics:
                self._partitions.pop(tp.partition, None)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        topics = self.table.changelog_topic.topics
        kept = {tp.partition for tp in active_tps | standby_tps if tp.topic in topics}
        for partition in set(self._partitions) - kept:
            del self._partitions[partition]

    def wipe(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def reset_state(self) -> None:
        self._partitions.clear()


class StateTable(faust.Table):
    """A Faust table whose store is one of the above, built by ``store_factory`` (Faust's own tables pick by URL)."""

    def __init__(self, *args: Any, store_factory: Callable[[StateTable], Any], **kwargs: Any) -> None:
        self._store_factory = store_factory
        super().__init__(*args, **kwargs)

    def _new_store(self) -> Any:
        return self._store_factory(self)


class StateDirInUse(RuntimeError):
    """Another worker process holds the state directory."""


def lock_state_dir(path: Path) -> int:
    """Create ``path`` and hold its lock for the life of the process; fail at once if another process holds it.

    Two workers on one directory would take turns at each partition's database
    lock, and a standby could not open a database its neighbour's active holds.
    """
    path.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise StateDirInUse(f"{path} is in use by another worker process (pid {holder})") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor
