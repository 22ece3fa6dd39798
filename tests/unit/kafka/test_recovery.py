"""The table recovery ends once the consumer has read every active changelog partition past its end, markers
included, and everything handed over is applied; Faust's own waits for the marker's offset."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.tables import recovery as faust_recovery
from faust.types import TP

from tests.unit.kafka.test_consumer import fetched, handed_over, make_consumer, run, streaming
from worker.kafka.consumer import Consumer
from worker.kafka.recovery import READY_IN_A_ROW, ChangelogQueue, ChangelogRead, Recovery, install

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


# --- the changelog queue read without a task per record during a restore -----------------------------------------

RESTORED = TP(CHANGELOG.topic, 2)  # a partition the recovery restores (active)
STANDBY = TP(CHANGELOG.topic, 1)


class Changes:
    """A table as Faust's recovery applies changelog records to it."""

    recovery_buffer_size = standby_buffer_size = 4

    def __init__(self) -> None:
        self.applied: list[int] = []

    async def on_changelog_event(self, event: Any) -> None:
        return None

    def apply_changelog_batch(self, batch: Any) -> None:
        self.applied.extend(event.message.offset for event in batch)


def changelog_record(tp: TP, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust_recovery, "asyncio", faust_recovery.asyncio)  # put back after the test
    install()


def counting_tasks(consumer: Consumer) -> list[Any]:
    created: list[Any] = []

    def factory(loop: asyncio.AbstractEventLoop, coroutine: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(coroutine)
        return asyncio.Task(coroutine, loop=loop, **kwargs)

    consumer.loop.set_task_factory(factory)  # type: ignore[arg-type]
    return created


def restoring(consumer: Consumer) -> faust_recovery.Recovery:
    """The recovery restoring RESTORED, far from its end."""
    recovery = consumer.app.tables.recovery
    recovery.active_tps.add(RESTORED)
    recovery.active_highwaters[RESTORED] = 1_000_000
    recovery.active_offsets[RESTORED] = -1
    recovery._set_recovery_started()
    return recovery


def replay(consumer: Consumer, tp: TP, records: int) -> tuple[Changes, int]:
    """Faust's own recovery loop over ``records`` queued records of ``tp``; the table, and the tasks it created."""
    recovery = consumer.app.tables.recovery
    table = Changes()
    if tp == STANDBY:
        recovery.standby_tps.add(STANDBY)
    recovery.tp_to_table[tp] = table
    queue = consumer.app.tables.changelog_queue
    for offset in range(records):
        queue.put_nowait(changelog_record(tp, offset))
    created = counting_tasks(consumer)

    async def until_applied() -> int:
        slurp = asyncio.ensure_future(faust_recovery.Recovery._slurp_changelogs.fun(recovery))  # type: ignore[attr-defined]
        before = len(created)
        try:
            for _turn in range(100_000):  # turns of the loop, not time: done when the last full buffer is applied
                if len(table.applied) >= records - records % Changes.standby_buffer_size:
                    return len(created) - before
                await asyncio.sleep(0)
            raise AssertionError(f"applied {len(table.applied)} of {records}")
        finally:
            slurp.cancel()

    tasks = run(consumer, until_applied())
    return table, tasks  # type: ignore[return-value]


def test_the_app_s_changelog_queue_hands_over_queued_records(consumer: Consumer) -> None:
    assert isinstance(consumer.app.tables.changelog_queue, ChangelogQueue)


def test_canary_fausts_recovery_takes_each_changelog_record_through_wait_for(consumer: Consumer) -> None:
    """Why ChangelogQueue and install() exist (so they can go when Faust changes): a task per record."""
    source = inspect.getsource(faust_recovery)
    assert source.count("wait_for(") == 1 and "asyncio.wait_for(\n                        changelog_queue.get()" in source
    consumer.app.tables._changelog_queue = consumer.app.FlowControlQueue(maxsize=1000)  # Faust's own queue
    restoring(consumer)
    table, tasks = replay(consumer, RESTORED, 40)
    assert table.applied == list(range(40))
    assert tasks >= 40, "Faust's own queue: one task per record"


def test_a_restore_replays_queued_records_in_order_without_a_task_each(consumer: Consumer, installed: None) -> None:
    restoring(consumer)
    records = READY_IN_A_ROW * 3 + 8
    table, tasks = replay(consumer, RESTORED, records)
    assert table.applied == list(range(records))
    assert tasks <= 4, f"{tasks} tasks for {records} records: one every READY_IN_A_ROW at most"


def test_standby_records_keep_fausts_pace_once_the_restore_is_over(consumer: Consumer, installed: None) -> None:
    assert not consumer.app.tables.recovery.in_recovery
    table, tasks = replay(consumer, STANDBY, 40)
    assert table.applied == list(range(40))
    assert tasks >= 40, "a turn of the loop per record: the agent's backlog comes first"


def test_without_install_a_restore_still_gets_its_records_through_asyncio_s_wait_for(consumer: Consumer) -> None:
    restoring(consumer)
    table, _tasks = replay(consumer, RESTORED, 40)
    assert table.applied == list(range(40))


def test_the_event_loop_gets_a_turn_every_ready_in_a_row_records(consumer: Consumer, installed: None) -> None:
    restoring(consumer)
    queue = consumer.app.tables.changelog_queue
    for offset in range(READY_IN_A_ROW * 2):
        queue.put_nowait(offset)
    taken: list[int] = []
    other_ran_after: list[int] = []

    async def reader() -> None:
        consumer.loop.call_soon(lambda: other_ran_after.append(len(taken)))  # e.g. the drain loop, waiting for the loop
        while not queue.empty():
            taken.append(await faust_recovery.asyncio.wait_for(queue.get(), timeout=5.0))

    run(consumer, reader())
    assert taken == list(range(READY_IN_A_ROW * 2))
    assert other_ran_after == [READY_IN_A_ROW], "the loop turned after READY_IN_A_ROW records, not after all"


def test_an_empty_queue_waits_and_an_error_is_raised_as_with_fausts_get(consumer: Consumer, installed: None) -> None:
    restoring(consumer)
    queue = consumer.app.tables.changelog_queue

    async def wait_empty() -> None:
        await faust_recovery.asyncio.wait_for(queue.get(), timeout=0.01)

    with pytest.raises(asyncio.TimeoutError):
        run(consumer, wait_empty())
    queue.put_nowait("record")
    queue._throw(RuntimeError("the consumer failed"))  # what Faust's ThrowableQueue delivers to its reader
    with pytest.raises(RuntimeError, match="the consumer failed"):
        run(consumer, wait_empty())
    assert run(consumer, faust_recovery.asyncio.wait_for(queue.get(), timeout=5.0)) == "record"


def test_taking_queued_records_resumes_a_partition_paused_for_pressure(consumer: Consumer, installed: None) -> None:
    queue = ChangelogQueue(maxsize=10, flow_control=consumer.app.flow_control, hand_over_while=lambda: True)
    dropped: list[str] = []
    for offset in range(9):  # the 9th put finds 8 >= 10 / 1.25 queued: pressure high, the conductor pauses
        queue.put_nowait_enhanced(offset, on_pressure_high=lambda: None, on_pressure_drop=lambda: dropped.append("resume"))

    async def take(count: int) -> None:
        for _ in range(count):
            await faust_recovery.asyncio.wait_for(queue.get(), timeout=5.0)

    run(consumer, take(5))
    assert dropped == [], "5 queued: still above 10 * 0.4"
    run(consumer, take(1))
    assert dropped == ["resume"], "at 4 queued the partition is resumed, as Faust's get_nowait does"
