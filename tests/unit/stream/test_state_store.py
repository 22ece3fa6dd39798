"""The state adapter: changes visible at once, stored only once durable, undone or dropped when they never will be."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from worker.stream.state_store import TableStateStore, changelog_offsets


class Backend:
    """A PartitionStore in dicts, recording each write (partition, changes, offset)."""

    def __init__(self) -> None:
        self.partitions_: dict[int, dict[bytes, bytes]] = {}
        self.writes: list[tuple[int, dict[bytes, bytes | None], int | None]] = []

    def read(self, partition: int, key: bytes) -> bytes | None:
        return self.partitions_.get(partition, {}).get(key)

    def write(self, partition: int, changes: Mapping[bytes, bytes | None], offset: int | None) -> None:
        self.writes.append((partition, dict(changes), offset))
        records = self.partitions_.setdefault(partition, {})
        for key, value in changes.items():
            if value is None:
                records.pop(key, None)
            else:
                records[key] = value

    def scan(self, partition: int) -> Iterator[list[tuple[bytes, bytes]]]:
        yield sorted(self.partitions_.get(partition, {}).items())


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def state(backend: Backend) -> TableStateStore:
    table: Any = SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: "app-decision-state-changelog"))
    return TableStateStore(table, backend)  # type: ignore[arg-type]


def test_a_change_is_read_back_at_once_and_stored_once_durable(state: TableStateStore, backend: Backend) -> None:
    state.put(b"P-1", b"v1", 0)
    assert state.get(b"P-1", 0) == b"v1" and state.get(b"P-1", 1) is None
    assert backend.writes == [], "not durable yet: the store holds only what the changelog holds"
    writes = state.take_writes()
    assert writes == [(0, b"P-1", b"v1")] and state.take_writes() == []
    state.durable(writes, {0: 41})
    assert backend.writes == [(0, {b"P-1": b"v1"}, 41)]
    assert state.get(b"P-1", 0) == b"v1"


def test_a_later_change_in_flight_is_not_undone_by_an_earlier_one_becoming_durable(
    state: TableStateStore, backend: Backend,
) -> None:
    state.put(b"P-1", b"v1", 0)
    first = state.take_writes()
    state.put(b"P-1", b"v2", 0)  # the next batch, while the first awaits its acknowledgement
    second = state.take_writes()
    state.durable(first, {0: 10})
    assert state.get(b"P-1", 0) == b"v2", "the newer change is still what a read sees"
    state.durable(second, {0: 11})
    assert backend.writes[-1] == (0, {b"P-1": b"v2"}, 11) and state.get(b"P-1", 0) == b"v2"


def test_a_batch_stores_the_last_change_of_each_product_with_its_offset(state: TableStateStore, backend: Backend) -> None:
    state.put(b"P-1", b"v1", 2)
    state.put(b"P-1", b"v2", 2)
    state.put(b"P-2", b"x", 3)
    state.delete(b"P-2", 3)
    state.delete(b"P-9", 3)  # nothing stored: no record, no change
    writes = state.take_writes()
    assert writes == [(2, b"P-1", b"v1"), (2, b"P-1", b"v2"), (3, b"P-2", b"x"), (3, b"P-2", None)]
    state.durable(writes, {2: 7, 3: 9})
    assert sorted(backend.writes, key=lambda w: w[0]) == [(2, {b"P-1": b"v2"}, 7), (3, {b"P-2": None}, 9)]


def test_exactly_once_changes_are_stored_only_when_their_partition_commits(
    state: TableStateStore, backend: Backend,
) -> None:
    state.put(b"P-1", b"a", 0)
    state.put(b"P-2", b"b", 1)
    state.stage(state.take_writes(), {0: 5, 1: 6})
    assert backend.writes == [] and state.get(b"P-2", 1) == b"b"
    state.committed([1])
    assert backend.writes == [(1, {b"P-2": b"b"}, 6)]
    state.committed([0])
    assert backend.writes[-1] == (0, {b"P-1": b"a"}, 5)
    state.committed([0, 1])
    assert len(backend.writes) == 2, "each staged change is stored once"


def test_a_revoked_partitions_changes_are_dropped_and_never_stored(state: TableStateStore, backend: Backend) -> None:
    backend.write(0, {b"P-1": b"old"}, 1)
    state.own([0, 1])
    state.put(b"P-1", b"new", 0)
    state.put(b"P-3", b"n", 1)
    writes = state.take_writes()
    state.stage(writes, {0: 2, 1: 3})
    state.forget([0])
    assert state.get(b"P-1", 0) == b"old", "its events are read again: so are their changes"
    state.committed([0, 1])
    assert backend.writes[1:] == [(1, {b"P-3": b"n"}, 3)]
    state.durable([(0, b"P-1", b"late")], {0: 4})  # a batch acknowledged after the revocation
    assert backend.read(0, b"P-1") == b"old", "its next owner recovers it: this worker no longer writes it"


def test_discarded_changes_are_undone_taken_or_not(state: TableStateStore, backend: Backend) -> None:
    backend.write(0, {b"P-1": b"stored"}, 1)
    state.put(b"P-1", b"failed", 0)
    taken = state.take_writes()
    state.put(b"P-2", b"untaken", 0)
    state.discard(taken)
    assert (state.get(b"P-1", 0), state.get(b"P-2", 0)) == (b"stored", None)
    assert state.take_writes() == []


def test_a_scan_sees_stored_states_then_the_changes_not_yet_stored(state: TableStateStore, backend: Backend) -> None:
    backend.write(0, {b"P-1": b"stored", b"P-2": b"gone-soon"}, 1)
    state.put(b"P-3", b"pending", 0)
    state.delete(b"P-2", 0)
    assert [chunk for chunk in state.scan(0)] == [
        [(b"P-1", b"stored"), (b"P-2", b"gone-soon")], [(b"P-3", b"pending")],
    ]


def test_changelog_offsets_are_the_last_record_of_each_partitions_deliveries() -> None:
    def done(offset: int) -> Any:
        return SimpleNamespace(result=lambda: SimpleNamespace(offset=offset))

    assert changelog_offsets([(0, done(10), 5), (1, done(3), 1), (0, done(2), 1)]) == {0: 14, 1: 3}
