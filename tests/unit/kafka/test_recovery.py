"""The table recovery ends once the consumer has read every active changelog partition past its end, markers
included, and everything handed over is applied; Faust's own waits for the marker's offset."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from faust.tables import recovery as faust_recovery
from faust.types import TP

from tests.unit.kafka.test_consumer import fetched, handed_over, make_consumer, run, streaming
from worker.kafka.consumer import Consumer
from worker.kafka.recovery import ChangelogRead, Recovery

CHANGELOG = TP("cw-input-decision-state-changelog", 0)
HIGHWATER = 10  # Faust's highwater: the end offset (last stable offset, 11) less one; offset 10 is the marker
APPLIED = 9  # the last changelog record the recovery applied


@pytest.fixture
def consumer() -> Iterator[Consumer]:
    yield from make_consumer(in_transaction=True)


def reading(consumer: Consumer, recovery: faust_recovery.Recovery) -> None:
    """A recovery reading CHANGELOG (applied up to APPLIED, highwater HIGHWATER) after a seek that fetch 3 preceded."""
    recovery.active_tps.add(CHANGELOG)
    recovery.active_highwaters[CHANGELOG] = HIGHWATER
    recovery.active_offsets[CHANGELOG] = APPLIED
    recovery._set_recovery_started()
    consumer.resume_flow()
    consumer._thread.fetches_started = 3
    if isinstance(recovery, Recovery):
        run(consumer, recovery._seek_offsets(NoSeek(), {CHANGELOG}, recovery.active_offsets, "active"))


class NoSeek:
    """The consumer as Faust's recovery seeks it, minus the broker."""

    async def seek_wait(self, partitions: Any) -> None:
        return None

    def fetches_started(self) -> int:
        return 3


def read_to(consumer: Consumer, position: int, fetch: int = 4, handed_over: int = APPLIED) -> None:
    consumer.changelog_read = ChangelogRead(fetch, {CHANGELOG: position})
    consumer.last_handed_over[CHANGELOG] = handed_over


def test_the_app_s_tables_recover_with_the_extended_recovery(consumer: Consumer) -> None:
    assert isinstance(consumer.app.tables.recovery, Recovery)


def test_fausts_own_recovery_waits_for_the_offset_of_a_trailing_marker(consumer: Consumer) -> None:
    """Why the override exists (also asserted, so it can go when Faust changes): the last record before the end is
    applied, the marker after it is never delivered, and Faust still counts the partition as unread; its loop looks at
    the consumer's position only after two idle 5 s waits for a changelog event."""
    recovery = faust_recovery.Recovery(consumer.app, consumer.app.tables)
    reading(consumer, recovery)
    assert recovery.need_recovery()
    slurp = inspect.getsource(faust_recovery.Recovery._slurp_changelogs.fun)
    assert "changelog_queue.get(), timeout=5.0" in slurp and "timeout_count > 1" in slurp


def test_a_partition_read_past_its_marker_ends_the_recovery_at_once(consumer: Consumer) -> None:
    recovery = consumer.app.tables.recovery
    reading(consumer, recovery)
    read_to(consumer, HIGHWATER + 1)
    assert recovery.end_if_read() is True
    assert recovery.signal_recovery_end.is_set() and not recovery.in_recovery
    assert recovery.active_offsets[CHANGELOG] == HIGHWATER


@pytest.mark.parametrize("change", [
    "marker-not-read", "record-not-applied", "fetch-before-the-seek", "flow-stopped", "rebalance-pending",
    "app-stopping", "no-fetch-taken",
])
def test_a_partition_not_known_to_be_read_and_applied_keeps_the_recovery_going(consumer: Consumer, change: str) -> None:
    recovery = consumer.app.tables.recovery
    reading(consumer, recovery)
    read_to(
        consumer, HIGHWATER if change == "marker-not-read" else HIGHWATER + 1,
        fetch=3 if change == "fetch-before-the-seek" else 4,
        handed_over=APPLIED + 1 if change == "record-not-applied" else APPLIED,
    )
    if change == "flow-stopped":
        consumer.stop_flow()
    elif change == "rebalance-pending":
        recovery.signal_recovery_start.set()
    elif change == "app-stopping":
        consumer.app._stopped.set()
    elif change == "no-fetch-taken":
        consumer.changelog_read = None
    assert recovery.end_if_read() is False
    assert not recovery.signal_recovery_end.is_set() and recovery.in_recovery
    assert recovery.active_offsets[CHANGELOG] == APPLIED


def test_a_partition_with_records_left_is_not_skipped(consumer: Consumer) -> None:
    recovery = consumer.app.tables.recovery
    reading(consumer, recovery)
    other = TP(CHANGELOG.topic, 1)
    recovery.active_tps.add(other)
    recovery.active_highwaters[other] = 50
    recovery.active_offsets[other] = 20
    consumer.changelog_read = ChangelogRead(4, {CHANGELOG: HIGHWATER + 1, other: 30})
    assert recovery.end_if_read() is False
    assert recovery.active_offsets[CHANGELOG] == HIGHWATER, "this one is read"
    assert recovery.active_offsets[other] == 20 and recovery.in_recovery


def test_the_positions_of_a_fetch_count_once_the_drain_loop_took_all_its_records(consumer: Consumer) -> None:
    streaming(consumer, committed=100)
    consumer._thread.last_fetch = ChangelogRead(7, {CHANGELOG: HIGHWATER + 1})
    fetched(consumer, {CHANGELOG: range(8, 10)})
    batch = consumer.getmany(1.0)

    async def take_one() -> None:
        await batch.__anext__()

    run(consumer, take_one())
    assert consumer.changelog_read is None, "one record of the fetch is still to be taken"
    assert consumer.last_handed_over[CHANGELOG] == 8

    async def take_the_rest() -> None:
        async for _ in batch:
            pass

    run(consumer, take_the_rest())
    assert consumer.changelog_read == ChangelogRead(7, {CHANGELOG: HIGHWATER + 1})
    assert consumer.last_handed_over[CHANGELOG] == 9


def test_a_fetch_cut_short_by_a_stopped_flow_does_not_count(consumer: Consumer) -> None:
    streaming(consumer, committed=100)
    consumer._thread.last_fetch = ChangelogRead(7, {CHANGELOG: HIGHWATER + 1})

    async def stop_flow_meanwhile() -> None:
        consumer.stop_flow()  # a rebalance: Faust's getmany drops the rest of the fetch

    fetched(consumer, {CHANGELOG: range(8, 10)})
    batch = consumer.getmany(1.0)

    async def take_one_then_stop() -> None:
        await batch.__anext__()
        await stop_flow_meanwhile()
        async for _ in batch:
            pass

    run(consumer, take_one_then_stop())
    assert consumer.changelog_read is None


def test_a_fetch_takes_the_changelog_positions_with_its_records(consumer: Consumer, monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread = consumer._thread
    positions = {CHANGELOG: 5}

    async def fausts_fetch(self: Any, aiokafka_consumer: Any, active: Any, timeout: Any = None, max_records: Any = None) -> Any:
        positions[CHANGELOG] = HIGHWATER + 1  # aiokafka's position moves as the fetch returns its records
        return {CHANGELOG: ["records"]}

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", fausts_fetch)
    monkeypatch.setattr(thread, "positions", lambda wanted: {tp: p for tp, p in positions.items() if wanted(tp)})
    monkeypatch.setattr(consumer, "_is_changelog_tp", lambda tp: tp == CHANGELOG)
    before = thread.fetches_started
    assert run(consumer, thread._fetch_records(None, {CHANGELOG})) == {CHANGELOG: ["records"]}
    assert thread.last_fetch == ChangelogRead(before + 1, {CHANGELOG: HIGHWATER + 1})
    assert consumer.fetches_started() == before + 1


def test_records_handed_over_are_tracked_per_partition(consumer: Consumer) -> None:
    streaming(consumer, committed=100)
    fetched(consumer, {CHANGELOG: range(3, 6)})
    assert handed_over(consumer, consumer.getmany) == [(CHANGELOG, 3), (CHANGELOG, 4), (CHANGELOG, 5)]
    assert consumer.last_handed_over[CHANGELOG] == 5


def completed_while_stopping(consumer: Consumer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Faust's end of a recovery (``on_recovery_completed``) run after the app began to stop; what it restarted."""
    app = consumer.app
    restarted: list[str] = []

    async def perform_seek() -> None:
        return None

    async def maybe_start() -> bool:
        restarted.append("fetcher")
        return True

    monkeypatch.setattr(consumer, "assignment", lambda: {INPUT_TP})
    monkeypatch.setattr(consumer, "perform_seek", perform_seek)
    monkeypatch.setattr(app._fetcher, "maybe_start", maybe_start)
    consumer.stop_flow()  # what the app's stop does first (App._stop_consumer)
    app._stopped.set()
    recovery = app.tables.recovery
    run(consumer, recovery.on_recovery_completed(app.consumer_generation_id))
    return restarted


INPUT_TP = TP("input", 0)


def test_fausts_recovery_ending_while_the_app_stops_resumes_the_flow_and_the_fetcher(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why ``Consumer.resume_flow`` ignores a stopping app (also asserted, so it can go when Faust changes)."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    monkeypatch.setattr(Consumer, "resume_flow", faust_aiokafka.Consumer.resume_flow)
    assert completed_while_stopping(consumer, monkeypatch) == ["fetcher"]
    assert consumer.flow_active, "events would be fetched and processed after the stop's last commit"


def test_a_recovery_ending_while_the_app_stops_leaves_the_flow_stopped(
    consumer: Consumer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    completed_while_stopping(consumer, monkeypatch)
    assert not consumer.flow_active and not consumer.can_resume_flow.is_set()


def test_fausts_own_changelog_queue_drops_what_it_holds_when_the_flow_resumes(consumer: Consumer) -> None:
    """Why the override exists (also asserted, so it can go when Faust changes): a standby record fetched while the
    recovery finishes is gone when ``on_recovery_completed`` resumes the flow, and nothing fetches it again."""
    from faust.tables import TableManager as FaustTableManager

    queue = FaustTableManager.changelog_queue.fget(FaustTableManager(app=consumer.app))  # type: ignore[attr-defined]
    queue.put_nowait("a standby record")
    consumer.app.flow_control.resume()
    assert queue.empty()


def test_the_changelog_queue_keeps_its_records_until_a_rebalance(consumer: Consumer, monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.tables import TableManager as FaustTableManager

    tables = consumer.app.tables
    queue = tables.changelog_queue
    queue.put_nowait("a standby record")
    consumer.app.flow_control.resume()
    assert queue.qsize() == 1, "kept until the recovery has applied it"
    rebalanced = []

    async def fausts_on_rebalance(self: Any, *args: Any) -> None:
        rebalanced.append(queue.qsize())

    monkeypatch.setattr(FaustTableManager, "on_rebalance", fausts_on_rebalance)
    run(consumer, tables.on_rebalance(set(), set(), set(), 2))
    assert rebalanced == [0], "emptied before the recovery seeks each partition to what it applied"
