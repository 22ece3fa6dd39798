"""The state table's stores: per partition, bounded memory, revoked partitions closed; canaries on Faust's own stores."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.stores import memory as faust_memory
from faust.stores import rocksdb as faust_rocksdb
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from worker.core import load_bundled_policy
from worker.kafka import stores
from worker.kafka.stores import MemoryStore, RocksDBStore, StateDirInUse, lock_state_dir
from worker.settings import Settings
from worker.stream.app import STATE_TABLE, create_app


def make_app(store: str, state_dir: Path) -> Iterator[faust.App]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        settings = Settings.from_env({
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": store, "STATE_DIR": str(state_dir),
            "STATE_CACHE_MB": "8",
        })
        yield create_app(settings, load_bundled_policy())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture(params=["rocksdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    for app in make_app(request.param, tmp_path):
        data = app.tables[STATE_TABLE].data
        assert isinstance(data, RocksDBStore if request.param == "rocksdb" else MemoryStore)
        yield data
        if isinstance(data, RocksDBStore):
            app.loop.run_until_complete(data.stop())


def changelog_tp(store: Any, partition: int) -> TP:
    return TP(store.table.changelog_topic_name, partition)


def changelog_event(store: Any, partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
    tp = changelog_tp(store, partition)
    message = ConsumerMessage(tp.topic, partition, offset, 0.0, 0, {}, key, value, None, tp=tp)
    return store.app.create_event(key, value, {}, message)


def test_writes_and_reads_stay_in_their_partition(store: Any) -> None:
    store.write(0, {b"P-1": b"zero", b"P-2": b"two"}, 7)
    store.write(1, {b"P-1": b"one"}, None)
    assert (store.read(0, b"P-1"), store.read(1, b"P-1"), store.read(1, b"P-2")) == (b"zero", b"one", None)
    store.write(0, {b"P-2": None}, 8)
    assert store.read(0, b"P-2") is None
    if isinstance(store, RocksDBStore):
        assert store.persisted_offset(changelog_tp(store, 0)) == 8, "stored with the changes, in one write"
        assert store.persisted_offset(changelog_tp(store, 1)) is None


def test_a_scan_goes_a_chunk_at_a_time_and_stops_when_the_partition_is_revoked(
    store: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stores, "SCAN_CHUNK", 3)
    keys = [f"P-{n:02d}".encode() for n in range(8)]
    store.write(2, {key: key + b"!" for key in keys}, 41)
    chunks = store.scan(2)
    first = next(chunks)
    assert len(first) == 3
    seen = list(first)
    for chunk in chunks:
        seen.extend(chunk)
    assert sorted(seen) == [(key, key + b"!") for key in keys], "every record once, the offset key never"

    later = store.scan(2)
    next(later)
    store.app.loop.run_until_complete(store.on_rebalance(set(), {changelog_tp(store, 2)}, set()))
    assert list(later) == [], "a revoked partition's scan ends"
    assert not store.holds(2) and 2 not in store.partitions()


def test_recovery_applies_per_partition_and_counts_by_role(store: Any) -> None:
    counted: list[tuple[str, int]] = []
    store.on_restored = lambda role, records: counted.append((role, records))
    store.apply_changelog_batch(
        [changelog_event(store, 3, 10, b"P-1", b"a"), changelog_event(store, 3, 11, b"P-2", b"b"),
         changelog_event(store, 0, 5, b"P-3", b"c"), changelog_event(store, 3, 12, b"P-1", None)],
        to_key=lambda k: k, to_value=lambda v: v,
    )
    assert (store.read(3, b"P-1"), store.read(3, b"P-2"), store.read(0, b"P-3"), store.read(3, b"P-3")) == (
        None, b"b", b"c", None,
    )
    assert counted == [("active", 4)], "nothing assigned as standby: all active"
    assert sorted(p for p, _, _ in store.held()) == [0, 3]


def test_a_standby_s_records_count_as_standby_with_one_look_at_the_assignment_per_partition(
    store: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    looks: list[str] = []

    def assigned_standbys() -> set[Any]:
        looks.append("look")  # the assignor builds this set afresh each time
        return {changelog_tp(store, 0)}

    monkeypatch.setattr(store.app.assignor, "assigned_standbys", assigned_standbys)
    counted: list[tuple[str, int]] = []
    store.on_restored = lambda role, records: counted.append((role, records))
    store.apply_changelog_batch(
        [changelog_event(store, 3, offset, b"P-%d" % offset, b"a") for offset in range(10, 40)]
        + [changelog_event(store, 0, offset, b"Q-%d" % offset, b"b") for offset in range(5, 25)],
        to_key=lambda k: k, to_value=lambda v: v,
    )
    assert sorted(counted) == [("active", 30), ("standby", 20)]
    assert len(looks) == 2, "once per partition of the batch, not per record"


def test_the_rocksdb_cache_is_one_for_every_partition_and_memtables_are_charged_to_it(tmp_path: Path) -> None:
    for app in make_app("rocksdb", tmp_path):
        store = app.tables[STATE_TABLE].data
        options = store.rocksdb_options
        assert options.cache_bytes == 8 * 1024 * 1024
        for partition in range(4):
            store.write(partition, {b"k": b"v" * 1000}, 1)
        assert store.cache_bytes() > 0, "the memtables of all four databases are charged to the one cache"
        assert store.cache_bytes() <= options.cache_bytes
        app.loop.run_until_complete(store.stop())


def test_revoked_rocksdb_partitions_are_closed_and_release_their_lock(tmp_path: Path) -> None:
    for app in make_app("rocksdb", tmp_path):
        store = app.tables[STATE_TABLE].data
        store.write(1, {b"P-1": b"kept"}, 3)
        db = store._dbs[1]
        store.revoke_partitions(store.table, {changelog_tp(store, 1)})
        with pytest.raises(Exception, match="(?i)closed"):
            db.get(b"P-1")
        # Closed, so the same directory opens again at once (Faust retries a locked database for up to 30 s).
        assert store.read(1, b"P-1") == b"kept"
        assert store.persisted_offset(changelog_tp(store, 1)) == 3
        store.wipe(1)
        assert store.read(1, b"P-1") is None and store.persisted_offset(changelog_tp(store, 1)) is None
        app.loop.run_until_complete(store.stop())


def test_the_memory_store_keeps_standbys_and_drops_what_is_neither(tmp_path: Path) -> None:
    for app in make_app("memory", tmp_path):
        store = app.tables[STATE_TABLE].data
        for partition in range(3):
            store.write(partition, {b"P": b"x"}, None)
        active, standby = changelog_tp(store, 0), changelog_tp(store, 1)
        app.loop.run_until_complete(store.on_recovery_completed({active}, {standby}))
        assert store.partitions() == {0, 1}


# --- canaries: the Faust behaviour these stores change (when one fails, upstream changed: see worker/kafka/stores.py)


def test_canary_faust_rocksdb_store_drops_a_revoked_database_without_closing_it(tmp_path: Path) -> None:
    for app in make_app("rocksdb", tmp_path):
        store = app.tables[STATE_TABLE].data
        closed = []

        class Db:
            def close(self) -> None:
                closed.append(True)

        store._dbs[2] = Db()
        faust_rocksdb.Store.revoke_partitions(store, store.table, {changelog_tp(store, 2)})
        assert 2 not in store._dbs and closed == []


def test_canary_faust_rocksdb_store_finds_a_partition_only_from_the_current_event(tmp_path: Path) -> None:
    for app in make_app("rocksdb", tmp_path):
        store = app.tables[STATE_TABLE].data
        with pytest.raises(AssertionError):
            faust_rocksdb.Store._set(store, b"P-1", b"v")  # no event being processed: no partition
        app.loop.run_until_complete(store.stop())


def test_canary_faust_rocksdb_options_give_each_database_its_own_large_cache() -> None:
    assert faust_rocksdb.DEFAULT_BLOCK_CACHE_SIZE == 2 * 1024**3
    assert faust_rocksdb.DEFAULT_WRITE_BUFFER_SIZE == 64 * 1024**2


def test_canary_faust_memory_store_drops_standby_keys_after_recovery(tmp_path: Path) -> None:
    for app in make_app("memory", tmp_path):
        table = app.tables[STATE_TABLE]
        faust_store = faust_memory.Store("memory://", app, table)
        tp = changelog_tp(faust_store, 1)
        message = ConsumerMessage(tp.topic, 1, 0, 0.0, 0, {}, b"P-1", b"v", None, tp=tp)
        faust_store.apply_changelog_batch([app.create_event(b"P-1", b"v", {}, message)], lambda k: k, lambda v: v)
        app.loop.run_until_complete(faust_store.on_recovery_completed(set(), {tp}))
        assert faust_store.data == {}, "a standby partition's keys are gone"


# --- the state directory lock ------------------------------------------------------------------------------------


def test_a_state_directory_is_held_by_one_process(tmp_path: Path) -> None:
    path = tmp_path / "state" / "app"
    descriptor = lock_state_dir(path)
    try:
        assert (path / "LOCK").read_text().strip() == str(os.getpid())
        # Another process's attempt: flock is per open file description, so a second open in this process stands in.
        other = os.open(path / "LOCK", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
        with pytest.raises(StateDirInUse, match=rf"in use by another worker process \(pid {os.getpid()}\)"):
            lock_state_dir(path)
    finally:
        os.close(descriptor)
    os.close(lock_state_dir(path))  # free again once the holder is gone
